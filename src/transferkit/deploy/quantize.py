"""Full-integer TFLite quantisation that keeps the layers it hurts most in float until top-1 agrees again."""

from __future__ import annotations

import csv
import io
import logging

import numpy as np


from transferkit import data
from transferkit.errors import DataError

logger = logging.getLogger("transferkit")

# int8 must agree with Keras (top-1) to at least the parity threshold plus this margin
# on the selection images, before any layer is left in float.
INT8_SELECTION_MARGIN = 0.02
# RMSE / scale above which a layer is kept in float, tried in turn (TFLite suggests 0.7).
INT8_FLOAT_CUTOFFS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1)


def int8_flatbuffer(converter, model, calibration: list[str], selection: list[str],
                     threshold: float) -> tuple[bytes, dict]:
    """Full-integer post-training quantisation, calibrated on training images.

    When its top-1 agrees with Keras on fewer than `threshold` + `INT8_SELECTION_MARGIN`
    of the `selection` images (training images too), the layers with the largest
    quantisation error (TFLite's QuantizationDebugger, RMSE / scale per tensor) stay
    float, more at each step, until it does. Fine-tuned backbones need this: on a
    MobileNetV2 fine-tuned at 96 px, plain int8 flipped 14 % of the validation images
    (probabilities off by up to 0.47); with its 57 most error-prone layers in float it
    flipped 1 of 73, at half full int8's speed. Near-0.5 predictions of a weak model
    can need as many float layers, and many int8/float transitions can make the model
    slower than plain float: `float_layers` in the result says how many were kept.
    Calibration happens once; each step only re-quantises. The validation images are
    left for the parity check.
    """
    import tensorflow as tf

    size = int(model.input_shape[1])
    images = _decoded(calibration, size)
    check = _decoded(selection, size) if selection != calibration else images
    expected = np.asarray(model.predict(check, batch_size=32, verbose=0))
    target = min(1.0, threshold + INT8_SELECTION_MARGIN)
    debug_images = images[: min(len(images), 32)]
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in images)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([image[None]] for image in debug_images))
    flatbuffer = debugger.get_nondebug_quantized_model()
    agreement = _top1_agreement(flatbuffer, check, expected)
    best = (agreement, flatbuffer, [])
    if agreement < target:
        debugger.run()
        errors = _layer_errors(debugger)
        tried = set()
        for cutoff in INT8_FLOAT_CUTOFFS:
            names = sorted(name for name, error in errors.items() if error > cutoff)
            if not names or tuple(names) in tried:
                continue
            tried.add(tuple(names))
            try:
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names)
            except ValueError:  # nothing quantised is left to compare: stop at the best so far
                break
            candidate = debugger.get_nondebug_quantized_model()
            agreement = _top1_agreement(candidate, check, expected)
            if agreement > best[0]:
                best = (agreement, candidate, names)
            if agreement >= target:
                break
    agreement, flatbuffer, float_layers = best
    return flatbuffer, {
        "calibration_images": len(images),
        "selection_images": len(check),
        "training_agreement": round(agreement, 4),
        "float_layers": float_layers,
    }


def _decoded(paths: list[str], size: int) -> np.ndarray:
    """Calibration images as one float32 array, unreadable files skipped with a warning."""
    images = []
    for path in paths:
        try:
            images.append(data.load_image(path, size))
        except Exception as error:  # noqa: BLE001 - an unreadable file just does not calibrate
            logger.warning("Skipping calibration image %s: %s", path, error)
    if not images:
        raise DataError(f"None of the {len(paths)} calibration images could be decoded.")
    return np.stack(images).astype(np.float32)


def _top1_agreement(flatbuffer: bytes, images: np.ndarray, expected: np.ndarray) -> float:
    from transferkit.modeling.openset import to_class_probabilities
    from transferkit.deploy.runtimes import TFLiteRuntime

    runtime = TFLiteRuntime(flatbuffer, num_threads=None)
    classes = max(2, expected.shape[1])
    got = np.concatenate([runtime(images[i: i + 32]) for i in range(0, len(images), 32)])
    return float(np.mean(to_class_probabilities(got, classes).argmax(1) == to_class_probabilities(expected, classes).argmax(1)))


def _layer_errors(debugger) -> dict[str, float]:
    """RMSE / scale of every quantised tensor against its float value (TFLite's own
    suggested ranking; above about 0.7 a layer is a candidate to keep in float)."""
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    errors = {}
    for row in csv.DictReader(dump):
        scale = float(row.get("scale") or 0)
        if scale > 0:
            errors[row["tensor_name"]] = float(row["mean_squared_error"]) ** 0.5 / scale
    return errors
