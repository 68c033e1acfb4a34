"""Prediction with the fastest runtime at hand, from a run folder or an exported model.

`Predictor` takes a run folder (Keras), a `.tflite` file (TFLite with XNNPACK), a
SavedModel folder or an `.onnx` file (ONNX Runtime), each written by `transferkit
export`. Images are decoded by Pillow in the parallel `tf.data` pipeline the rest of
transferkit uses, so every runtime sees the same pixels.

On a run folder, `runtime="auto"` uses a float TFLite copy of the model when one is at
hand whose top-1 agrees with Keras (the parity check of `export`): `RUN/export/model.tflite`
from `transferkit export`, or one converted earlier into the cache. Measured on 2 CPU
cores (MobileNetV2, 160 px, bench/predict_bench.py), TFLite with XNNPACK classifies
1.5-2x as many images per second as Keras; converting costs 15-25 s once, which a call
of about 2,500 images earns back, so a conversion into the cache is only started for
calls of at least `CONVERT_MIN_IMAGES` images (or runtime="tflite"), then reused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data, rundir
from transferkit.progress import progress_bar as _progress
from transferkit.errors import ConfigError, DataError, RunDirError, TransferkitError

logger = logging.getLogger("transferkit")

RUNTIMES = ("auto", "keras", "tflite", "savedmodel", "onnx")
# Images per inference call when none is given, per runtime (bench/predict_bench.py):
# XNNPACK is fastest on small batches that stay in cache, TensorFlow on larger ones.
DEFAULT_BATCH = {"keras": 32, "tflite": 8, "savedmodel": 32, "onnx": 32}
# A run folder without a TFLite copy is converted (once, cached) only for calls this large.
CONVERT_MIN_IMAGES = 2000
# Validation images the parity check of a cached conversion looks at, at most.
CACHE_PARITY_IMAGES = 200
METADATA_NAME = "transferkit"  # TFLite metadata entry / ONNX metadata_props key
LABELS_SUFFIX = ".labels.txt"
INFO_SUFFIX = ".export.json"


# -- what an exported model carries ----------------------------------------------------


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


def _classes_of_export(path: Path, kind: str) -> list[str]:
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
def _quiet_native_stderr():
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
        with warnings.catch_warnings(), _quiet_native_stderr():
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


def _check_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "Running an .onnx model needs ONNX Runtime, which is not installed: "
            "pip install 'transferkit[onnx]' (or pip install onnxruntime)."
        ) from error


# -- the predictor ---------------------------------------------------------------------


class Predictor:
    """Classifies image files with a run folder or an exported model.

    `runtime`: 'auto' (the fastest one available, see the module docstring), or one
    of 'keras' / 'tflite' (run folder), 'tflite' (.tflite file), 'savedmodel'
    (SavedModel folder), 'onnx' (.onnx file). After each call, `last_stats` holds the
    images, seconds and images per second of the prediction itself (decoding
    included, loading and conversion not) and the runtime that ran it.
    """

    def __init__(self, source, runtime: str = "auto", *, num_threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, verbose: int = 0):
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1):
            raise ConfigError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
        source = Path(source)
        kind = export_kind(source)
        if kind is None:
            hint = "Or pass a model written by `transferkit export`: a .tflite file, a SavedModel folder, an .onnx file."
            if source.is_file():
                raise RunDirError(f"'{source}' is neither a transferkit run folder nor an exported model. {hint}")
            try:
                rundir.check_run_dir(source)
            except RunDirError as error:
                raise RunDirError(f"{error} {hint}") from None
        allowed = ("auto", "keras", "tflite") if kind == "run" else ("auto", kind)
        if runtime not in allowed:
            raise ConfigError(f"runtime {runtime!r} cannot run a {kind} model '{source}'; use one of {', '.join(allowed)}.")
        if kind == "onnx":
            _check_onnxruntime()
        self.source, self.kind, self.requested_runtime = source, kind, runtime
        self.num_threads = num_threads or cpu_threads()
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "transferkit" / "tflite"
        self.verbose = verbose
        self.last_stats: dict = {}
        self.conversion: dict | None = None  # set when a run folder was converted to TFLite here
        self._classifier = None
        self._runtime = None
        if kind == "run":
            config = rundir.read_config(source)
            self.classes = rundir.read_classes(source)
            self.image_size = int(config["resolved"]["image_size"])
        else:
            self.classes = _classes_of_export(source, kind)
            self._runtime = self._open_export(source, kind)
            self.image_size = self._runtime.image_size

    # -- runtimes ---------------------------------------------------------------------

    @property
    def classifier(self):
        """The Keras `ImageClassifier` of a run folder (loaded on first use), else None."""
        if self.kind != "run":
            return None
        if self._classifier is None:
            from transferkit.api import ImageClassifier

            self._classifier = ImageClassifier.load(self.source)
        return self._classifier

    @property
    def runtime(self) -> str | None:
        """The runtime chosen so far ('keras', 'tflite', ...); a run folder's is chosen on the first call."""
        return self._runtime.name if self._runtime is not None else None

    @property
    def runtime_description(self) -> str | None:
        """e.g. 'TFLite int8 + XNNPACK, 2 thread(s)'; a run folder's is known after the first call."""
        return self._runtime.description if self._runtime is not None else None

    def _open_export(self, path: Path, kind: str):
        if kind == "tflite":
            return TFLiteRuntime(path, self.num_threads)
        if kind == "savedmodel":
            return SavedModelRuntime(path)
        return OnnxRuntime(path, self.num_threads)

    def _runtime_for(self, n_images: int, paths: Sequence[str]):
        """A run folder's runtime: a parity-checked float TFLite copy, else Keras."""
        if self._runtime is not None:
            return self._runtime
        if self.requested_runtime != "keras":
            tflite = self._checked_tflite_copy()
            convert = self.requested_runtime == "tflite" or n_images >= CONVERT_MIN_IMAGES
            if tflite is None and convert:
                tflite = self._convert_to_cache(paths)
            if tflite is not None:
                self._runtime = TFLiteRuntime(tflite, self.num_threads)
                return self._runtime
            if self.requested_runtime == "tflite":
                raise ConfigError(
                    f"No TFLite copy of '{self.source}' agrees with its Keras model (see the warning above); "
                    "use runtime 'keras' or 'auto'."
                )
        self._runtime = KerasRuntime(self.classifier.model_)
        return self._runtime

    def _checked_tflite_copy(self) -> Path | None:
        """`RUN/export/model.tflite` or a cached conversion of this exact model.keras that passed parity."""
        digest = data.file_digest(self.source / rundir.MODEL_FILE)
        for candidate in (self.source / "export" / "model.tflite", self.cache_dir / f"{digest[:24]}.tflite"):
            info = read_export_info(candidate) if candidate.is_file() else None
            if info and info.get("model_digest") == digest and info.get("parity", {}).get("passed"):
                return candidate
        return None

    def _convert_to_cache(self, paths: Sequence[str]) -> Path | None:
        """Convert once to float TFLite, keep it only if its top-1 agrees with Keras."""
        from transferkit.export import export_classifier

        digest = data.file_digest(self.source / rundir.MODEL_FILE)
        target = self.cache_dir / f"{digest[:24]}.tflite"
        try:
            parity_images = _validation_sample(self.source, CACHE_PARITY_IMAGES)
        except TransferkitError:  # the run's images moved: check on the images at hand
            parity_images = list(paths[:64])
        (logger.warning if self.verbose else logger.info)(
            "Converting %s to TFLite once (about 20 s; cached in %s for later calls).", self.source, self.cache_dir)
        started = time.perf_counter()
        try:
            result = export_classifier(self.classifier, "tflite", target, run_dir=self.source,
                                       parity_images=parity_images, overwrite=True, model_digest=digest)
        except Exception as error:  # noqa: BLE001 - auto mode must still predict, with Keras
            if self.requested_runtime == "tflite":
                raise
            logger.warning("Converting %s to TFLite failed (%s); predicting with Keras.", self.source, error)
            return None
        self.conversion = {"seconds": round(time.perf_counter() - started, 2), "path": str(target),
                           "parity": result.parity}
        if not result.parity["passed"]:
            logger.warning(
                "The TFLite copy of %s agrees with Keras on only %.1f %% of %d images; predicting with Keras.",
                self.source, 100 * result.parity["agreement"], result.parity["images"],
            )
            return None
        return target

    # -- prediction -------------------------------------------------------------------

    def predict_proba(self, paths: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(n, n_classes) probabilities in the order of `paths`; rows of unreadable files are NaN."""
        from transferkit.model import to_class_probabilities

        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        paths = [str(p) for p in paths]
        probabilities = np.full((len(paths), len(self.classes)), np.nan)
        if not paths:
            self.last_stats = {"images": 0, "seconds": 0.0, "images_per_second": None,
                               "runtime": self.runtime, "description": None, "batch_size": batch_size}
            return probabilities
        runtime = self._runtime_for(len(paths), paths)
        batch_size = batch_size or DEFAULT_BATCH[runtime.name]
        rows, done = 0, 0
        started = time.perf_counter()
        with _progress(len(paths), "Predicting", bool(self.verbose) and len(paths) > 64) as advance:
            for images, ok in data.make_dataset(paths, None, self.image_size, batch_size, drop_unreadable=False):
                ok = ok.numpy()
                batch = to_class_probabilities(runtime(images), len(self.classes))
                if batch.shape[1] != len(self.classes):
                    raise RunDirError(
                        f"'{self.source}' outputs {batch.shape[1]} class scores but names {len(self.classes)} "
                        "classes; its labels file does not belong to it."
                    )
                probabilities[rows: rows + len(ok)][ok] = batch[ok]
                rows += len(ok)
                done += int(ok.sum())
                advance(len(ok))
        seconds = time.perf_counter() - started
        self.last_stats = {
            "images": done, "seconds": round(seconds, 3),
            "images_per_second": round(done / seconds, 1) if seconds > 0 else None,
            "runtime": runtime.name, "description": runtime.description, "batch_size": batch_size,
        }
        return probabilities

    def predict(self, inputs, top_k: int = 1, batch_size: int | None = None) -> list:
        """Label and confidence per image (`api.Prediction`); folders searched recursively,
        non-image and unreadable files skipped with a warning."""
        from transferkit.api import expand_image_paths

        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}.")
        paths = expand_image_paths(inputs)
        return rank(paths, self.predict_proba(paths, batch_size), self.classes, top_k)


def rank(paths: Sequence[str], probabilities: np.ndarray, classes: Sequence[str], top_k: int) -> list:
    """`api.Prediction`s for the readable rows, classes by falling probability."""
    from transferkit.api import Prediction

    k = min(top_k, len(classes))
    predictions = []
    for path, row in zip(paths, probabilities):
        if np.isnan(row).any():
            continue
        order = np.argsort(-row, kind="stable")[:k]
        ranked = tuple((classes[i], float(row[i])) for i in order)
        predictions.append(Prediction(path, ranked[0][0], ranked[0][1], ranked))
    return predictions


def _validation_sample(run_dir, limit: int | None) -> list[str]:
    """Up to `limit` of a run's validation images, evenly spread over the split.csv order."""
    from transferkit.evaluation import read_split

    paths = list(read_split(run_dir, "validation").paths)
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise DataError(f"None of the validation images listed in '{Path(run_dir) / rundir.SPLIT_FILE}' exists any more.")
    return evenly_spaced(paths, limit)


def evenly_spaced(items: Sequence, limit: int | None) -> list:
    """`limit` items spread evenly over `items` (all of them when None or enough)."""
    items = list(items)
    if limit is None or len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]
