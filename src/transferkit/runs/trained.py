"""`TrainedModel`: a trained classifier that stands on its own, whoever trained it.

Evaluation, explanations, the report, export, the predictor and the server all take
one of these (or a run folder, which `TrainedModel.load` turns into one), so none of
them needs the training API above it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit import data
from transferkit.errors import ConfigError, RunDirError
from transferkit.progress import progress_bar
from transferkit.runs import folder as rundir

logger = logging.getLogger("transferkit")

RUN_FORMAT, RUN_FORMAT_VERSION = "transferkit-run", 1


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
                      calibrated: bool = True) -> np.ndarray:
        """(n, n_classes) probabilities for image files, in order; rows of unreadable files are NaN.

        With a calibration.json (and `calibrated`), temperature-scaled: same top-1, honest confidence.
        """
        from transferkit.modeling.classifier import to_class_probabilities
        from transferkit.modeling.openset import apply_temperature

        paths = [str(p) for p in paths]
        probabilities = np.full((len(paths), len(self.classes)), np.nan)
        if not paths:
            return probabilities
        rows = 0
        with progress_bar(len(paths), "Predicting", enabled=verbose and len(paths) > 64) as advance:
            for images, ok in data.make_dataset(paths, None, self.image_size, batch_size or 32, drop_unreadable=False):
                batch = to_class_probabilities(self.model.predict_on_batch(images), len(self.classes))
                ok = ok.numpy()
                probabilities[rows: rows + len(ok)][ok] = batch[ok]
                rows += len(ok)
                advance(len(ok))
        return apply_temperature(probabilities, self.temperature) if calibrated else probabilities

    def feature_model(self):
        """Image -> (pooled backbone features, head logits): one pass gives both."""
        import keras

        from transferkit.modeling.classifier import head_layers

        final = head_layers(self.model)[-1]
        if getattr(self, "_feature_model", None) is None:
            self._feature_model = keras.Model(self.model.inputs,
                                              [self.model.get_layer("pool").output, final.input])
        return self._feature_model, final

    def predict_features(self, paths: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features (n, d), logits (n, c)) for image files; rows of unreadable files are NaN."""
        paths = [str(p) for p in paths]
        dim = int(self.model.get_layer("pool").output.shape[-1])
        features = np.full((len(paths), dim), np.nan, np.float32)
        logits = np.full((len(paths), len(self.classes)), np.nan)
        rows = 0
        for images, ok in data.make_dataset(paths, None, self.image_size, batch_size, drop_unreadable=False):
            pooled, batch_logits = self.image_features(images)
            ok = ok.numpy()
            features[rows: rows + len(ok)][ok] = pooled[ok]
            logits[rows: rows + len(ok)][ok] = batch_logits[ok]
            rows += len(ok)
        return features, logits

    def image_features(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features, logits) of one batch of decoded images (float 0-255 at `image_size`)."""
        from transferkit.modeling.openset import two_class_logits

        features_model, final = self.feature_model()
        kernel, bias = (np.asarray(w, np.float64) for w in final.get_weights())
        pooled, penultimate = (np.asarray(t) for t in features_model.predict_on_batch(images))
        return pooled, two_class_logits(penultimate.astype(np.float64) @ kernel + bias)

    def unknown_scores(self, features, logits, method: str | None = None) -> np.ndarray:
        """The run's unknown score (higher: less like the training images); needs an ood.json."""
        from transferkit.modeling import openset

        if not self.ood:
            raise ConfigError("This run has no unknown detector (ood.json); it was trained before transferkit had one.")
        method = method or self.ood["method"]
        temperature = self.temperature or 1.0
        if method == "knn":
            return openset.knn_score(features, self.ood["bank"], int(self.ood.get("k", openset.DEFAULT_K)))
        if method == "mahalanobis":
            return openset.mahalanobis_score(features, self.ood["means"], self.ood["precision"])
        if method == "energy":
            return openset.energy_score(logits, temperature)
        return openset.msp_score(openset.softmax(openset.two_class_logits(logits) / temperature))

    def unknown_threshold(self, accept_rate: float | None = None) -> float:
        """The score threshold: the stored one, or the one accepting `accept_rate` of validation images."""
        from transferkit.modeling.openset import threshold_for

        if accept_rate is None:
            return float(self.ood["threshold"])
        return threshold_for(self.ood["val_scores"], accept_rate)

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
                {"path": path, "class": self.classes[label], "split": split, "sha256": self.file_hashes.get(path)}
                for split in data.SPLITS
                for path, label in zip(self.splits[split].paths, self.splits[split].labels)
            ]
            rundir.write_csv(run_dir / rundir.SPLIT_FILE, rows)
            rundir.write_csv(run_dir / rundir.SKIPPED_FILE, self.skipped, ["path", "class", "split", "code", "reason"])
        if self.calibration is not None:
            rundir.write_json(run_dir / rundir.CALIBRATION_FILE, self.calibration)
        if self.ood is not None:
            rundir.write_ood(run_dir, self.ood)
        return run_dir

    @classmethod
    def load(cls, run_dir) -> "TrainedModel":
        """Reload a run folder written by `transferkit train` (this version or an earlier one)."""
        import keras

        import transferkit.modeling.classifier  # noqa: F401 - registers the custom preprocessing layer

        config = rundir.read_config(run_dir)
        run_dir = Path(run_dir)
        history_path = run_dir / rundir.HISTORY_FILE
        try:
            model = keras.saving.load_model(run_dir / rundir.MODEL_FILE, compile=False)
        except Exception as error:  # noqa: BLE001 - any failure to read it means a damaged run
            raise RunDirError(f"'{run_dir / rundir.MODEL_FILE}' cannot be loaded ({error}); the run is damaged.") from error
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
        )
