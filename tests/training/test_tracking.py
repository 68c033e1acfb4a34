"""TensorBoard event files and MLflow tracking of a real (tiny) training run."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from transferkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tracked_run(tiny_dir, tmp_path_factory):
    """One tiny run through the CLI, with --mlflow into a local file store."""
    root = tmp_path_factory.mktemp("tracked")
    store = f"sqlite:///{root / 'mlflow.db'}"
    result = runner.invoke(app, ["train", str(tiny_dir), "--out", str(root / "run"), "--fine-tune-epochs", "2",
                                 "--epochs", "2", "--patience", "0", "--no-report", "--json", "--mlflow-uri", store])
    assert result.exit_code == 0, result.output
    return root / "run", store, json.loads(result.output.strip().splitlines()[-1])


def test_tensorboard_event_files_hold_both_stages(tracked_run):
    from tensorboard.backend.event_processing import event_accumulator

    run_dir, _, results = tracked_run
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["tensors"]) | set(tags["scalars"])  # tf.summary v2 writes scalars as tensors
    assert {"loss/train", "loss/validation", "accuracy/validation", "learning_rate", "fine_tuning/started"} <= scalars
    steps = [e.step for e in acc.Tensors("loss/validation")]
    assert steps == list(range(1, results["epochs_run"] + 1)) and len(steps) == 4  # both stages, one numbering
    assert [e.step for e in acc.Tensors("fine_tuning/started")] == [3]
    assert {"samples", "learning_curves", "confusion_matrix/validation"} <= set(tags["tensors"]) | set(tags["images"])


def test_mlflow_run_has_params_metrics_and_artifacts(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, store, results = tracked_run
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("transferkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["backbone"] == "mobilenet_v2" and run.data.params["fine_tune_epochs"] == "2"
    assert run.data.params["data_source"].endswith("tiny")
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(results["val_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "tensorboard"} <= artifacts


def test_unusable_mlflow_store_fails_before_training(tiny_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["train", str(tiny_dir), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--fine-tune-epochs", "0", "--no-report", "--mlflow-uri", f"sqlite:///{blocker / 'x.db'}"])
    assert result.exit_code == 2 and "cannot be used" in result.output
    assert not (tmp_path / "run" / "model.keras").exists()
