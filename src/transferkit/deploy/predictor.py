"""Prediction with the fastest runtime at hand, from a run folder or an exported model.

`Predictor` takes a run folder (Keras), a `.tflite` file (TFLite with XNNPACK), a
SavedModel folder or an `.onnx` file (ONNX Runtime), each written by `transferkit
export`. Images are decoded by Pillow in the parallel `tf.data` pipeline the rest of
transferkit uses, so every runtime sees the same pixels.

On a run folder, `runtime="auto"` uses a float TFLite copy of the model when one is at
hand whose top-1 agrees with Keras (the parity check of `export`): `RUN/export/model.tflite`
from `transferkit export`, or one converted earlier into the cache. TFLite with XNNPACK
is faster than Keras on a CPU (BENCHMARKS.md), but converting costs seconds that only a
large call earns back, so a conversion into the cache is only started for calls of at
least `CONVERT_MIN_IMAGES` images (or runtime="tflite"), then reused.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data
from transferkit.runs import folder as rundir
from transferkit.deploy.runtimes import (
    RUNTIMES, KerasRuntime, OpenVINORuntime, TFLiteRuntime, check_onnxruntime, classes_of_export, cpu_threads,
    export_kind, open_export, openvino_copy, predict_files, read_export_info, read_onnx_metadata,
    read_tflite_metadata, run_files,
)
from transferkit.errors import ConfigError, DataError, RunDirError, TransferkitError
from transferkit.analysis.ood import check_accept_rate
from transferkit.modeling.openset import apply_temperature
from transferkit.runs.trained import TrainedModel

logger = logging.getLogger("transferkit")

# A run folder without a TFLite copy is converted (once, cached) only for calls this large.
CONVERT_MIN_IMAGES = 2000
PRECISIONS = ("auto", "f32", "bf16")  # of a run folder's OpenVINO copy
# Validation images the parity check of a cached conversion looks at, at most.
CACHE_PARITY_IMAGES = 200


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]  # (label, probability), most probable first
    unknown: bool | None = None  # score above the run's threshold; None where no detector is at hand
    score: float | None = None  # unknown score, higher = less like the training images


class Predictor:
    """Classifies image files with a run folder or an exported model.

    `runtime`: 'auto' (the fastest one available, see the module docstring), or one
    of 'keras' / 'tflite' (run folder), 'tflite' (.tflite file), 'savedmodel'
    (SavedModel folder), 'onnx' (.onnx file). After each call, `last_stats` holds the
    images, seconds and images per second of the prediction itself (decoding
    included, loading and conversion not) and the runtime that ran it.
    """

    def __init__(self, source, runtime: str = "auto", *, num_threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, verbose: int = 0, precision: str = "auto"):
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        self.precision = precision
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
        allowed = ("auto", "openvino", "keras", "tflite") if kind == "run" else ("auto", kind)
        if runtime not in allowed:
            raise ConfigError(f"runtime {runtime!r} cannot run a {kind} model '{source}'; use one of {', '.join(allowed)}.")
        if kind == "onnx":
            check_onnxruntime()
        self.source, self.kind, self.requested_runtime = source, kind, runtime
        self.num_threads = num_threads or cpu_threads()
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "transferkit" / "tflite"
        self.verbose = verbose
        self.last_stats: dict = {}
        self.conversion: dict | None = None  # set when a run folder was converted to TFLite here
        self._trained = None
        self._runtime = None
        self._no_openvino = False
        if kind == "run":
            self._meta = TrainedModel.load(source, with_model=False)  # classes, calibration, detector
            self.classes, self.image_size = self._meta.classes, self._meta.image_size
        else:
            self.classes = classes_of_export(source, kind)
            self._runtime = open_export(source, kind, self.num_threads)
            self.image_size = self._runtime.image_size

    # -- runtimes ---------------------------------------------------------------------

    @property
    def trained(self) -> TrainedModel | None:
        """The `TrainedModel` of a run folder (loaded on first use), else None."""
        if self.kind != "run":
            return None
        if self._trained is None:
            self._trained = TrainedModel.load(self.source)
        return self._trained

    @property
    def runtime(self) -> str | None:
        """The runtime chosen so far ('keras', 'tflite', ...); a run folder's is chosen on the first call."""
        return self._runtime.name if self._runtime is not None else None

    @property
    def runtime_description(self) -> str | None:
        """e.g. 'TFLite int8 + XNNPACK, 2 thread(s)'; a run folder's is known after the first call."""
        return self._runtime.description if self._runtime is not None else None

    def _runtime_for(self, n_images: int, paths: Sequence[str]):
        """A run folder's runtime: its checked OpenVINO copy, a parity-checked float TFLite copy, else Keras."""
        if self._runtime is not None:
            return self._runtime
        if self._openvino_runtime() is not None:
            return self._runtime
        tflite = self._tflite_copy(n_images, paths)
        self._runtime = TFLiteRuntime(tflite, self.num_threads) if tflite else KerasRuntime(self.trained.model)
        return self._runtime

    def _tflite_copy(self, n_images: int, paths: Sequence[str]) -> Path | None:
        """The checked float TFLite copy a call of `n_images` uses: found, or converted now where that pays."""
        if self.requested_runtime not in ("auto", "tflite"):
            return None
        tflite = self._checked_tflite_copy()
        if tflite is None and (self.requested_runtime == "tflite" or n_images >= CONVERT_MIN_IMAGES):
            tflite = self._convert_to_cache(list(paths))
        if tflite is None and self.requested_runtime == "tflite":
            raise ConfigError(f"No TFLite copy of '{self.source}' agrees with its Keras model (see the warning "
                              "above); use runtime 'keras' or 'auto'.")
        return tflite

    def _openvino_runtime(self) -> OpenVINORuntime | None:
        """The run's OpenVINO copy (`RUN/openvino/`, made and checked by `train`), when allowed and at hand."""
        if isinstance(self._runtime, OpenVINORuntime):
            return self._runtime
        if self._runtime is not None or self.requested_runtime not in ("auto", "openvino"):
            return None
        copy = None if self._no_openvino else openvino_copy(self.source)
        self._no_openvino = copy is None  # looked up once: the digest check reads all of model.keras
        if copy is None and self.requested_runtime == "openvino":
            raise ConfigError(
                f"'{self.source}' has no OpenVINO copy of its model ('{rundir.OPENVINO_DIR}/', written by `train` "
                "when OpenVINO is installed: pip install openvino, then train again); use runtime 'auto'.")
        if copy is not None:
            self._runtime = OpenVINORuntime(*copy, precision=self._openvino_precision(), num_threads=self.num_threads)
        return self._runtime

    def _openvino_precision(self) -> str:
        """bf16 where asked, or (auto) where the CPU has it and the run measured bf16 giving its f32 labels."""
        from transferkit.modeling.forward import cpu_has_bf16

        if self.precision != "auto":
            return self.precision
        return "bf16" if self._meta.bf16_agrees and cpu_has_bf16() else "f32"

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
        from transferkit.deploy.export import export_trained

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
            result = export_trained(self.trained, "tflite", target, run_dir=self.source,
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
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        paths = [str(p) for p in paths]
        runtime = self._runtime_for(len(paths), paths) if paths else self._runtime
        probabilities, self.last_stats = predict_files(
            runtime, paths, self.image_size, len(self.classes), batch_size, bool(self.verbose), self.source)
        return apply_temperature(probabilities, self.temperature)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities for images already decoded by `data.load_image` at
        `image_size` (uint8 or float, 0-255): the server's path, which decodes uploads in memory."""
        from transferkit.modeling.openset import to_class_probabilities

        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ConfigError(f"images must have shape (n, {self.image_size}, {self.image_size}, 3), got {images.shape}.")
        runtime = self._runtime_for(len(images), [])
        probabilities = to_class_probabilities(runtime(images), len(self.classes))
        if probabilities.shape[1] != len(self.classes):
            raise RunDirError(f"'{self.source}' outputs {probabilities.shape[1]} class scores but names "
                              f"{len(self.classes)} classes; its labels file does not belong to it.")
        return apply_temperature(probabilities, self.temperature)

    @property
    def temperature(self) -> float | None:
        """The run's (or export's) fitted temperature; None for models without a calibration."""
        if self.kind == "run":
            return self._meta.temperature
        return ((self._export_info() or {}).get("calibration") or {}).get("temperature")

    def _export_info(self) -> dict | None:
        """An export's export.json, else (a file copied without its sidecar) the metadata embedded in it."""
        if self.kind == "run":
            return None
        if "_info" not in self.__dict__:
            embedded = {"tflite": read_tflite_metadata, "onnx": read_onnx_metadata}.get(self.kind)
            self._info = read_export_info(self.source) or (embedded(self.source) if embedded else None)
        return self._info

    @property
    def can_reject(self) -> bool:
        """Whether this model has an unknown detector (run folders since ood.json; exports: max-softmax)."""
        if self.kind == "run":
            return self._meta.ood is not None
        return bool((self._export_info() or {}).get("unknown"))

    def predict_with_scores(self, paths: Sequence[str], batch_size: int | None = None, *,
                            accept_rate: float | None = None, threshold: float | None = None):
        """(probabilities, unknown scores, threshold): scores/threshold None without a detector.

        A run folder's score needs the pooled features: one pass of its OpenVINO copy, else of its Keras
        model, gives them with the logits.
        """
        check_rejection(accept_rate, threshold)
        paths = [str(p) for p in paths]
        if not self.can_reject:
            return self.predict_proba(paths, batch_size), None, None
        if self.kind != "run":
            return self._export_scores(self.predict_proba(paths, batch_size), accept_rate, threshold)
        started = time.perf_counter()
        runtime = self._openvino_runtime()
        if runtime is None:  # the unknown score needs the Keras model's pooled features
            if self._runtime is None:
                self._runtime = KerasRuntime(self.trained.model)
            result = scores_of_trained(self.trained, paths, batch_size, accept_rate=accept_rate, threshold=threshold)
            seconds = time.perf_counter() - started
            self.last_stats = {"images": len(paths), "seconds": seconds, "batch_size": batch_size or 32,
                               "images_per_second": len(paths) / seconds if seconds > 0 and paths else None,
                               "description": "Keras, with pooled features for the unknown score", "runtime": "keras"}
            return result
        features, logits, self.last_stats = self._openvino_outputs(runtime, paths, batch_size)
        return score_outputs(self._meta, features, logits, accept_rate, threshold, runtime.forward.precision)

    def _export_scores(self, probabilities: np.ndarray, accept_rate: float | None, threshold: float | None):
        """An export's unknown verdict: max-softmax, with the threshold its metadata carries."""
        from transferkit.modeling import openset

        unknown = self._export_info()["unknown"]
        if threshold is None:
            threshold = (openset.threshold_for(unknown["val_scores"], accept_rate) if accept_rate is not None
                         else float(unknown["threshold"]))
        return probabilities, openset.msp_score(probabilities), float(threshold)

    def _openvino_outputs(self, runtime: OpenVINORuntime, paths: Sequence[str], batch_size: int | None):
        """(pooled features, logits, stats) of the OpenVINO copy, NaN rows for unreadable files."""
        features = np.full((len(paths), runtime.kernel.shape[0]), np.nan, np.float32)
        logits = np.full((len(paths), len(self.classes)), np.nan)

        def store(outputs, tag):
            row, ok = tag
            rows = np.arange(row, row + len(ok))[ok]
            features[rows], logits[rows] = outputs[1][ok], outputs[2][ok]

        stats = run_files(runtime, paths, self.image_size, store, batch_size, bool(self.verbose),
                          map_with=runtime.map_outputs)
        return features, logits, stats

    def predict_images_with_scores(self, images: np.ndarray, *, accept_rate: float | None = None,
                                   threshold: float | None = None):
        """`predict_with_scores` on images already decoded by `data.load_image` (workers that decode
        themselves): the same probabilities, scores and threshold as the path-based call."""
        if not self.can_reject:
            return self.predict_images(images), None, None
        if self.kind != "run":
            return self._export_scores(self.predict_images(images), accept_rate, threshold)
        runtime = self._openvino_runtime()
        if runtime is not None:
            _, features, logits = runtime.outputs(images)
            return score_outputs(self._meta, features, logits, accept_rate, threshold, runtime.forward.precision)
        if self._runtime is None:
            self._runtime = KerasRuntime(self.trained.model)
        features, logits = self.trained.image_features(np.asarray(images, dtype=np.float32))
        return score_outputs(self.trained, features, logits, accept_rate, threshold)

    def runtime_for_workers(self, n_images: int, sample_paths: Sequence[str]) -> str:
        """The runtime a call of `n_images` would pick, converting a run folder to TFLite now (once, here)
        where that call would, so that many workers find the checked copy instead of each converting;
        the Keras model is not loaded for it."""
        if self.kind != "run":
            return self.kind
        return "tflite" if self._tflite_copy(n_images, sample_paths) is not None else "keras"

    def predict(self, inputs, top_k: int = 1, batch_size: int | None = None, *, reject: bool = True,
                accept_rate: float | None = None, threshold: float | None = None) -> list:
        """Label and confidence per image (`Prediction`); folders searched recursively,
        non-image and unreadable files skipped with a warning.

        With `reject` and a model that has an unknown detector, each prediction also says
        whether the image looks unlike anything trained on (`unknown`, `score`); the
        threshold is the run's (about 95 % of validation images accepted), or the one for
        `accept_rate`, or `threshold` itself.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}.")
        paths = data.expand_image_paths(inputs)
        if not reject:
            return rank(paths, self.predict_proba(paths, batch_size), self.classes, top_k)
        probabilities, scores, limit = self.predict_with_scores(paths, batch_size, accept_rate=accept_rate,
                                                                threshold=threshold)
        return rank(paths, probabilities, self.classes, top_k, scores, limit)


def check_rejection(accept_rate: float | None, threshold: float | None) -> None:
    if accept_rate is not None:
        check_accept_rate(accept_rate)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ConfigError(f"threshold must be a number (an unknown score), got {threshold!r}.")


def scores_of_trained(trained: TrainedModel, paths: Sequence[str], batch_size: int | None = None, *,
                      accept_rate: float | None = None, threshold: float | None = None):
    """(calibrated probabilities, unknown scores, threshold) of a `TrainedModel` with an unknown detector:
    one Keras pass gives the pooled features for the score and the logits for the probabilities."""
    check_rejection(accept_rate, threshold)
    features, logits = trained.predict_features([str(p) for p in paths], batch_size or 32)
    return score_outputs(trained, features, logits, accept_rate, threshold)


def score_outputs(trained: TrainedModel, features, logits, accept_rate: float | None, threshold: float | None,
                  precision: str = "f32"):
    """(calibrated probabilities, unknown scores, threshold) from pooled features and logits (NaN rows stay NaN);
    the threshold is the run's for the precision the features were computed at, unless given."""
    from transferkit.modeling import openset

    probabilities = openset.softmax(openset.two_class_logits(logits) / (trained.temperature or 1.0))
    probabilities[np.isnan(logits).any(axis=1)] = np.nan
    scores = trained.unknown_scores(features, logits)
    if threshold is None:
        threshold = trained.unknown_threshold(accept_rate, precision)
    return probabilities, scores, float(threshold)


def rank(paths: Sequence[str], probabilities: np.ndarray, classes: Sequence[str], top_k: int,
         scores: np.ndarray | None = None, threshold: float | None = None) -> list:
    """`Prediction`s for the readable rows, classes by falling probability; `unknown` where score > threshold."""
    k = min(top_k, len(classes))
    predictions = []
    for i, (path, row) in enumerate(zip(paths, probabilities)):
        if np.isnan(row).any():
            continue
        order = np.argsort(-row, kind="stable")[:k]
        ranked = tuple((classes[j], float(row[j])) for j in order)
        score = float(scores[i]) if scores is not None else None
        unknown = bool(score > threshold) if score is not None and threshold is not None else None
        predictions.append(Prediction(path, ranked[0][0], ranked[0][1], ranked, unknown, score))
    return predictions


def _validation_sample(run_dir, limit: int | None) -> list[str]:
    """Up to `limit` of a run's validation images, evenly spread over the split.csv order."""
    paths = list(rundir.read_split(run_dir, "validation").paths)
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise DataError(f"None of the validation images listed in '{Path(run_dir) / rundir.SPLIT_FILE}' exists any more.")
    return data.evenly_spaced(paths, limit)
