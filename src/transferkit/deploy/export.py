"""Exporting a trained classifier for deployment: SavedModel, TFLite (float32, float16,
int8) and ONNX, each checked against the Keras model it came from.

Every export takes what model.keras takes: float32 RGB pixels 0-255 of the model's
input size, any batch size; the backbone's preprocessing is inside. The augmentation
block is left out: Keras's own `model.export` traces `model.__call__` without
`training=False`, and Keras 3 random layers then stay active, so a plain export would
augment every image it classifies.

Class names travel with the model: embedded (TFLite metadata, ONNX metadata_props)
and in a labels sidecar (`model.labels.txt` beside a file, `labels.txt` inside a
SavedModel folder). After writing, a parity check runs the export on the run's
validation images and compares its top-1 with the Keras model's; the figures go to
`model.export.json` (`export.json` in a SavedModel folder) with the class names, the
input spec and the SHA-256 of the model.keras it was made from.
"""

from __future__ import annotations

import contextlib
import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data
from transferkit.atomic import atomic_folder
from transferkit.runs import folder as rundir
from transferkit.runs.lock import run_folder_lock
from transferkit.runs.trained import TrainedModel
from transferkit.deploy.quantize import int8_flatbuffer
from transferkit.errors import ConfigError, DataError, RunDirError
from transferkit.deploy.runtimes import (
    INFO_SUFFIX, LABELS_SUFFIX, METADATA_NAME, classes_of_export, export_kind, open_export, predict_files,
    quiet_native_stderr, sidecar,
)

logger = logging.getLogger("transferkit")

FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx")
DEFAULT_NAMES = {
    "savedmodel": "savedmodel",
    "tflite": "model.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
EXPORT_DIR = "export"  # default place inside the run folder
# Minimum top-1 agreement with Keras: float formats differ only by rounding; int8
# quantisation may flip images that sit on a decision boundary.
PARITY_THRESHOLDS = {"tflite-int8": 0.97}
FLOAT_PARITY_THRESHOLD = 0.99
DEFAULT_CALIBRATION_IMAGES = 100
# Training images on which int8 must agree with Keras (top-1) to at least the parity
# threshold plus the margin, before any layer is left in float.
INT8_SELECTION_IMAGES = 200


@dataclass(frozen=True)
class ExportResult:
    format: str
    path: Path
    labels_path: Path
    info_path: Path
    size_bytes: int
    parity: dict  # images, agreement, threshold, passed, max_abs_difference, disagreements, ...
    seconds: float
    quantization: dict | None = None  # tflite-int8: calibration images, layers kept in float

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise ConfigError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    return format


def export_model(run_dir, format: str, out=None, *, calibration_images=DEFAULT_CALIBRATION_IMAGES,
                 parity_images=None, overwrite: bool = False) -> ExportResult:
    """Export the model of a run folder as `format` to `out` (default RUN/export/<name>).

    `calibration_images` (tflite-int8 only) and `parity_images` are a number of the
    run's training / validation images, or image files and folders; `parity_images=None`
    checks on every validation image.
    """
    check_format(format)
    rundir.read_config(run_dir)  # RunDirError before anything heavy
    inside_run = out is None or Path(run_dir).resolve() in Path(out).resolve().parents
    with run_folder_lock(run_dir, "export") if inside_run else contextlib.nullcontext():
        return export_trained(TrainedModel.load(run_dir), format, out, calibration_images=calibration_images,
                              parity_images=parity_images, overwrite=overwrite)


def export_trained(trained: TrainedModel, format: str, out=None, *, run_dir=None,
                   calibration_images=DEFAULT_CALIBRATION_IMAGES, parity_images=None,
                   overwrite: bool = False, model_digest: str | None = None) -> ExportResult:
    """`export_model` for a `TrainedModel`; `run_dir` (default: the model's own) is where its
    split.csv and model.keras are (not needed when it was trained in this process and `out` is given)."""
    started = time.perf_counter()
    check_format(format)
    run_dir = run_dir or trained.run_dir
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite must be True or False, got {overwrite!r}.")
    if run_dir is not None:
        rundir.check_run_dir(run_dir)
    out = _output_path(format, out, run_dir, overwrite)
    if format == "onnx":
        _check_onnx_packages()
    calibration = selection = []
    if format == "tflite-int8":
        calibration = _image_list(calibration_images, trained, run_dir, "train", "calibration_images")
        selection = (_image_list(INT8_SELECTION_IMAGES, trained, run_dir, "train", "calibration_images")
                     if calibration_images is None or isinstance(calibration_images, int) else calibration)
    check_paths = _image_list(parity_images, trained, run_dir, "validation", "parity_images")
    if model_digest is None and run_dir is not None:
        model_digest = data.file_digest(Path(run_dir) / rundir.MODEL_FILE)

    model = inference_model(trained.model)
    threshold = PARITY_THRESHOLDS.get(format, FLOAT_PARITY_THRESHOLD)
    metadata = _metadata(trained, format, model_digest)
    quantization = None
    if format == "savedmodel":
        _write_savedmodel(trained.model, model, out)
    elif format == "onnx":
        _write_onnx(model, out, metadata)
    else:
        quantization = _write_tflite(trained.model, model, out, format, metadata, calibration, selection, threshold)
    labels_path = sidecar(out, LABELS_SUFFIX, folder=format == "savedmodel")
    rundir.write_text(labels_path, "\n".join(trained.classes) + "\n")

    parity = parity_check(trained, out, check_paths, threshold)
    size_bytes = _size_of(out)
    info_path = sidecar(out, INFO_SUFFIX, folder=format == "savedmodel")
    rundir.write_json(info_path, {
        **metadata,
        "path": str(out),
        "size_bytes": size_bytes,
        "source_run": str(Path(run_dir).resolve()) if run_dir is not None else None,
        "quantization": quantization,
        "parity": parity,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": rundir.package_versions(),
    })
    if not parity["passed"]:
        logger.warning(
            "%s export agrees with the Keras model on %.1f %% of %d images, below the %.0f %% required.",
            format, 100 * parity["agreement"], parity["images"], 100 * parity["threshold"],
        )
    return ExportResult(format, out, labels_path, info_path, size_bytes, parity,
                        round(time.perf_counter() - started, 2), quantization)


# -- checks ----------------------------------------------------------------------------


def _output_path(format: str, out, run_dir, overwrite: bool) -> Path:
    """Where the export goes; refuses a wrong suffix, or an existing target unless `overwrite`."""
    if out is None:
        if run_dir is None:
            raise ConfigError("Pass out=... : this model has no run folder to export into.")
        out = Path(run_dir) / EXPORT_DIR / DEFAULT_NAMES[format]
    out = Path(out)
    if format == "savedmodel":
        if out.is_file():
            raise RunDirError(f"'{out}' is a file; a SavedModel export is a folder. Pass a folder path.")
        if out.is_dir() and any(out.iterdir()):
            if not overwrite:
                raise RunDirError(f"'{out}' already exists and is not empty; pass overwrite (--overwrite) to replace it.")
            if not (out / "saved_model.pb").is_file():
                raise RunDirError(f"'{out}' is a folder that holds no SavedModel; refusing to replace it. Pick another path.")
        return out
    suffix = ".onnx" if format == "onnx" else ".tflite"
    if out.suffix.lower() != suffix:
        raise ConfigError(f"A {format} export is a {suffix} file; got '{out}'. Pass a path ending in {suffix}.")
    if out.is_dir():
        raise RunDirError(f"'{out}' is a folder; pass a file path ending in {suffix}.")
    if out.exists() and not overwrite:
        raise RunDirError(f"'{out}' already exists; pass overwrite (--overwrite) to replace it.")
    return out


def _check_onnx_packages() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"ONNX export needs tf2onnx, onnx and onnxruntime ({error.name} is missing): "
            "pip install 'transferkit[onnx]' (or pip install tf2onnx onnx onnxruntime)."
        ) from error


def _image_list(spec, trained: TrainedModel, run_dir, split: str, name: str) -> list[str]:
    """Image paths from a count of the run's `split` images (None: all), or files/folders."""
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
        if spec is not None and spec < 1:
            raise ConfigError(f"{name} must be a positive number of images, image files or folders, got {spec!r}.")
        paths = [p for p in trained.split(split, run_dir).paths if os.path.isfile(p)]
        if not paths:
            raise DataError(
                f"None of the run's {split} images exists any more (see split.csv); pass {name} as image files or a folder."
            )
        return data.evenly_spaced(paths, spec)
    if isinstance(spec, (str, os.PathLike)) or (isinstance(spec, Sequence) and not isinstance(spec, bytes)):
        paths = data.expand_image_paths(spec)
        if not paths:
            raise DataError(f"{name} names no image files: {spec!r}.")
        return paths
    raise ConfigError(f"{name} must be a positive number of images, image files or folders, got {spec!r}.")


# -- the model that is exported ----------------------------------------------------------


def inference_model(model):
    """`model` without its augmentation block: the same layers (and weights), called with
    training=False, so no random op reaches the exported graph."""
    import keras

    inputs = keras.Input(model.input_shape[1:], name="image")
    x = inputs
    for layer in model.layers[1:]:
        if layer.name != "augmentation":
            x = layer(x, training=False)
    stripped = keras.Model(inputs, x, name=f"{model.name}_inference")
    probe = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    expected = np.asarray(model(probe, training=False))
    if not np.allclose(np.asarray(stripped(probe, training=False)), expected, atol=1e-5):
        raise ConfigError(f"Model {model.name!r} is not a chain of layers transferkit can export.")
    return stripped


def _metadata(trained, format: str, model_digest: str | None) -> dict:
    from transferkit import __version__

    size = int(trained.image_size)
    two = len(trained.classes) == 2
    return {
        "format": format,
        "classes": list(trained.classes),
        "image_size": size,
        "input": {
            "name": "image", "dtype": "float32", "shape": [None, size, size, 3],
            "pixels": "RGB 0-255, resized to image_size x image_size; the model normalises them itself",
        },
        "output": (f"shape [batch, 1]: probability of {trained.classes[1]!r} (sigmoid)" if two
                   else f"shape [batch, {len(trained.classes)}]: softmax over classes"),
        "backbone": trained.backbone,
        "model_digest": model_digest,
        "transferkit_version": __version__,
        **_open_set_metadata(trained),
    }


def _open_set_metadata(trained) -> dict:
    """Temperature and a max-softmax unknown threshold: what a probabilities-only model can carry.

    The run's own feature-based unknown score needs the pooled features, which exports do not output.
    """
    extra = {}
    if trained.calibration:
        extra["calibration"] = {"method": "temperature", "temperature": trained.temperature,
                                "apply": "softmax(logits / temperature); for sigmoid, sigmoid(logit / temperature)"}
    if trained.ood and "msp_threshold" in trained.ood:
        extra["unknown"] = {
            "method": "msp", "score": "1 - max calibrated probability; unknown when score > threshold",
            "threshold": float(trained.ood["msp_threshold"]), "accept_rate": float(trained.ood["accept_rate"]),
            "val_scores": [round(float(v), 6) for v in trained.ood["msp_val_scores"]],
        }
    return extra


# One SavedModel per model and process, written by Keras's own export: the savedmodel
# format copies it, every TFLite format converts it, so exporting several formats
# traces the model once. Removed at exit.
_SAVED_MODELS: dict[str, str] = {}


def _fingerprint(model) -> str:
    digest = hashlib.sha256(model.to_json().encode())
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def _saved_model_dir(original, model) -> Path:
    """Keras's `model.export(format="tf_saved_model")` of `model` (the augmentation-free
    copy of `original`), reused while `original`'s weights are unchanged."""
    key = _fingerprint(original)
    if key not in _SAVED_MODELS:
        _clear_saved_models()
        folder = tempfile.mkdtemp(prefix="transferkit-savedmodel-")
        with quiet_native_stderr():
            model.export(folder, format="tf_saved_model", verbose=False)
        _SAVED_MODELS[key] = folder
    return Path(_SAVED_MODELS[key])


@atexit.register
def _clear_saved_models() -> None:
    for folder in _SAVED_MODELS.values():
        shutil.rmtree(folder, ignore_errors=True)
    _SAVED_MODELS.clear()


def _write_savedmodel(original, model, out: Path) -> None:
    """Keras's own SavedModel export (endpoint `serve`), copied beside and renamed into place."""
    source = _saved_model_dir(original, model)
    with atomic_folder(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def _write_tflite(original, model, out: Path, format: str, metadata: dict, calibration: list[str],
                  selection: list[str], threshold: float) -> dict | None:
    """TFLite from the SavedModel, builtin ops only, so any TFLite runtime (and XNNPACK)
    runs it without the TF-ops delegate. Returns the int8 quantisation summary."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(_saved_model_dir(original, model)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    summary = None
    with quiet_native_stderr(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")  # the debugger's
        if format == "tflite-int8":
            flatbuffer, summary = int8_flatbuffer(converter, model, calibration, selection, threshold)
        else:
            if format == "tflite-fp16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            flatbuffer = converter.convert()
    with rundir.atomic_path(out) as tmp:
        Path(tmp).write_bytes(_with_tflite_metadata(flatbuffer, metadata))
    return summary


def _with_tflite_metadata(flatbuffer: bytes, metadata: dict) -> bytes:
    """The flatbuffer with a 'transferkit' metadata entry (JSON) added."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _write_onnx(model, out: Path, metadata: dict) -> None:
    """Keras's own ONNX export (tf2onnx), with the metadata in metadata_props."""
    import onnx

    with rundir.atomic_path(out) as tmp:
        with quiet_native_stderr(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # Keras's numpy-2 patch of tf2onnx
            model.export(tmp, format="onnx", verbose=False)
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, {METADATA_NAME: json.dumps(metadata)})
        onnx.save(proto, tmp)


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


# -- the parity check ----------------------------------------------------------------------


def parity_check(trained, export_path, paths: Sequence[str], threshold: float) -> dict:
    """Top-1 agreement of the export with the Keras model on `paths` (readable ones)."""
    # exports output uncalibrated probabilities; checked against Keras itself
    expected = trained.predict_proba(paths, calibrated=False, compute="tensorflow")
    kind = export_kind(export_path)
    classes = classes_of_export(Path(export_path), kind)
    if list(classes) != list(trained.classes):
        raise RunDirError(f"'{export_path}' names classes {classes}, not {trained.classes}.")
    got, stats = predict_files(open_export(export_path, kind), list(paths), trained.image_size, len(classes),
                               source=export_path)
    readable = ~(np.isnan(expected).any(axis=1) | np.isnan(got).any(axis=1))
    if not readable.any():
        raise DataError(f"None of the {len(paths)} parity-check images could be decoded.")
    same = expected[readable].argmax(axis=1) == got[readable].argmax(axis=1)
    agreement = float(same.mean())
    checked = [p for p, r in zip(paths, readable) if r]
    return {
        "images": int(readable.sum()),
        "agreement": round(agreement, 4),
        "threshold": threshold,
        "passed": agreement >= threshold,
        "max_abs_difference": round(float(np.abs(expected[readable] - got[readable]).max()), 6),
        "disagreements": [p for p, s in zip(checked, same) if not s],
        "runtime": stats.get("description"),
        "images_per_second": stats.get("images_per_second"),
    }
