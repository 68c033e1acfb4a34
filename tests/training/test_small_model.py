"""The whole pipeline on a small model (random weights, 32 px, a synthetic set): no shared data needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SMALL, make_images
from transferkit import ImageClassifier
from transferkit.deploy.predictor import Predictor
from transferkit.runs import folder as rundir
from transferkit.runs.trained import TrainedModel

TRAIN_CLI = [sys.executable, "-m", "transferkit", "train"]
SMALL_CLI = ["--weights", "none", "--image-size", "32", "--patience", "0", "--no-report", "--cached-views", "2"]


def test_run_folder_is_complete_and_reloads_to_the_same_predictions(small_run, synthetic_dir):
    classifier, run_dir = small_run
    for name in ("model.keras", "classes.txt", "config.json", "history.csv", "split.csv", "skipped.csv",
                 "learning_curves.png", "samples.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / rundir.CHECKPOINT_DIR).exists()
    stages = [row["stage"] for row in classifier.history_]
    assert stages == [1] * SMALL["epochs"] + [2] * SMALL["fine_tune_epochs"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["params"]["image_size"] == 32 and config["resolved"]["cached_views"] == 2
    paths = list(classifier.val_files_.paths)
    loaded = TrainedModel.load(run_dir)
    assert loaded.classes == ["circle", "square"] and loaded.fine_tune_start_epoch == SMALL["epochs"] + 1
    np.testing.assert_allclose(loaded.predict_proba(paths), classifier.predict_proba(paths), atol=1e-5)
    assert loaded.split("validation").paths == tuple(paths)


def test_plain_recipe_trains_the_same_stages(synthetic_dir, tmp_path):
    classifier = ImageClassifier(**{**SMALL, "cache": False}).fit(synthetic_dir, out=tmp_path / "run")
    assert [row["stage"] for row in classifier.history_] == [1, 1, 2]
    assert classifier.resolved_settings_["cached_views"] is None


def test_export_and_predictor_agree_with_keras(small_run):
    classifier, run_dir = small_run
    result = classifier.export("tflite", run_dir=run_dir)
    assert result.parity["passed"] and result.path == run_dir / "export" / "model.tflite"
    predictor = Predictor(result.path)
    paths = list(classifier.val_files_.paths)
    np.testing.assert_allclose(predictor.predict_proba(paths), classifier.predict_proba(paths), atol=1e-3)
    assert [p.label for p in Predictor(run_dir, runtime="keras").predict(paths)] == \
        [p.label for p in classifier.predict(paths)]


def _wait_for_epoch(run_dir, epoch, process, limit=120):
    state = run_dir / rundir.CHECKPOINT_DIR / "state.json"
    deadline = time.time() + limit
    while time.time() < deadline and process.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= epoch:
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {limit} s")


def test_second_train_into_the_same_folder_is_refused_and_kill_9_resumes(synthetic_dir, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([*TRAIN_CLI, str(synthetic_dir), "--out", str(run_dir), "--epochs", "40",
                              "--fine-tune-epochs", "2", *SMALL_CLI], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_epoch(run_dir, 1, first)
        second = subprocess.run([*TRAIN_CLI, str(synthetic_dir), "--out", str(run_dir), "--overwrite", *SMALL_CLI],
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"is in use by process {first.pid}" in " ".join(second.stderr.split())
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    done = json.loads((run_dir / rundir.CHECKPOINT_DIR / "state.json").read_text())["epoch"]
    resumed = ImageClassifier.resume(run_dir, verbose=0)
    epochs = [row["epoch"] for row in resumed.history_]
    assert epochs[:done] == list(range(1, done + 1)) and epochs == list(range(1, len(epochs) + 1))
    assert [row["stage"] for row in resumed.history_][-2:] == [2, 2]
    assert (run_dir / "model.keras").is_file() and not (run_dir / rundir.CHECKPOINT_DIR).exists()


def test_nothing_is_written_when_the_data_is_bad(tmp_path):
    make_images(tmp_path / "one", classes=("only",), per_class=3)
    with pytest.raises(Exception, match=r"Found 1 class folder"):
        ImageClassifier(**SMALL).fit(tmp_path / "one", out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_split_csv_records_each_files_group(synthetic_dir, tmp_path):
    classifier = ImageClassifier(**{**SMALL, "group_by": r"-\d\d(\d)"}).fit(synthetic_dir, out=tmp_path / "run")
    rows = rundir.read_csv(tmp_path / "run" / rundir.SPLIT_FILE)
    assert {r["group"] for r in rows} == set("0123456789")
    assert all(r["group"] == r["path"][-5] for r in rows)  # circle-004.png: group 4
    sides = {}
    for row in rows:
        sides.setdefault(row["group"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values()), sides
    assert classifier.results_["val_images"] > 0
