"""MLflow tracking of a training run: params at the start, per-epoch metrics, the run folder at the end.

Through an explicit `MlflowClient` (no global active run), so a library user's own
MLflow state is left alone. `mlflow` is an optional extra: `pip install 'transferkit[mlflow]'`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras

from transferkit.errors import ConfigError

EXPERIMENT = "transferkit"


def default_uri() -> str:
    """A local SQLite store, ./mlflow.db (MLflow 3 keeps plain `file:` stores read-only unless
    MLFLOW_ALLOW_FILE_STORE=true); `mlflow ui --backend-store-uri sqlite:///mlflow.db` opens it."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go next to the database file, not into the current folder."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


class MlflowLogger(keras.callbacks.Callback):
    """Per-epoch metrics of both stages, stepped by the run's epoch number."""

    def __init__(self, uri: str, run_name: str | None, params: dict, tags: dict | None = None):
        super().__init__()
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise ConfigError(f"--mlflow needs mlflow: pip install 'transferkit[mlflow]' ({error}).") from None
        self.stage = 1
        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                EXPERIMENT, artifact_location=_artifact_location(uri))
        except Exception as error:  # an unreachable server, a store that cannot be written
            raise ConfigError(f"MLflow tracking URI '{uri}' cannot be used ({type(error).__name__}: {error}). "
                              "Pass a local store, e.g. --mlflow-uri sqlite:///mlflow.db (a file: store needs MLFLOW_ALLOW_FILE_STORE=true in MLflow 3).") from None
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def on_epoch_end(self, epoch, logs=None):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, epoch + 1) for key, value in (logs or {}).items()]
        metrics.append(Metric("stage", float(self.stage), now, epoch + 1))
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, run_dir: Path | None, results: dict, status: str = "FINISHED") -> None:
        """Final metrics and the run folder's files as artifacts; ends the MLflow run."""
        for key in ("val_accuracy", "val_loss", "test_accuracy", "seconds", "val_accuracy_stage1"):
            if isinstance(results.get(key), (int, float)):
                self.client.log_metric(self.run_id, f"final_{key}", float(results[key]))
        if run_dir is not None and os.path.isdir(run_dir):
            self.client.log_artifacts(self.run_id, str(run_dir))
            self.client.set_tag(self.run_id, "transferkit.run_dir", str(Path(run_dir).resolve()))
        self.client.set_terminated(self.run_id, status)
