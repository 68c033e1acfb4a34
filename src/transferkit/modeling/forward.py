"""Forward passes of a Keras model on the fastest runtime at hand, checked against Keras.

Most of a cached training run, and all of prediction, is the backbone's forward pass.
OpenVINO (a dependency; without it everything runs on TensorFlow) runs it several times
faster than TensorFlow on a CPU (BENCHMARKS.md), so where it is installed the model is converted with Keras's own
`model.export(format="openvino")` and compiled; before it is trusted, its outputs on a
real batch are compared with Keras's, and on a mismatch Keras is used instead.

Precision: `f32` matches Keras to float rounding. `bf16` (where the CPU has it) is about
twice as fast again but moves the fine-tuning boundary's activations by a tenth of
their size, so training keeps f32; prediction may use bf16 where top-1 agrees.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from transferkit.errors import ConfigError

logger = logging.getLogger("transferkit")

COMPUTE = ("auto", "openvino", "tensorflow")
PRECISIONS = ("f32", "bf16")
# 'auto' converts to OpenVINO only for passes over at least this many images: the conversion
# costs seconds that fewer images do not earn back (BENCHMARKS.md).
OPENVINO_MIN_IMAGES = 1000
# Largest relative difference (max |a - b| / max |b| per output) an f32 runtime may show.
F32_TOLERANCE = 1e-3
# bf16 is accepted for features whose cosine similarity to Keras's stays above this.
BF16_MIN_COSINE = 0.99


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere bf16 buys nothing."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_compute(compute) -> str:
    if compute not in COMPUTE:
        raise ConfigError(f"compute must be one of {', '.join(COMPUTE)}, got {compute!r}.")
    if compute == "openvino" and not openvino_available():
        raise ConfigError("compute='openvino' needs OpenVINO, which is not installed: pip install openvino, "
                          "or use compute='auto'.")
    return compute


def compute_for(compute: str, images: int) -> str:
    """The runtime 'auto' means for a pass over `images` images: OpenVINO only where it pays."""
    if compute == "auto" and images < OPENVINO_MIN_IMAGES:
        return "tensorflow"
    return compute


class KerasForward:
    """The model as a `tf.function`: the reference every other runtime is checked against."""

    runtime = "tensorflow"
    precision = "f32"

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self._call = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
        self.description = "TensorFlow"

    def __call__(self, images) -> list[np.ndarray]:
        outputs = self._call(images)
        return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]

    def map(self, batches: Iterable, consume: Callable) -> None:
        """`consume(outputs, tag)` for every `(images, tag)` of `batches`, in order."""
        for images, tag in batches:
            consume(self(images), tag)


class OpenVINOForward:
    """A compiled OpenVINO model; `map` keeps several inference requests in flight."""

    runtime = "openvino"

    def __init__(self, xml_path: str | os.PathLike, precision: str = "f32", num_threads: int | None = None,
                 uint8_input: bool = False):
        """`uint8_input`: take decoded 0-255 pixels as uint8 and convert inside OpenVINO (exact, and a
        quarter of the bytes to hand over per image); for callers whose images are whole numbers."""
        import openvino as ov

        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT"}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        core = ov.Core()
        model = core.read_model(str(xml_path))
        if uint8_input:
            steps = ov.preprocess.PrePostProcessor(model)
            steps.input().tensor().set_element_type(ov.Type.u8)
            model = steps.build()
        self.input_dtype = np.uint8 if uint8_input else np.float32
        self.compiled = core.compile_model(model, "CPU", config)
        self.xml_path = Path(xml_path)
        self.precision = precision
        self.description = f"OpenVINO {ov.get_version().split('-')[0]} {precision}"
        self._request = self.compiled.create_infer_request()
        jobs = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = [self.compiled.create_infer_request() for _ in range(jobs)]

    def __call__(self, images) -> list[np.ndarray]:
        """The outputs for one batch; a large batch is split over the device's parallel requests."""
        images = np.ascontiguousarray(images, self.input_dtype)
        jobs = len(self._requests)
        if jobs > 1 and len(images) >= 2 * jobs:
            parts: list = []
            self.map(((chunk, None) for chunk in np.array_split(images, jobs)), lambda outputs, _: parts.append(outputs))
            return [np.concatenate([part[i] for part in parts]) for i in range(len(self.compiled.outputs))]
        result = self._request.infer({0: images})
        return [np.array(result[output]) for output in self.compiled.outputs]

    def map(self, batches: Iterable, consume: Callable) -> None:
        """`consume(outputs, tag)` for every `(images, tag)`, in order, with several batches in flight.

        The requests are waited for on this thread rather than given Python callbacks: a callback
        runs on OpenVINO's threads, where freeing a Python object that owns OpenVINO state aborts
        the process ("Resource deadlock avoided").
        """
        pending: deque = deque()
        for images, tag in batches:
            if len(pending) == len(self._requests):
                self._finish(pending.popleft(), consume)
            request = self._requests[len(pending)] if not pending else self._after(pending[-1][0])
            images = np.ascontiguousarray(images, self.input_dtype)
            request.start_async({0: images})
            pending.append((request, tag, images))  # the input stays alive until its request is done
        while pending:
            self._finish(pending.popleft(), consume)

    def _after(self, request):
        return self._requests[(self._requests.index(request) + 1) % len(self._requests)]

    def _finish(self, item, consume: Callable) -> None:
        request, tag, _ = item
        request.wait()
        consume([np.array(request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))], tag)


def export_openvino(model, xml_path: str | os.PathLike) -> Path:
    """Keras's own OpenVINO export of `model` (dynamic batch), written to `xml_path` (+ .bin)."""
    import io
    from contextlib import redirect_stdout

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with redirect_stdout(io.StringIO()):  # the export prints its signature
        model.export(str(xml_path), format="openvino", verbose=False)
    return xml_path


def agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict:
    """Worst relative difference and lowest row cosine similarity, over all outputs."""
    relative, cosine = 0.0, 1.0
    for ref, got in zip(reference, candidate):
        ref, got = np.asarray(ref, np.float64).reshape(len(ref), -1), np.asarray(got, np.float64).reshape(len(got), -1)
        relative = max(relative, float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12)))
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
        cosine = min(cosine, float(np.min((ref * got).sum(axis=1) / np.maximum(norms, 1e-12))))
    return {"relative_difference": relative, "min_cosine": cosine}


def accepts(check: dict, precision: str) -> bool:
    if precision == "f32":
        return check["relative_difference"] <= F32_TOLERANCE
    return check["min_cosine"] >= BF16_MIN_COSINE


def fast_forward(model, sample_images, compute: str = "auto", precision: str = "f32",
                 folder: str | os.PathLike | None = None):
    """The fastest runtime for `model` that agrees with Keras on `sample_images`.

    `folder`: where the OpenVINO files go and stay (a temporary folder, removed, when None). The returned
    runtime has `check` (the agreement figures) when it is not Keras itself.
    """
    compute = check_compute(compute)
    keras_forward = KerasForward(model)
    if compute == "tensorflow" or (compute == "auto" and not openvino_available()):
        return keras_forward
    scratch = None
    if folder is None:
        scratch = tempfile.TemporaryDirectory(prefix="transferkit-openvino-")
        folder = scratch.name
    try:
        xml = export_openvino(model, Path(folder) / "model.xml")
        candidate = OpenVINOForward(xml, precision)
    except Exception as error:  # a conversion failure must never stop training or prediction
        reason = next((line for line in reversed(str(error).splitlines()) if line.strip()), type(error).__name__)
        logger.warning("OpenVINO could not convert the model (%s); using TensorFlow.", reason.strip()[:300])
        return keras_forward
    finally:
        if scratch is not None:
            scratch.cleanup()  # compiled models no longer need their files
    check = agreement(keras_forward(sample_images), candidate(sample_images))
    candidate.check = check
    if not accepts(check, precision):
        logger.warning("OpenVINO %s disagrees with Keras (relative difference %.2g, cosine %.4f); using TensorFlow.",
                       precision, check["relative_difference"], check["min_cosine"])
        return keras_forward
    return candidate
