"""`TrainedModel`: a trained classifier that stands on its own, whoever trained it.

Evaluation, explanations, the report, export, the predictor and the server all take
one of these (or a run folder, which `TrainedModel.load` turns into one), so none of
them needs the training API above it.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit import data
from transferkit.errors import ConfigError, RunDirError
from transferkit.progress import progress_bar
from transferkit.atomic import atomic_folder
from transferkit.runs import folder as rundir

logger = logging.getLogger("transferkit")

RUN_FORMAT, RUN_FORMAT_VERSION = "transferkit-run", 1
# Prediction runs in bf16 (about twice as fast where the CPU has it) only where the run's validation
# images kept at least this share of their f32 top-1 labels.
BF16_MIN_AGREEMENT = 0.99


@dataclass
class TrainedModel:
    """The Keras model with everything needed to use, audit and reload it."""

    model: Any  # keras.Model: raw 0-255 RGB in, class scores out
    classes: list[str]
    image_size: int
    backbone: str
    params: dict = field(default_factory=dict)  # the settings as given
    resolved: dict = field(default_factory=dict)  # the settings as resolved at fit time
    history: list[dict] = field(default_factory=list)  # one row per epoch, both stages
    splits: dict[str, data.LabelledFiles] | None = None  # as trained; None after load (split.csv has them)
    data_summary: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    run_dir: Path | None = None
    file_hashes: dict[str, str] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    # calibration.json: {"temperature", "ece_before", "ece_after", ...}; None for runs without one
    calibration: dict | None = None
    # ood.json + ood.npz: {"method", "threshold", "accept_rate", ..., arrays}; None for runs without one
    ood: dict | None = None
    # {"run_dir", "model_sha256", "classes"} of the run this one started from (`--from`); None otherwise
    parent: dict | None = None
    groups: dict[str, str] = field(default_factory=dict)  # {path: its --group-by key}, for split.csv

    @property
    def fine_tune_start_epoch(self) -> int | None:
        return next((row["epoch"] for row in self.history if row["stage"] == 2), None)

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 42))

    # -- data it was trained on ---------------------------------------------------------

    def split(self, name: str = data.VALIDATION, run_dir=None) -> data.LabelledFiles:
        """The files of one split: kept from training, else rebuilt from the run's split.csv."""
        if name not in data.SPLITS:
            raise ConfigError(f"split must be one of {list(data.SPLITS)}, got {name!r}.")
        kept = (self.splits or {}).get(name)
        if kept is not None and len(kept):
            return kept
        run_dir = run_dir or self.run_dir
        if run_dir is None:
            raise ConfigError(
                f"No {name} split is known for this model: pass a labelled data folder, "
                "or the run folder it was loaded from."
            )
        return rundir.read_split(run_dir, name, self.classes)

    # -- inference ----------------------------------------------------------------------

    @property
    def temperature(self) -> float | None:
        return float(self.calibration["temperature"]) if self.calibration else None

    def predict_proba(self, paths: Sequence[str], batch_size: int | None = None, verbose: bool = False,
                      calibrated: bool = True, compute: str | None = None) -> np.ndarray:
        """(n, n_classes) probabilities for image files, in order; rows of unreadable files are NaN.

        With a calibration.json (and `calibrated`), temperature-scaled: same top-1, honest confidence.
        `compute`: the forward pass's runtime (`modeling.forward`; default: the run's own setting).
        """
        from transferkit.modeling.openset import apply_temperature

        probabilities = self.predict_outputs(paths, batch_size or 32, verbose, compute)[0]
        return apply_temperature(probabilities, self.temperature) if calibrated else probabilities

    def predict_features(self, paths: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features (n, d), logits (n, c)) for image files; rows of unreadable files are NaN."""
        return self.predict_outputs(paths, batch_size)[1:]

    def forward(self, sample_images, compute: str | None = None, images: int = 0, precision: str = "f32"):
        """Image -> (probabilities, pooled features, penultimate), on the fastest runtime that agrees with Keras
        (for a pass over `images` images: 'auto' converts only where that pays, `modeling.forward`).
        `precision="bf16"` runs an OpenVINO conversion made before at bf16 (None when there is none)."""
        from transferkit.modeling.classifier import inference_model
        from transferkit.modeling.forward import OpenVINOForward, compute_for, fast_forward

        if precision != "f32":  # compiled for this one pass (a fraction of a second), then freed
            base = self.openvino_forward()
            return OpenVINOForward(base.xml_path, precision) if base is not None else None
        compute = compute or self.params.get("compute", "auto")
        cached = self.__dict__.setdefault("_forwards", {})
        if compute not in cached:  # a conversion made earlier serves any later pass
            compute = compute_for(compute, images)
        if compute not in cached:
            import tempfile

            folder = self.__dict__.setdefault("_ir_folder", tempfile.TemporaryDirectory(prefix="transferkit-ir-"))
            cached[compute] = fast_forward(inference_model(self.model), sample_images, compute,
                                           folder=Path(folder.name) / compute)
        return cached[compute]

    def openvino_forward(self):
        """The OpenVINO conversion made for this model's own passes, or None."""
        forward = self.__dict__.get("_forwards", {}).get(self.params.get("compute", "auto"))
        if forward is None or forward.runtime != "openvino" or not getattr(forward, "xml_path", Path()).is_file():
            return None
        return forward

    def predict_outputs(self, paths: Sequence[str], batch_size: int = 32, verbose: bool = False,
                        compute: str | None = None, precision: str = "f32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uncalibrated probabilities, pooled features, logits) of image files in one pass; NaN rows where unreadable.

        The last pass is remembered: the report, its TensorBoard figures and `evaluate` after training
        all ask for the validation split, and the weights of a trained model do not change.
        """
        paths = [str(p) for p in paths]
        key = (tuple(_stamp(p) for p in paths), compute, precision)  # a file changed since is predicted again
        last = self.__dict__.get("_last_pass")
        if last is not None and last[0] == key:
            return tuple(a.copy() for a in last[1])
        outputs = self._predict_outputs(paths, batch_size, verbose, compute, precision)
        self.__dict__["_last_pass"] = (key, outputs)
        return tuple(a.copy() for a in outputs)

    def _predict_outputs(self, paths: list[str], batch_size: int, verbose: bool, compute: str | None,
                         precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from transferkit.modeling.openset import head_logits, to_class_probabilities

        n, classes = len(paths), len(self.classes)
        dim = int(self.model.get_layer("pool").output.shape[-1])
        probabilities, logits = np.full((n, classes), np.nan), np.full((n, classes), np.nan)
        features = np.full((n, dim), np.nan, np.float32)
        kernel, bias = self.head_weights()
        if not paths:
            return probabilities, features, logits

        def store(outputs, tag):
            row, ok = tag
            rows = np.arange(row, row + len(ok))[ok]
            probabilities[rows] = to_class_probabilities(outputs[0], classes)[ok]
            features[rows] = outputs[1][ok]
            logits[rows] = head_logits(outputs[2], kernel, bias)[ok]
            advance(len(ok))

        def batches():
            row = 0
            for images, ok in data.make_dataset(paths, None, self.image_size, batch_size, drop_unreadable=False):
                images, ok = images.numpy(), ok.numpy()
                yield images, (row, ok)
                row += len(ok)

        with progress_bar(n, "Predicting", enabled=verbose and n > 64) as advance:
            stream = batches()
            first = next(stream)
            self.forward(first[0], compute, n, precision).map(itertools.chain([first], stream), store)
        return probabilities, features, logits

    def image_features(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features, logits) of one batch of decoded images (float 0-255 at `image_size`)."""
        from transferkit.modeling.openset import head_logits

        images = np.asarray(images, np.float32)
        _, pooled, penultimate = self.forward(images, images=len(images))(images)
        return pooled, head_logits(penultimate, *self.head_weights())

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, bias) of the final Dense layer: the logits from the penultimate features."""
        from transferkit.modeling.classifier import head_layers

        kernel, bias = head_layers(self.model)[-1].get_weights()
        return np.asarray(kernel), np.asarray(bias)

    def unknown_scores(self, features, logits, method: str | None = None) -> np.ndarray:
        """The run's unknown score (higher: less like the training images); needs an ood.json."""
        from transferkit.modeling import openset

        if not self.ood:
            raise ConfigError("This run has no unknown detector (ood.json); it was trained before transferkit had one.")
        method = method or self.ood["method"]
        temperature = self.temperature or 1.0
        if method == "knn":
            bank = self.__dict__.get("_bank")
            if bank is None or bank.shape != self.ood["bank"].shape:  # float16 on disk, float32 for the product
                bank = self.__dict__["_bank"] = np.asarray(self.ood["bank"], np.float32)
            return openset.knn_score(features, bank, int(self.ood.get("k", openset.DEFAULT_K)))
        if method == "mahalanobis":
            return openset.mahalanobis_score(features, self.ood["means"], self.ood["precision"])
        if method == "energy":
            return openset.energy_score(logits, temperature)
        return openset.msp_score(openset.softmax(openset.two_class_logits(logits) / temperature))

    def unknown_threshold(self, accept_rate: float | None = None, precision: str = "f32") -> float:
        """The score threshold: the stored one, or the one accepting `accept_rate` of validation images
        (as scored at `precision`, when the run measured that one too)."""
        from transferkit.modeling.openset import threshold_for

        prefix = "bf16_" if precision == "bf16" and "bf16_threshold" in self.ood else ""
        if accept_rate is None:
            return float(self.ood[prefix + "threshold"])
        return threshold_for(self.ood[prefix + "val_scores"], accept_rate)

    @property
    def bf16_agrees(self) -> bool:
        """Whether bf16 OpenVINO passes gave the validation images' f32 top-1 (`analysis.ood`)."""
        return bool(self.ood) and self.ood.get("bf16_top1_agreement", 0.0) >= BF16_MIN_AGREEMENT

    # -- the run folder -----------------------------------------------------------------

    def config(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "params": self.params,
            "resolved": self.resolved,
            "data": self.data_summary,
            "results": self.results,
            "versions": rundir.package_versions(),
            **({"parent": self.parent} if self.parent else {}),
        }

    def write_config(self, run_dir=None) -> None:
        rundir.write_json(Path(run_dir or self.run_dir) / rundir.CONFIG_FILE, self.config())

    def save(self, run_dir, overwrite: bool = False) -> Path:
        """Write model, classes, config, history, split and skipped files to `run_dir` (figures: analysis)."""
        run_dir = rundir.prepare_output_dir(run_dir, overwrite)
        with rundir.atomic_path(run_dir / rundir.MODEL_FILE) as tmp:
            self.model.save(tmp)
        rundir.write_text(run_dir / rundir.CLASSES_FILE, "\n".join(self.classes) + "\n")
        self.run_dir = run_dir
        self.results["run_dir"] = str(run_dir)
        self.write_config(run_dir)
        if self.history:
            rundir.write_csv(run_dir / rundir.HISTORY_FILE, self.history, rundir.history_fields(self.history))
        if self.splits is not None:
            rows = [
                {"path": path, "class": self.classes[label], "split": split, "sha256": self.file_hashes.get(path),
                 "group": self.groups.get(path, "")}
                for split in data.SPLITS
                for path, label in zip(self.splits[split].paths, self.splits[split].labels)
            ]
            rundir.write_csv(run_dir / rundir.SPLIT_FILE, rows)
            rundir.write_csv(run_dir / rundir.SKIPPED_FILE, self.skipped, ["path", "class", "split", "code", "reason"])
        if self.calibration is not None:
            rundir.write_json(run_dir / rundir.CALIBRATION_FILE, self.calibration)
        if self.ood is not None:
            rundir.write_ood(run_dir, self.ood)
        self._write_openvino(run_dir)
        return run_dir

    def _write_openvino(self, run_dir: Path) -> None:
        """Keep the checked OpenVINO conversion made for the run's own passes in `RUN/openvino/`,
        with the head's weights, so prediction needs neither a conversion nor TensorFlow."""
        import shutil

        forward = self.openvino_forward()
        if forward is None:
            return
        kernel, bias = self.head_weights()
        target = run_dir / rundir.OPENVINO_DIR
        with atomic_folder(target) as tmp:
            for name in (forward.xml_path.name, forward.xml_path.with_suffix(".bin").name):
                shutil.copyfile(forward.xml_path.parent / name, tmp / name)
            np.savez(tmp / rundir.OPENVINO_HEAD, kernel=kernel, bias=bias)
            rundir.write_json(tmp / rundir.OPENVINO_INFO, {
                "model_digest": data.file_digest(run_dir / rundir.MODEL_FILE), "xml": forward.xml_path.name,
                "outputs": ["probabilities", "pooled", "penultimate"], "description": forward.description,
                "check": getattr(forward, "check", None),
            })

    @classmethod
    def load(cls, run_dir, with_model: bool = True) -> "TrainedModel":
        """Reload a run folder written by `transferkit train` (this version or an earlier one).

        `with_model=False` skips the Keras model (and TensorFlow): enough for the classes,
        calibration and unknown detector, as a predictor on the OpenVINO copy needs.
        """
        config = rundir.read_config(run_dir)
        run_dir = Path(run_dir)
        history_path = run_dir / rundir.HISTORY_FILE
        model = None
        if with_model:
            import keras

            import transferkit.modeling.classifier  # noqa: F401 - registers the custom preprocessing layer

            try:
                model = keras.saving.load_model(run_dir / rundir.MODEL_FILE, compile=False)
            except Exception as error:  # noqa: BLE001 - any failure to read it means a damaged run
                raise RunDirError(f"'{run_dir / rundir.MODEL_FILE}' cannot be loaded ({error}); "
                                  "the run is damaged.") from error
        params = config.get("params", {})
        return cls(
            model=model,
            classes=rundir.read_classes(run_dir),
            image_size=int(config["resolved"]["image_size"]),
            backbone=params.get("backbone", "mobilenet_v2"),
            params=params,
            resolved=config["resolved"],
            history=rundir.parse_history(rundir.read_csv(history_path)) if history_path.exists() else [],
            data_summary=config.get("data", {}),
            results=config.get("results", {}),
            run_dir=run_dir,
            calibration=rundir.read_calibration(run_dir),
            ood=rundir.read_ood(run_dir),
            parent=config.get("parent"),
        )


def _stamp(path: str) -> tuple:
    try:
        stat = os.stat(path)
        return path, stat.st_size, stat.st_mtime_ns
    except OSError:
        return path, None, None

