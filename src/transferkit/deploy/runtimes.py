"""Inference runtimes (OpenVINO, Keras, TFLite with XNNPACK, SavedModel, ONNX Runtime) and what an export carries."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from transferkit.errors import ConfigError, RunDirError
from transferkit.runs import folder as rundir

logger = logging.getLogger("transferkit")

RUNTIMES = ("auto", "openvino", "keras", "tflite", "savedmodel", "onnx")
# Images per inference call when none is given, per runtime (bench/predict_bench.py): XNNPACK and
# OpenVINO are fastest on small batches whose activations stay in cache, TensorFlow on larger ones.
DEFAULT_BATCH = {"keras": 32, "tflite": 8, "savedmodel": 32, "onnx": 32, "openvino": 8}
METADATA_NAME = "transferkit"  # TFLite metadata entry / ONNX metadata_props key
LABELS_SUFFIX = ".labels.txt"
INFO_SUFFIX = ".export.json"


def sidecar(path: str | os.PathLike, suffix: str, folder: bool | None = None) -> Path:
    """Path of a file that travels with an export: inside a SavedModel folder
    (labels.txt, export.json), beside a single file under its full name
    (model.tflite.labels.txt), so model.tflite and model.onnx keep apart."""
    path = Path(path)
    if path.is_dir() if folder is None else folder:
        return path / suffix.lstrip(".")
    return path.with_name(path.name + suffix)


def read_tflite_metadata(path: str | os.PathLike) -> dict | None:
    """The JSON transferkit embeds in a .tflite file's metadata, or None."""
    from tensorflow.lite.python import schema_py_generated as schema

    buffer = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            return json.loads(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode("utf-8"))
    return None


def read_onnx_metadata(path: str | os.PathLike) -> dict | None:
    import onnxruntime

    props = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return json.loads(props[METADATA_NAME]) if METADATA_NAME in props else None


def read_export_info(path: str | os.PathLike) -> dict | None:
    """The export.json sidecar (format, classes, parity, model digest), or None."""
    info = sidecar(path, INFO_SUFFIX)
    if not info.is_file():
        return None
    try:
        return json.loads(info.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def export_kind(path: str | os.PathLike) -> str | None:
    """'run', 'tflite', 'savedmodel', 'onnx', or None for anything else."""
    path = Path(path)
    if path.is_dir():
        if (path / rundir.CONFIG_FILE).is_file() or (path / rundir.MODEL_FILE).is_file():
            return "run"
        return "savedmodel" if (path / "saved_model.pb").is_file() else None
    if path.is_file():
        return {".tflite": "tflite", ".onnx": "onnx"}.get(path.suffix.lower())
    return None


def classes_of_export(path: Path, kind: str) -> list[str]:
    """Class names from the embedded metadata, else the labels sidecar."""
    embedded = None
    if kind == "tflite":
        embedded = read_tflite_metadata(path)
    elif kind == "onnx":
        embedded = read_onnx_metadata(path)
    if embedded and embedded.get("classes"):
        return list(embedded["classes"])
    labels = sidecar(path, LABELS_SUFFIX)
    if labels.is_file():
        names = [line for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
        if names:
            return names
    raise RunDirError(
        f"'{path}' carries no class names: no transferkit metadata inside and no labels file "
        f"'{labels}' (one class name per line, in output order). Re-export it with `transferkit export`."
    )


# -- runtimes ------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence TFLite's C++ 'Created XNNPACK delegate' line; Python errors still raise."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def cpu_threads() -> int:
    """CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class KerasRuntime:
    name = "keras"

    def __init__(self, model):
        self.model = model
        self.image_size = int(model.input_shape[1])
        self.description = "Keras (TensorFlow)"

    def __call__(self, images) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(images))


class TFLiteRuntime:
    """tf.lite.Interpreter with XNNPACK (its default CPU delegate) on every core."""

    name = "tflite"

    def __init__(self, model, num_threads: int | None = None):
        """`model`: a .tflite path, or the flatbuffer itself (bytes)."""
        import tensorflow as tf

        num_threads = num_threads or cpu_threads()
        source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        with warnings.catch_warnings(), quiet_native_stderr():
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            self.interpreter = tf.lite.Interpreter(**source, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape_signature"][1])
        self.batch = int(self.input["shape"][0])
        quantized = any(d["dtype"] == np.int8 for d in self.interpreter.get_tensor_details())
        self.description = f"TFLite {'int8' if quantized else 'float'} + XNNPACK, {num_threads} thread(s)"

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if len(images) != self.batch:  # dynamic batch: re-plan only when the size changes
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()


class SavedModelRuntime:
    name = "savedmodel"

    def __init__(self, path):
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        self._loaded = loaded  # keeps the variables alive
        self.function = loaded.serve if hasattr(loaded, "serve") else loaded.signatures["serving_default"]
        spec = loaded.signatures["serving_default"].structured_input_signature
        tensor_spec = [s for s in tf.nest.flatten(spec) if isinstance(s, tf.TensorSpec)][0]
        self.image_size = int(tensor_spec.shape[1])
        self.description = "TensorFlow SavedModel"

    def __call__(self, images) -> np.ndarray:
        output = self.function(images)
        if isinstance(output, dict):
            output = next(iter(output.values()))
        return np.asarray(output)


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path, num_threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.image_size = int(self.session.get_inputs()[0].shape[1])
        self.description = f"ONNX Runtime (CPU), {num_threads} thread(s)"

    def __call__(self, images) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(images, dtype=np.float32)})[0]


class OpenVINORuntime:
    """A run folder's OpenVINO copy (`RUN/openvino/`): probabilities, and with `outputs` the pooled
    features and logits an unknown score needs, from one pass and without TensorFlow."""

    name = "openvino"

    def __init__(self, folder: Path, info: dict, precision: str = "f32", num_threads: int | None = None):
        from transferkit.modeling.forward import OpenVINOForward

        self.forward = OpenVINOForward(folder / info["xml"], precision, num_threads, uint8_input=True)
        self.input_dtype = self.forward.input_dtype  # decoded pixels go in as they are
        with np.load(folder / rundir.OPENVINO_HEAD) as head:
            self.kernel, self.bias = head["kernel"], head["bias"]
        self.image_size = int(self.forward.compiled.inputs[0].get_partial_shape()[1].get_length())
        self.description = self.forward.description

    def __call__(self, images) -> np.ndarray:
        return self.forward(images)[0]

    def map(self, batches, consume) -> None:
        self.forward.map(batches, lambda outputs, tag: consume(outputs[0], tag))

    def _with_logits(self, outputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from transferkit.modeling.openset import head_logits

        probabilities, pooled, penultimate = outputs
        return probabilities, pooled, head_logits(penultimate, self.kernel, self.bias)

    def outputs(self, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, pooled features, logits) of one batch of decoded images."""
        return self._with_logits(self.forward(images))

    def map_outputs(self, batches, consume) -> None:
        """`consume((probabilities, pooled, logits), tag)`; logits in float64, two-class ones as two columns."""
        self.forward.map(batches, lambda outputs, tag: consume(self._with_logits(outputs), tag))


def openvino_copy(run_dir: Path) -> tuple[Path, dict] | None:
    """A run's `openvino/` folder and info when OpenVINO is installed and the copy belongs to this model.keras."""
    from transferkit import data
    from transferkit.modeling.forward import openvino_available

    folder = Path(run_dir) / rundir.OPENVINO_DIR
    info_path = folder / rundir.OPENVINO_INFO
    if not info_path.is_file() or not openvino_available():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("model_digest") != data.file_digest(Path(run_dir) / rundir.MODEL_FILE):
        logger.info("Ignoring %s: it was made from another model.keras.", folder)
        return None
    return folder, info


def check_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "Running an .onnx model needs ONNX Runtime, which is not installed: "
            "pip install 'transferkit[onnx]' (or pip install onnxruntime)."
        ) from error


# -- the predictor ---------------------------------------------------------------------




def open_export(path: str | os.PathLike, kind: str | None = None, num_threads: int | None = None):
    """The runtime for an exported model file or folder."""
    path = Path(path)
    kind = kind or export_kind(path)
    if kind == "tflite":
        return TFLiteRuntime(path, num_threads)
    if kind == "savedmodel":
        return SavedModelRuntime(path)
    if kind == "onnx":
        check_onnxruntime()
        return OnnxRuntime(path, num_threads or cpu_threads())
    raise RunDirError(f"'{path}' is not an exported model (.tflite, .onnx or a SavedModel folder).")


def run_files(runtime, paths, image_size: int, consume, batch_size: int | None = None,
              verbose: bool = False, map_with=None) -> dict:
    """Decode `paths` in batches (`data.decoded_batches`) and call `consume(outputs, (row, ok))` with the
    runtime's output for each; returns timing stats. Runtimes with a `map` (or `map_with`, another
    of its mappers) keep several batches in flight."""
    from transferkit import data
    from transferkit.progress import progress_bar

    name = runtime.name if runtime is not None else None
    batch_size = batch_size or DEFAULT_BATCH.get(name, 32)
    stats = {"images": 0, "seconds": 0.0, "images_per_second": None, "runtime": name,
             "description": getattr(runtime, "description", None), "batch_size": batch_size}
    if not paths:
        return stats
    readable = 0
    started = time.perf_counter()
    with progress_bar(len(paths), "Predicting", verbose and len(paths) > 64) as advance:
        def batches():
            nonlocal readable
            row = 0
            dtype = getattr(runtime, "input_dtype", np.float32)
            for images, ok in data.decoded_batches(list(paths), image_size, batch_size, dtype=dtype):
                readable += int(ok.sum())
                yield images, (row, ok)
                row += len(ok)

        def done(outputs, tag):
            consume(outputs, tag)
            advance(len(tag[1]))

        mapper = map_with or getattr(runtime, "map", None)
        if mapper is not None:
            mapper(batches(), done)
        else:
            for images, tag in batches():
                done(runtime(images), tag)
    seconds = time.perf_counter() - started
    return {**stats, "images": readable, "seconds": round(seconds, 3),
            "images_per_second": round(readable / seconds, 1) if seconds > 0 else None}


def predict_files(runtime, paths, image_size: int, num_classes: int, batch_size: int | None = None,
                  verbose: bool = False, source="the model") -> tuple[np.ndarray, dict]:
    """(n, num_classes) probabilities of `runtime` on image files, NaN rows for unreadable ones, and timing stats.

    Every runtime sees the pixels of the one decoder transferkit uses everywhere (`data.load_image`).
    """
    from transferkit.modeling.openset import to_class_probabilities

    probabilities = np.full((len(paths), num_classes), np.nan)

    def store(outputs, tag):
        row, ok = tag
        batch = to_class_probabilities(outputs, num_classes)
        if batch.shape[1] != num_classes:
            raise RunDirError(f"'{source}' outputs {batch.shape[1]} class scores but names {num_classes} "
                              "classes; its labels file does not belong to it.")
        probabilities[np.arange(row, row + len(ok))[ok]] = batch[ok]

    stats = run_files(runtime, paths, image_size, store, batch_size, verbose)
    return probabilities, stats
