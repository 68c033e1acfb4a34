"""`ImageClassifier`: the Python API that the CLI is a thin layer over.

Follows scikit-learn's conventions: the constructor only stores settings,
`fit` learns (attributes ending in `_`), `predict`/`predict_proba`/`evaluate`
use the learned model, `save`/`load` round-trip a run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data, rundir
from transferkit.progress import progress_bar as _progress
from transferkit.augment import Augmentation, resolve_augmentation
from transferkit.backbones import check_image_size, find_local_weights, get_backbone
from transferkit.errors import ConfigError, DataError, RunDirError
from transferkit.training import (
    FINE_TUNE_EPOCH_RANGE,
    FINE_TUNE_MIN_STEPS,
    HEAD_EPOCH_RANGE,
    HEAD_MIN_STEPS,
    STATE_FILE,
    auto_epochs,
    auto_views,
    balanced_class_weights,
    train_two_stages,
)

logger = logging.getLogger("transferkit")

SAMPLE_GRID_SIZE = 18
MAX_NEAR_DUPLICATE_GROUP = 8


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]  # (label, probability), most probable first


def _check_positive(name, value, kind=float, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ConfigError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}.")


def _check_nonnegative_int(name, value, allow_none=True):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}.")


class ImageClassifier:
    """Transfer-learned image classifier for a folder of class sub-folders.

    Stage 1 trains a new head on a frozen ImageNet backbone; stage 2 unfreezes the
    backbone from `fine_tune_at` up and fine-tunes at `fine_tune_learning_rate`.
    `None` settings are filled in at fit time: `image_size` and `fine_tune_at` from
    the backbone registry, `epochs` and `fine_tune_epochs` from the number of
    optimisation steps the training set gives, `fine_tune_learning_rate` as a tenth
    of `learning_rate`.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        *,
        image_size: int | None = None,
        weights: str = "imagenet",
        weights_dir: str | None = None,
        augment: str | Augmentation | dict = "standard",
        epochs: int | None = None,
        learning_rate: float = 1e-3,
        fine_tune_epochs: int | None = None,
        fine_tune_learning_rate: float | None = None,
        fine_tune_at: int | str | None = None,
        dropout: float = 0.2,
        hidden_units: Sequence[int] = (),
        batch_size: int = 32,
        val_split: float = 0.2,
        test_split: float = 0.0,
        patience: int | None = 5,
        class_weight: str = "auto",
        cache: bool = True,
        cached_views: int | None = None,
        cache_dir: str | None = None,
        write_report: bool = True,
        seed: int = 42,
        verbose: int = 1,
    ):
        self.backbone = backbone
        self.image_size = image_size
        self.weights = weights
        self.weights_dir = weights_dir
        self.augment = augment
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.fine_tune_epochs = fine_tune_epochs
        self.fine_tune_learning_rate = fine_tune_learning_rate
        self.fine_tune_at = fine_tune_at
        self.dropout = dropout
        self.hidden_units = hidden_units
        self.batch_size = batch_size
        self.val_split = val_split
        self.test_split = test_split
        self.patience = patience
        self.class_weight = class_weight
        self.cache = cache
        self.cached_views = cached_views
        self.cache_dir = cache_dir
        self.write_report = write_report
        self.seed = seed
        self.verbose = verbose

    # -- settings -----------------------------------------------------------------

    def get_params(self) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"ImageClassifier({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def _validated_settings(self) -> dict:
        """Check every setting up front and fill in the backbone-dependent defaults."""
        spec = get_backbone(self.backbone)
        image_size = spec.default_size if self.image_size is None else self.image_size
        check_image_size(spec, image_size)
        if not isinstance(self.weights, str) or not self.weights:
            raise ConfigError(f"weights must be 'imagenet', 'none' or a file path, got {self.weights!r}.")
        _check_positive("learning_rate", self.learning_rate)
        _check_positive("fine_tune_learning_rate", self.fine_tune_learning_rate, allow_none=True)
        _check_positive("batch_size", self.batch_size, kind=int)
        _check_positive("epochs", self.epochs, kind=int, allow_none=True)
        _check_nonnegative_int("fine_tune_epochs", self.fine_tune_epochs)
        _check_nonnegative_int("patience", self.patience)
        _check_positive("cached_views", self.cached_views, kind=int, allow_none=True)
        if self.class_weight not in ("auto", "balanced", "none"):
            raise ConfigError(f"class_weight must be 'auto', 'balanced' or 'none', got {self.class_weight!r}.")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}.")
        if any(isinstance(u, bool) or not isinstance(u, int) or u <= 0 for u in self.hidden_units):
            raise ConfigError(f"hidden_units must be positive integers, got {list(self.hidden_units)!r}.")
        if not isinstance(self.val_split, (int, float)) or not 0.0 < self.val_split < 1.0:
            raise ConfigError(
                f"val_split must be strictly between 0 and 1, got {self.val_split!r}. "
                "Use e.g. 0.2 to hold out 20 % of each class, or pass a separate validation folder."
            )
        if not isinstance(self.test_split, (int, float)) or not 0.0 <= self.test_split < 1.0 - self.val_split:
            raise ConfigError(
                f"test_split must be in [0, 1 - val_split), got {self.test_split!r} (val_split {self.val_split})."
            )
        return {
            "spec": spec,
            "image_size": image_size,
            "augmentation": resolve_augmentation(self.augment),
            "fine_tune_at": spec.fine_tune_at if self.fine_tune_at is None else self.fine_tune_at,
            "fine_tune_learning_rate": self.fine_tune_learning_rate or self.learning_rate / 10,
        }

    # -- training -----------------------------------------------------------------

    def fit(self, data_dir, *, val_dir=None, out=None, overwrite: bool = False,
            _resume: bool = False) -> "ImageClassifier":
        """Train on `data_dir` (one sub-folder per class); save the run to `out` if given.

        Validation comes from `val_dir` when given, otherwise a stratified
        `val_split` of `data_dir` drawn with `seed`. Every check runs before training.
        With `out`, every epoch is checkpointed in `out/checkpoint/`, so a killed run
        continues with `ImageClassifier.resume(out)`.
        """
        import keras

        from transferkit.model import build_classifier

        started = time.perf_counter()
        settings = self._validated_settings()
        spec, image_size = settings["spec"], settings["image_size"]
        data_dir, val_dir, test_dir = data.resolve_layout(data_dir, val_dir)
        files = data.list_class_folders(data_dir)
        for folder in (val_dir, test_dir):
            if folder is not None:
                data.list_class_folders(folder, classes=files.classes)
        out_dir = rundir.check_output_dir(out, overwrite or _resume) if out is not None else None
        files, val_files, test_files = self._usable_files(data_dir, val_dir, test_dir)
        if val_dir is None:
            train_files, val_files, held_out = data.stratified_split(
                files, self.val_split, self.seed, root=data_dir, groups=self.duplicate_groups_,
                test_split=0.0 if test_dir is not None else self.test_split,
            )
            test_files = test_files if test_dir is not None else held_out
        else:
            train_files = files
        if test_files is None:
            test_files = data.LabelledFiles((), (), files.classes)

        num_classes = len(files.classes)
        steps = math.ceil(len(train_files) / self.batch_size)
        epochs = self.epochs or auto_epochs(len(train_files), self.batch_size, HEAD_MIN_STEPS, HEAD_EPOCH_RANGE)
        fine_tune_epochs = (
            auto_epochs(len(train_files), self.batch_size, FINE_TUNE_MIN_STEPS, FINE_TUNE_EPOCH_RANGE)
            if self.fine_tune_epochs is None
            else self.fine_tune_epochs
        )

        class_weights = balanced_class_weights(train_files.class_counts(), self.class_weight)
        keras.utils.set_random_seed(self.seed)
        model = build_classifier(
            spec,
            num_classes,
            image_size,
            weights=self.weights,
            weights_dir=self.weights_dir,
            augmentation=settings["augmentation"],
            dropout=self.dropout,
            hidden_units=tuple(self.hidden_units),
            seed=self.seed,
        )
        if self.verbose:
            counts = ", ".join(f"{k} {v}" for k, v in train_files.class_counts().items())
            print(
                f"{len(files.classes)} classes, {len(train_files)} training images ({counts}), "
                f"{len(val_files)} validation images; {spec.name} at {image_size} px, "
                f"{steps} steps per epoch"
            )
        if self.cache:
            stage1, stage2 = self._cached_stages(model, train_files, val_files, data_dir, settings, fine_tune_epochs)
        else:
            train_ds = data.make_dataset(
                train_files.paths, train_files.labels, image_size, self.batch_size, shuffle=True, seed=self.seed
            )
            val_ds = data.make_dataset(val_files.paths, val_files.labels, image_size, self.batch_size)
            stage1 = (model, train_ds, val_ds)
            stage2 = lambda: stage1  # noqa: E731 - the plain recipe fits the same model twice
        checkpoint_dir = None
        if out_dir is not None:
            checkpoint_dir = rundir.prepare_output_dir(out_dir, overwrite=True) / rundir.CHECKPOINT_DIR
            if not _resume:
                rundir.write_json(checkpoint_dir / "params.json", {
                    "params": self._json_params(), "data_dir": str(Path(data_dir).resolve()),
                    "val_dir": str(Path(val_dir).resolve()) if val_dir is not None else None,
                })
        result = train_two_stages(
            model,
            num_classes,
            stage1,
            stage2,
            epochs=epochs,
            learning_rate=self.learning_rate,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=settings["fine_tune_learning_rate"],
            fine_tune_at=settings["fine_tune_at"],
            patience=self.patience,
            steps_per_epoch=steps,
            class_weight=class_weights,
            checkpoint_dir=checkpoint_dir,
            resume=_resume,
            verbose=self.verbose,
        )

        self.model_ = model
        self.classes_ = list(files.classes)
        self.image_size_ = image_size
        self.history_ = result.history
        self.fine_tune_start_epoch_ = result.fine_tune_start_epoch
        self.train_files_, self.val_files_, self.test_files_ = train_files, val_files, test_files
        self.resolved_settings_ = {
            "image_size": image_size,
            "augmentation": dataclasses.asdict(settings["augmentation"]),
            "epochs": epochs,
            "fine_tune_epochs": fine_tune_epochs,
            "fine_tune_at": settings["fine_tune_at"],
            "fine_tune_learning_rate": settings["fine_tune_learning_rate"],
            "cached_views": self.cached_views_ if self.cache else None,
            "class_weight": class_weights,
            "weights_file": str(find_local_weights(spec, self.weights_dir) or "")
            if self.weights == "imagenet"
            else self.weights,
        }
        self.data_summary_ = {
            "data_dir": str(Path(data_dir).resolve()),
            "val_dir": str(Path(val_dir).resolve()) if val_dir is not None else None,
            "classes": self.classes_,
            "train_images": len(train_files),
            "val_images": len(val_files),
            "test_images": len(test_files),
            "test_dir": str(Path(test_dir).resolve()) if test_dir is not None else None,
            "train_class_counts": train_files.class_counts(),
            "val_class_counts": val_files.class_counts(),
            "skipped_files": len(self.skipped_files_),
            "fingerprint": self._data_fingerprint(data_dir),
        }
        self.results_ = {
            "run_dir": str(out_dir) if out_dir is not None else None,
            "classes": self.classes_,
            "train_images": len(train_files),
            "val_images": len(val_files),
            "val_accuracy_stage1": result.val_accuracy_stage1,
            "val_accuracy": result.val_accuracy,
            "val_loss": result.val_loss,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stage_seconds": result.stage_seconds,
            "interrupted": result.interrupted,
            "seconds": None,
        }
        if len(test_files):
            test = self.evaluate(split="test")
            self.results_.update(test_images=test["images"], test_accuracy=test["accuracy"])
        if out_dir is not None:
            self.save(out_dir, overwrite=True)
        self.results_["seconds"] = round(time.perf_counter() - started, 2)
        if out_dir is not None:  # the final figure includes saving time
            self._write_config(out_dir)
            if self.write_report:
                self.report(out_dir)  # report.html: metrics, mistakes, Grad-CAM, activations
            if not result.interrupted:  # an interrupted run keeps its checkpoint for resume()
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return self

    @classmethod
    def resume(cls, run_dir, verbose: int = 1) -> "ImageClassifier":
        """Continue a run that was killed or interrupted, from its last completed epoch.

        Settings and data folders are those the run started with (from its checkpoint).
        """
        checkpoint = Path(run_dir) / rundir.CHECKPOINT_DIR
        if not (checkpoint / "params.json").is_file() or not (checkpoint / STATE_FILE).is_file():
            raise RunDirError(
                f"'{run_dir}' holds no resumable checkpoint ({checkpoint / STATE_FILE} is missing): either it "
                "finished, or it stopped before its first epoch. Start it again without resume."
            )
        saved = json.loads((checkpoint / "params.json").read_text())
        classifier = cls(**{**saved["params"], "verbose": verbose})
        return classifier.fit(saved["data_dir"], val_dir=saved["val_dir"], out=run_dir, _resume=True)

    def _data_fingerprint(self, data_dir) -> str:
        """One hash of every used file's relative path, class and contents."""
        digest = hashlib.sha256()
        for files in (self.train_files_, self.val_files_, self.test_files_):
            for path, label in sorted(zip(files.paths, files.labels)):
                digest.update(f"{os.path.relpath(path, data_dir)}\0{label}\0{self.file_hashes_.get(path)}\n".encode())
        return digest.hexdigest()

    def _usable_files(self, data_dir, val_dir, test_dir):
        """Decode every file once (the `doctor` scan, cached by size and mtime) and keep
        the usable ones, so a bad file can never stop an epoch. Returns the usable files
        of data_dir, val_dir and test_dir (None for a folder not given)."""
        from transferkit import doctor

        cache_root = writable_or_none(Path(self.cache_dir) if self.cache_dir else Path.home() / ".cache" / "transferkit")
        folders = (data_dir, val_dir, test_dir)
        identity = hashlib.sha256("|".join(str(f and Path(f).resolve()) for f in folders).encode())
        with _progress(0, "Checking images", enabled=bool(self.verbose)) as advance:
            scan = doctor.scan_dataset(
                data_dir, val_dir=val_dir, test_dir=test_dir,
                cache_path=cache_root / "scans" / f"{identity.hexdigest()[:20]}.json" if cache_root else None,
                progress=lambda done, total: advance(done, total),
            )
        self.skipped_files_ = doctor.skipped_rows(scan)
        self.file_hashes_ = {record.path: record.sha256 for record in scan.images}
        # Exact duplicates always share a split; near-duplicate groups only while small,
        # since chained near duplicates (a burst, a render series) can swallow a class.
        self.duplicate_groups_ = [
            group.paths for group in scan.duplicates
            if group.kind == "exact" or len(group.paths) <= MAX_NEAR_DUPLICATE_GROUP
        ]
        if self.skipped_files_:
            logger.warning(
                "Skipping %d file(s) that cannot be used, e.g. %s (%s); `transferkit doctor` lists them all.",
                len(self.skipped_files_), self.skipped_files_[0]["path"], self.skipped_files_[0]["reason"],
            )
        usable = []
        for split, folder in zip(data.SPLITS, folders):
            if folder is None:
                usable.append(None)
                continue
            labelled = doctor.usable_labelled(scan, split)
            empty = [name for name, n in labelled.class_counts().items() if n == 0]
            if empty:
                raise DataError(
                    f"Class(es) {empty} have no usable image left in '{folder}' after skipping unreadable "
                    "files. Run `transferkit doctor` on the folder to see why each file was refused."
                )
            usable.append(labelled)
        return tuple(usable)

    def _cached_stages(self, model, train_files, val_files, data_dir, settings, fine_tune_epochs):
        """Stage inputs that train on cached backbone activations (see `features`)."""
        from transferkit import features
        from transferkit.model import backbone_of, clean_cut, fine_tune_index

        base = backbone_of(model)
        cut = clean_cut(base, fine_tune_index(base, settings["fine_tune_at"])) if fine_tune_epochs else None
        extractor = features.ViewExtractor(model, cut)
        key_settings = {
            "backbone": self.backbone, "weights": self._weights_identity(settings["spec"]),
            "image_size": settings["image_size"], "augmentation": dataclasses.asdict(settings["augmentation"]),
            "cut": base.operations[cut].name if cut is not None else None, "seed": self.seed,
        }
        cache_dir = writable_or_none(Path(self.cache_dir)) if self.cache_dir else None
        splits = []
        views = self.cached_views or auto_views(len(train_files))
        self.cached_views_ = views
        for split_files, views in ((train_files, views), (val_files, 1)):
            key = features.cache_key(split_files, data_dir, {**key_settings, "views": views}) if cache_dir else None
            total = len(split_files) * views
            label = f"Caching backbone activations ({views} view{'s' * (views > 1)})"
            with _progress(total, label, enabled=bool(self.verbose)) as advance:
                splits.append(features.cached_views(
                    extractor, split_files, settings["image_size"], views, self.batch_size, cache_dir, key, advance
                ))
        train, val = splits
        self.backbone_images_processed_ = extractor.images_processed

        def batches(kind):
            return (
                features.ViewBatches(getattr(train, kind), train, self.batch_size, shuffle=True, seed=self.seed),
                features.ViewBatches(getattr(val, kind), val, self.batch_size, shuffle=False, seed=self.seed),
            )

        stage1 = (features.head_model(model, extractor), *batches("pooled"))
        return stage1, lambda: (features.top_model(model, extractor), *batches("boundary"))

    def _weights_identity(self, spec) -> str:
        """What identifies the backbone weights in a cache key: the local file's digest, or the name."""
        from transferkit.backbones import resolve_weights

        resolved = resolve_weights(spec, self.weights, self.weights_dir)
        return data.file_digest(resolved) if resolved and os.path.isfile(resolved) else str(resolved)

    # -- inference ----------------------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise ConfigError("This ImageClassifier is not trained yet: call fit() or ImageClassifier.load().")

    def predict_proba(self, paths: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(n, n_classes) probabilities for image files, in the given order.

        Rows of files that cannot be decoded are NaN (and a warning names the file).
        """
        from transferkit.model import to_class_probabilities

        self._check_fitted()
        paths = [str(p) for p in paths]
        probabilities = np.full((len(paths), len(self.classes_)), np.nan)
        if not paths:
            return probabilities
        ds = data.make_dataset(paths, None, self.image_size_, batch_size or self.batch_size, drop_unreadable=False)
        rows = 0
        with _progress(len(paths), "Predicting", enabled=self.verbose and len(paths) > 64) as advance:
            for images, ok in ds:
                batch = to_class_probabilities(self.model_.predict_on_batch(images), len(self.classes_))
                ok = ok.numpy()
                probabilities[rows : rows + len(ok)][ok] = batch[ok]
                rows += len(ok)
                advance(len(ok))
        return probabilities

    def predict(self, inputs, top_k: int = 1, batch_size: int | None = None) -> list[Prediction]:
        """Label and confidence for each image; folders are searched recursively.

        Non-image and unreadable files are skipped with a warning.
        """
        self._check_fitted()
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}.")
        paths = expand_image_paths(inputs)
        probabilities = self.predict_proba(paths, batch_size)
        k = min(top_k, len(self.classes_))
        predictions = []
        for path, row in zip(paths, probabilities):
            if np.isnan(row).any():
                continue
            order = np.argsort(-row, kind="stable")[:k]
            ranked = tuple((self.classes_[i], float(row[i])) for i in order)
            predictions.append(Prediction(path, ranked[0][0], ranked[0][1], ranked))
        return predictions

    def evaluate(
        self, data_dir=None, batch_size: int | None = None, *, out=None, allow_class_subset: bool = False,
        run_dir=None, split: str = "validation",
    ) -> dict:
        """Accuracy, per-class precision/recall/F1, confusion matrix, ROC-AUC or top-k, log loss.

        On a labelled folder, or (`data_dir=None`) on the run's own validation (or
        `split="test"`) split, reproduced from split.csv after `load`. A folder whose classes differ from the
        model's is an error unless `allow_class_subset`. With `out`, metrics.json,
        predictions.csv, misclassified.csv, confusion_matrix.png and misclassified.png
        are written there. Unreadable images are skipped and listed under "unreadable".
        """
        from transferkit import evaluation

        self._check_fitted()
        _check_positive("batch_size", batch_size, kind=int, allow_none=True)
        if not isinstance(allow_class_subset, bool):
            raise ConfigError(f"allow_class_subset must be True or False, got {allow_class_subset!r}.")
        if data_dir is None:
            files, missing, extra = evaluation.validation_files(self, run_dir, split), [], []
            source = f"{split} split"
        else:
            files, missing, extra = evaluation.labelled_folder(data_dir, self.classes_, allow_class_subset)
            source = str(data_dir)
        result = evaluation.evaluate_files(self, files, batch_size, source, missing, extra)
        metrics = result.metrics()
        if out is not None:
            metrics["files"] = evaluation.write_evaluation(result, out)
        return metrics

    # -- persistence --------------------------------------------------------------

    def _json_params(self) -> dict:
        params = self.get_params()
        if isinstance(params["augment"], Augmentation):
            params["augment"] = dataclasses.asdict(params["augment"])
        params["hidden_units"] = list(params["hidden_units"])
        return params

    def _config(self) -> dict:
        return {
            "format": "transferkit-run",
            "format_version": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "params": self._json_params(),
            "resolved": self.resolved_settings_,
            "data": self.data_summary_,
            "results": self.results_,
            "versions": rundir.package_versions(),
        }

    def _write_config(self, run_dir) -> None:
        rundir.write_json(Path(run_dir) / rundir.CONFIG_FILE, self._config())

    def save(self, run_dir, overwrite: bool = False) -> Path:
        """Write model, classes, config, history, split and figures to `run_dir`."""
        from transferkit import reports

        self._check_fitted()
        run_dir = rundir.prepare_output_dir(run_dir, overwrite)
        with rundir.atomic_path(run_dir / rundir.MODEL_FILE) as tmp:
            self.model_.save(tmp)
        rundir.write_text(run_dir / rundir.CLASSES_FILE, "\n".join(self.classes_) + "\n")
        self.results_["run_dir"] = str(run_dir)
        self._write_config(run_dir)
        if self.history_:
            rundir.write_csv(run_dir / rundir.HISTORY_FILE, self.history_, _history_fields(self.history_))
            reports.plot_learning_curves(self.history_, self.fine_tune_start_epoch_, run_dir / "learning_curves.png")
        if getattr(self, "train_files_", None) is not None:
            split_rows = [
                {"path": path, "class": self.classes_[label], "split": split, "sha256": self.file_hashes_.get(path)}
                for split, files in zip(data.SPLITS, (self.train_files_, self.val_files_, self.test_files_))
                for path, label in zip(files.paths, files.labels)
            ]
            rundir.write_csv(run_dir / rundir.SPLIT_FILE, split_rows)
            rundir.write_csv(run_dir / rundir.SKIPPED_FILE, self.skipped_files_,
                             ["path", "class", "split", "code", "reason"])
            self._plot_samples(run_dir / "samples.png")
        return run_dir

    def _plot_samples(self, path) -> None:
        from transferkit import reports

        rng = np.random.default_rng(self.seed)
        count = min(SAMPLE_GRID_SIZE, len(self.train_files_))
        chosen = rng.choice(len(self.train_files_), size=count, replace=False)
        images, titles = [], []
        for i in sorted(chosen, key=lambda i: self.train_files_.labels[i]):
            try:
                images.append(data.load_image(self.train_files_.paths[i], self.image_size_))
            except Exception:  # noqa: BLE001 - an unreadable sample is simply not shown
                continue
            titles.append(self.classes_[self.train_files_.labels[i]])
        if images:
            reports.plot_image_grid(images, titles, path)

    @classmethod
    def load(cls, run_dir) -> "ImageClassifier":
        """Reload a run directory written by `fit(out=...)` or `save`."""
        import keras

        import transferkit.model  # noqa: F401 - registers the custom preprocessing layer

        config = rundir.read_config(run_dir)
        run_dir = Path(run_dir)
        params = dict(config["params"])
        params["verbose"] = 0
        classifier = cls(**params)
        classifier.model_ = keras.saving.load_model(run_dir / rundir.MODEL_FILE, compile=False)
        classifier.classes_ = rundir.read_classes(run_dir)
        classifier.image_size_ = int(config["resolved"]["image_size"])
        classifier.resolved_settings_ = config["resolved"]
        classifier.data_summary_ = config.get("data", {})
        classifier.results_ = config.get("results", {})
        history_path = run_dir / rundir.HISTORY_FILE
        classifier.history_ = _parse_history(rundir.read_csv(history_path)) if history_path.exists() else []
        classifier.fine_tune_start_epoch_ = next(
            (row["epoch"] for row in classifier.history_ if row["stage"] == 2), None
        )
        classifier.train_files_ = classifier.val_files_ = classifier.test_files_ = None
        classifier.run_dir_ = run_dir
        classifier.skipped_files_ = []
        return classifier

    # -- seeing what the model learned ---------------------------------------------

    def explain(self, inputs, class_name: str | None = None, out=None, layer: str | None = None) -> list:
        """Grad-CAM heatmaps at each image's own size, for the predicted class or `class_name`.

        Folders are searched recursively; unreadable images are skipped with a warning.
        With `out`, an overlay PNG per image is written there.
        """
        from transferkit.explain import explain_images

        self._check_fitted()
        return explain_images(self, expand_image_paths(inputs), class_name, out, layer)

    def activations(self, image, layers=None, out=None, max_channels: int = 32) -> list:
        """Feature maps of backbone layers (names or indices; default early/middle/late) for one image."""
        from transferkit.explain import activation_grids

        self._check_fitted()
        return activation_grids(self, image, layers, out, max_channels)

    def backbone_layers(self) -> list[dict]:
        """Index, name, type and output shape of every backbone layer."""
        from transferkit.explain import layer_table
        from transferkit.model import backbone_of

        self._check_fitted()
        return layer_table(backbone_of(self.model_))

    def preview(self, data_dir, out, draws: int = 8, image=None) -> dict:
        """Sample grid and augmentation preview of `data_dir` with this classifier's settings; no training."""
        from transferkit.report import preview_dataset

        spec = get_backbone(self.backbone)
        size = getattr(self, "image_size_", None) or self.image_size or spec.default_size
        check_image_size(spec, size)
        return preview_dataset(data_dir, out, self.augment, size, self.seed, draws, image)

    def report(self, run_dir=None) -> Path:
        """(Re)build report.html in the run directory; returns its path."""
        from transferkit.report import write_report

        self._check_fitted()
        return write_report(self, run_dir)

    # -- deployment ---------------------------------------------------------------

    def export(self, format: str, out=None, *, run_dir=None, calibration_images=100, parity_images=None,
               overwrite: bool = False):
        """Export as savedmodel, tflite, tflite-fp16, tflite-int8 or onnx, then check its top-1
        against this model (see `transferkit.export`). `out` defaults to RUN/export/ of the run
        this classifier was saved to or loaded from; returns an `ExportResult`."""
        from transferkit.export import export_classifier

        self._check_fitted()
        run_dir = run_dir or getattr(self, "run_dir_", None) or getattr(self, "results_", {}).get("run_dir")
        return export_classifier(self, format, out, run_dir=run_dir, calibration_images=calibration_images,
                                 parity_images=parity_images, overwrite=overwrite)


def writable_or_none(folder: Path) -> Path | None:
    """`folder` if files can be written there, else None (with a warning): caches then stay in memory."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return folder
    except OSError as error:
        logger.warning("Cache folder %s is not writable (%s); keeping caches in memory for this run.", folder, error)
        return None


def _history_fields(history: list[dict]) -> list[str]:
    fields = ["epoch", "stage"]
    for row in history:
        fields.extend(k for k in row if k not in fields)
    return fields


def _parse_history(rows: list[dict]) -> list[dict]:
    parsed = []
    for row in rows:
        parsed.append({k: (int(v) if k in ("epoch", "stage") else float(v)) for k, v in row.items() if v != ""})
    return parsed


def expand_image_paths(inputs) -> list[str]:
    """Files as given, folders searched recursively; non-image files warned about and skipped."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(data.find_images(item))
        elif item.is_file():
            if data.is_image_file(item):
                paths.append(str(item))
            else:
                logger.warning("Skipping %s: not an image file (%s).", item, ", ".join(data.IMAGE_EXTENSIONS))
        else:
            raise DataError(f"'{item}' does not exist. Pass image files or folders of images.")
    return paths
