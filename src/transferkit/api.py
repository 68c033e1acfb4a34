"""`ImageClassifier`: the Python API that the CLI is a thin layer over.

scikit-learn's conventions: the constructor only stores settings (declared once, in
`transferkit.settings`), `fit` learns (attributes ending in `_`), the rest use the learned
model. What `fit` leaves behind is a `TrainedModel` (`trained_`), which everything below takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data
from transferkit.data import sources
from transferkit.deploy.predictor import Prediction, rank, scores_of_trained
from transferkit.run_logging import log_figures, run_loggers
from transferkit.errors import ConfigError, RunDirError
from transferkit.runs import folder as rundir
from transferkit.runs.lock import run_folder_lock
from transferkit.runs.trained import TrainedModel
from transferkit.settings import Settings, check_positive_int
from transferkit.training import pipeline, update
from transferkit.training.callbacks import STATE_FILE

__all__ = ["ImageClassifier", "Prediction"]

_DEFAULTS = Settings()
_FITTED = {  # fitted attribute -> where it lives on the TrainedModel
    "model_": "model", "classes_": "classes", "image_size_": "image_size", "history_": "history",
    "fine_tune_start_epoch_": "fine_tune_start_epoch", "resolved_settings_": "resolved",
    "data_summary_": "data_summary", "results_": "results", "run_dir_": "run_dir",
}
_SPLITS = {"train_files_": data.TRAIN, "val_files_": data.VALIDATION, "test_files_": data.TEST}  # None after load


class ImageClassifier:
    """Transfer-learned image classifier for a folder of class sub-folders.

    Stage 1 fits a new head on a frozen ImageNet backbone (a cross-validated logistic regression by
    default); stage 2 (`fine_tune_epochs`) unfreezes the top from `fine_tune_at` and fine-tunes it.
    Every keyword is a field of `transferkit.settings.Settings` (see there for
    defaults, ranges and meaning); `None` settings are filled in at fit time.
    """

    def __init__(self, backbone: str = _DEFAULTS.backbone, **settings):
        unknown = sorted(set(settings) - set(Settings.names()))
        if unknown:
            raise TypeError(f"ImageClassifier got unknown setting(s) {unknown}; known: {', '.join(Settings.names())}.")
        for name in Settings.names():
            setattr(self, name, settings.get(name, getattr(_DEFAULTS, name)))
        self.backbone = backbone

    def __getattr__(self, name):
        if name in _FITTED or name in _SPLITS:  # only reached when not set directly: the fitted model's
            trained = self.__dict__.get("trained_")
            if trained is None:
                raise AttributeError(f"{name} is set by fit() or ImageClassifier.load(); this classifier is not trained.")
            if name in _SPLITS:
                return (trained.splits or {}).get(_SPLITS[name])
            return getattr(trained, _FITTED[name])
        raise AttributeError(f"'ImageClassifier' object has no attribute {name!r}")

    # -- settings -----------------------------------------------------------------

    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in Settings.names()}

    def settings(self) -> Settings:
        return Settings(**self.get_params())

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.get_params().items() if v != getattr(_DEFAULTS, k)}
        return f"ImageClassifier({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- training -----------------------------------------------------------------

    def fit(self, data_dir, *, val_dir=None, out=None, overwrite: bool = False, tfds_data_dir=None,
            mlflow_uri: str | None = None, _resume: bool = False) -> "ImageClassifier":
        """Train on `data_dir` (one sub-folder per class); save the run to `out` if given.

        Validation comes from `val_dir` when given, otherwise a stratified `val_split` of
        `data_dir` drawn with `seed`. Every check runs before training. With `out`, the
        folder is locked against a second writer and every epoch is checkpointed in
        `out/checkpoint/`, so a killed run continues with `ImageClassifier.resume(out)`.
        `data_dir` may also be a source spec (`tfds:NAME[:SPLIT]`, an archive URL; see
        `transferkit.data.sources`), materialised once as local class folders. A run folder
        gets `tensorboard/` event files; `mlflow_uri` also tracks the run in MLflow.
        """
        from transferkit.analysis.calibration import write_reliability
        from transferkit.analysis.ood import fit_open_set

        started = time.perf_counter()
        resolved, parent = update.resolve(self.settings())
        update.check_output(parent, out)
        out = pipeline.distribute.worker_out_dir(out, self.strategy)  # chief: out; other workers: a temp folder
        source = str(data_dir)
        data_dir = self._local(data_dir, tfds_data_dir)
        pipeline.check_folders(data_dir, val_dir)
        out_dir = rundir.check_output_dir(out, overwrite or _resume) if out is not None else None
        purpose = "transferkit train --resume" if _resume else "transferkit train"
        with run_folder_lock(out_dir, purpose) if out_dir is not None else contextlib.nullcontext():
            if out_dir is not None:
                rundir.check_output_dir(out_dir, overwrite or _resume)  # again, now that no one else writes
            board, tracker = run_loggers(self.settings(), out_dir, mlflow_uri, source)
            loggers = tuple(x for x in (board, tracker) if x is not None)
            try:
                trained, plan = pipeline.train(resolved, data_dir, val_dir, out_dir, _resume, loggers, parent, started)
            except BaseException:
                if tracker is not None:
                    tracker.finish(None, {}, status="FAILED")
                raise
            finally:
                if board is not None:
                    board.writer.flush()
            trained.data_summary["source"] = source
            self.trained_ = trained
            self.cached_views_, self.backbone_images_processed_ = plan.cached_views, plan.backbone_images
            # temperature and unknown detector, from the run's own split (see `analysis.ood`)
            held_out = None if trained.results["interrupted"] else fit_open_set(trained, batch_size=self.batch_size,
                                                                                outputs=plan.plain_outputs())
            if len(trained.splits[data.TEST]):
                test = self.evaluate(split="test")
                trained.results.update(test_images=test["images"], test_accuracy=test["accuracy"])
            if out_dir is not None:
                self.save(out_dir, overwrite=True)
                if held_out is not None:
                    write_reliability(trained, held_out, out_dir)
            trained.results["seconds"] = round(time.perf_counter() - started, 2)
            if out_dir is not None:  # the final figure includes saving time
                trained.write_config(out_dir)
                if self.write_report and (plan.budget is None or plan.budget.write_report):
                    self.report(out_dir)
                if not trained.results["interrupted"]:  # an interrupted run keeps its checkpoint for resume()
                    shutil.rmtree(out_dir / rundir.CHECKPOINT_DIR, ignore_errors=True)
            if board is not None and (plan.budget is None or plan.budget.write_report):
                log_figures(self, board, out_dir)
            if tracker is not None:
                tracker.finish(out_dir, trained.results)
        return self

    def _local(self, data_dir, tfds_data_dir=None) -> Path:
        """The local folder of a DATA_DIR that may be a source spec (a plain path comes back as is)."""
        return sources.resolve_source(data_dir, tfds_data_dir=tfds_data_dir, cache_dir=self.cache_dir)

    @classmethod
    def resume(cls, run_dir, verbose: int = 1) -> "ImageClassifier":
        """Continue a killed or interrupted run from its last completed epoch, with the settings and data
        folders it started with (from its checkpoint)."""
        checkpoint = Path(run_dir) / rundir.CHECKPOINT_DIR
        if not (checkpoint / pipeline.PARAMS_FILE).is_file() or not (checkpoint / STATE_FILE).is_file():
            raise RunDirError(
                f"'{run_dir}' holds no resumable checkpoint ({checkpoint / STATE_FILE} is missing): either it "
                "finished, or it stopped before its first epoch. Start it again without resume."
            )
        saved = json.loads((checkpoint / pipeline.PARAMS_FILE).read_text())
        params = dataclasses.asdict(Settings.from_json(saved["params"]))
        classifier = cls(**{**params, "verbose": verbose})
        return classifier.fit(saved["data_dir"], val_dir=saved["val_dir"], out=run_dir, _resume=True)

    # -- inference ----------------------------------------------------------------

    def _trained(self) -> TrainedModel:
        if "trained_" not in self.__dict__:
            raise ConfigError("This ImageClassifier is not trained yet: call fit() or ImageClassifier.load().")
        return self.trained_

    def predict_proba(self, paths: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(n, n_classes) probabilities for image files, in order; rows of undecodable files are NaN (with a warning)."""
        check_positive_int("batch_size", batch_size)
        return self._trained().predict_proba(paths, batch_size or self.batch_size, verbose=bool(self.verbose))

    def predict(self, inputs, top_k: int = 1, batch_size: int | None = None, *, reject: bool = True,
                accept_rate: float | None = None, threshold: float | None = None) -> list[Prediction]:
        """Label and confidence for each image (folders searched recursively, unreadable files skipped with a
        warning), and, with `reject` and an unknown detector, `unknown`/`score` as `Predictor.predict` gives them."""
        trained = self._trained()
        check_positive_int("top_k", top_k, allow_none=False)
        paths = data.expand_image_paths(inputs)
        if not reject or trained.ood is None:
            return rank(paths, self.predict_proba(paths, batch_size), trained.classes, top_k)
        probabilities, scores, limit = scores_of_trained(trained, paths, batch_size or self.batch_size,
                                                         accept_rate=accept_rate, threshold=threshold)
        return rank(paths, probabilities, trained.classes, top_k, scores, limit)

    def evaluate(self, data_dir=None, batch_size: int | None = None, *, out=None, allow_class_subset: bool = False,
                 run_dir=None, split: str = "validation", tfds_data_dir=None) -> dict:
        """Accuracy, per-class precision/recall/F1, confusion matrix, ROC-AUC or top-k, log loss.

        On a labelled folder, or (`data_dir=None`) on the run's own validation (or
        `split="test"`) split, reproduced from split.csv after `load`. A folder whose classes differ from the
        model's is an error unless `allow_class_subset`. With `out`, metrics.json,
        predictions.csv, misclassified.csv, confusion_matrix.png and misclassified.png
        are written there. Unreadable images are skipped and listed under "unreadable".
        """
        from transferkit.analysis import evaluation
        from transferkit.analysis.calibration import evaluation_calibration

        trained = self._trained()
        check_positive_int("batch_size", batch_size)
        if not isinstance(allow_class_subset, bool):
            raise ConfigError(f"allow_class_subset must be True or False, got {allow_class_subset!r}.")
        if data_dir is None:
            files, missing, extra, source = trained.split(split, run_dir), [], [], f"{split} split"
        else:
            source = str(data_dir)
            files, missing, extra = evaluation.labelled_folder(self._local(data_dir, tfds_data_dir), trained.classes,
                                                               allow_class_subset)
        result = evaluation.evaluate_files(trained, files, batch_size or self.batch_size, source, missing, extra)
        metrics = result.metrics()
        metrics["calibration"] = evaluation_calibration(result.probabilities, result.labels, trained.calibration)
        if out is not None:
            metrics["files"] = evaluation.write_evaluation(result, out)
        return metrics

    # -- persistence --------------------------------------------------------------

    def save(self, run_dir, overwrite: bool = False) -> Path:
        """Write model, classes, config, history, split and figures to `run_dir`."""
        from transferkit.analysis import figures
        from transferkit.analysis.preview import plot_samples

        trained = self._trained()
        run_dir = trained.save(run_dir, overwrite)
        if trained.history:
            figures.plot_learning_curves(trained.history, trained.fine_tune_start_epoch,
                                         run_dir / "learning_curves.png")
        if trained.splits is not None:
            plot_samples(trained.split(data.TRAIN), run_dir / "samples.png", trained.image_size, seed=trained.seed)
        return run_dir

    @classmethod
    def load(cls, run_dir) -> "ImageClassifier":
        """Reload a run directory written by `fit(out=...)` or `save`."""
        trained = TrainedModel.load(run_dir)
        params = dataclasses.asdict(Settings.from_json(trained.params))
        classifier = cls(**{**params, "verbose": 0})
        classifier.trained_ = trained
        return classifier

    # -- seeing what the model learned ---------------------------------------------

    def explain(self, inputs, class_name: str | None = None, out=None, layer: str | None = None) -> list:
        """Grad-CAM heatmaps at each image's own size, for the predicted class or `class_name`.

        Folders are searched recursively; unreadable images are skipped with a warning.
        With `out`, an overlay PNG per image is written there.
        """
        from transferkit.analysis.explain import explain_images

        return explain_images(self._trained(), data.expand_image_paths(inputs), class_name, out, layer)

    def activations(self, image, layers=None, out=None, max_channels: int = 32) -> list:
        """Feature maps of backbone layers (names or indices; default early/middle/late) for one image."""
        from transferkit.analysis.explain import activation_grids

        return activation_grids(self._trained(), image, layers, out, max_channels)

    def backbone_layers(self) -> list[dict]:
        """Index, name, type and output shape of every backbone layer."""
        from transferkit.analysis.explain import layer_table
        from transferkit.modeling.classifier import backbone_of

        return layer_table(backbone_of(self._trained().model))

    def preview(self, data_dir, out, draws: int = 8, image=None, tfds_data_dir=None) -> dict:
        """Sample grid and augmentation preview of `data_dir` with this classifier's settings; no training."""
        from transferkit.analysis.preview import preview_dataset

        trained = self.__dict__.get("trained_")
        size = trained.image_size if trained is not None else self.settings().resolve().image_size
        return preview_dataset(self._local(data_dir, tfds_data_dir), out, self.augment, size, self.seed, draws, image)

    def report(self, run_dir=None) -> Path:
        """(Re)build report.html in the run directory; returns its path."""
        from transferkit.analysis.report import write_report

        return write_report(self._trained(), run_dir)

    # -- deployment ---------------------------------------------------------------

    def export(self, format: str, out=None, *, run_dir=None, calibration_images=100, parity_images=None,
               overwrite: bool = False):
        """Export as savedmodel, tflite, tflite-fp16, tflite-int8 or onnx, then check its top-1
        against this model (see `transferkit.deploy.export`). `out` defaults to RUN/export/ of the run
        this classifier was saved to or loaded from; returns an `ExportResult`."""
        from transferkit.deploy.export import export_trained

        return export_trained(self._trained(), format, out, run_dir=run_dir, calibration_images=calibration_images,
                              parity_images=parity_images, overwrite=overwrite)


# `help(ImageClassifier)` and `inspect.signature` show every setting with its default.
ImageClassifier.__init__.__signature__ = Settings.signature(positional="backbone")
