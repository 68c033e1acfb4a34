"""`train --strategy multi-worker`: two workers on loopback train exactly like one."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import RPS, copy_spread, requires_shared
from transferkit.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tf_config_and_settings_are_checked(monkeypatch):
    from transferkit import ImageClassifier
    from transferkit.training import distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG, which is not set"):
        distribute.worker_task()
    for config, message in (("{not json", "not a cluster spec"),
                            ({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}, "list of 'host:port'"),
                            ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}, "index"),
                            ({"cluster": {"worker": ["a:1"], "chief": ["b:1"]}, "task": {"type": "worker", "index": 0}},
                             "not 'chief'")):
        monkeypatch.setenv("TF_CONFIG", config if isinstance(config, str) else json.dumps(config))
        with pytest.raises(ConfigError, match=message):
            distribute.worker_task()
    with pytest.raises(ConfigError, match="add --no-cache"):
        ImageClassifier(strategy="multi-worker").settings().validate()
    with pytest.raises(ConfigError, match="strategy must be"):
        ImageClassifier(strategy="parameter-server", cache=False).settings().validate()


def history(run_dir) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


SETTINGS = dict(cache=False, image_size=32, epochs=1, fine_tune_epochs=1, batch_size=8, augment="none",
                dropout=0.0, patience=None, write_report=False, verbose=0)
CLI = ["--no-cache", "--image-size", "32", "--epochs", "1", "--fine-tune-epochs", "1", "--batch-size", "8",
       "--augment", "none", "--dropout", "0", "--patience", "0", "--no-report", "--json"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """(data folder, run folder, classifier) of one plain single-worker run to compare with."""
    from transferkit import ImageClassifier

    folder = tmp_path_factory.mktemp("multiworker")
    data_dir = copy_spread(RPS, folder / "rps", per_class=8, stride=100)
    return data_dir, folder / "single", ImageClassifier(**SETTINGS).fit(data_dir, out=folder / "single")


def assert_trains_like(single_dir, run_dir) -> None:
    """Every epoch's losses and accuracies as the single worker's. An uneven last batch (5 images:
    3 + 2) is averaged per worker, hence 1 % rather than float rounding."""
    one, two = history(single_dir), history(run_dir)
    assert [r["stage"] for r in two] == [r["stage"] for r in one] == [1, 2]
    for a, b in zip(one, two):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-2, abs=1e-3), (key, a, b)


@requires_shared
def test_two_workers_on_loopback_train_like_one(single_run, tmp_path):
    """Without augmentation and dropout, every step of two workers (half the batch each, gradients
    all-reduced) equals one worker's step up to rounding: same losses, same accuracy. A wrong
    setup (each worker on all the data, gradients summed, workers out of step) is far off."""
    from transferkit import ImageClassifier

    data_dir, single_dir, single = single_run
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    command = [sys.executable, "-m", "transferkit", "train", str(data_dir), "--out", str(tmp_path / "multi"),
               "--strategy", "multi-worker", *CLI]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
        **os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i in range(2)]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    chief, other = results
    assert chief["run_dir"] == str(tmp_path / "multi") and other["run_dir"] != chief["run_dir"]
    assert not os.path.exists(os.path.dirname(other["run_dir"])), "the other worker's temporary folder is left"
    assert chief["val_accuracy"] == pytest.approx(single.results_["val_accuracy"])
    assert other["val_loss"] == pytest.approx(chief["val_loss"], rel=1e-6)
    assert_trains_like(single_dir, tmp_path / "multi")
    reloaded = ImageClassifier.load(tmp_path / "multi")
    assert reloaded.predict([next(data_dir.rglob("*.png"))])[0].label in reloaded.classes_


@requires_shared
def test_ray_train_launches_the_workers(single_run, tmp_path):
    """`train --engine ray --workers 2`: Ray Train's TensorflowTrainer starts both on a local Ray."""
    pytest.importorskip("ray.train.tensorflow")
    data_dir, single_dir, _ = single_run
    result = subprocess.run([sys.executable, "-m", "transferkit", "train", str(data_dir), "--out", str(tmp_path / "ray"),
                             "--engine", "ray", "--workers", "2", *CLI], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["run_dir"] == str(tmp_path / "ray")
    assert_trains_like(single_dir, tmp_path / "ray")
