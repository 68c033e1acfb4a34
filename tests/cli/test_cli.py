"""The command line: a thin layer, so these check wiring, output formats and exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from transferkit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands_and_is_fast():
    result = subprocess.run(
        [sys.executable, "-m", "transferkit", "--help"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0
    for command in ("train", "predict", "backbones", "datasets"):
        assert command in result.stdout
    train_help = invoke("train", "--help")
    assert train_help.exit_code == 0
    for option in ("--val-split", "--fine-tune-at", "--weights-dir", "--augment", "--overwrite", "--json"):
        assert option in train_help.output


def test_backbones_lists_the_registry():
    result = invoke("backbones")
    assert result.exit_code == 0
    for name in ("mobilenet_v2", "mobilenet", "resnet50", "inception_v3", "efficientnet_b0",
                 "mobilenet_v3_small", "mobilenet_v3_large"):
        assert name in result.output


def test_train_json_on_a_tiny_set(tiny_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", tiny_dir, "--out", out, "--image-size", 64, "--epochs", 1,
                    "--fine-tune-epochs", 1, "--no-report", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"run_dir", "classes", "train_images", "val_images", "val_accuracy_stage1", "val_accuracy",
            "seconds"} <= set(summary)
    assert summary["train_images"] + summary["val_images"] == 24
    assert summary["classes"] == ["alpaca", "not alpaca"]
    assert (out / "model.keras").is_file()
    # A second run into the same folder is refused without --overwrite.
    again = invoke("train", tiny_dir, "--out", out, "--epochs", 1, "--json")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_predict_table_json_and_csv(alpaca_run):
    classifier, run_dir, _ = alpaca_run
    images = list(classifier.val_files_.paths[:5])
    table = invoke("predict", run_dir, *images)
    assert table.exit_code == 0, table.output
    assert "5 image(s) classified" in table.output

    as_json = json.loads(invoke("predict", run_dir, *images, "--json").stdout)
    assert [row["path"] for row in as_json] == images
    assert all(row["label"] in classifier.classes_ for row in as_json)

    rows = list(csv.DictReader(io.StringIO(invoke("predict", run_dir, *images, "--csv").stdout)))
    assert [row["path"] for row in rows] == images
    assert [row["label"] for row in rows] == [row["label"] for row in as_json]


def test_errors_exit_2_with_the_message(tmp_path):
    result = invoke("train", tmp_path / "missing")
    assert result.exit_code == 2
    assert "does not exist" in result.output
    result = invoke("predict", tmp_path, tmp_path)
    assert result.exit_code == 2 and "is not a transferkit run" in result.output
    result = invoke("train", tmp_path, "--backbone", "vgg99")
    assert result.exit_code == 2 and "Known backbones" in result.output


def test_ctrl_c_stops_cleanly_and_keeps_the_best_model(tiny_dir, tmp_path):
    import signal

    out = tmp_path / "run"
    command = [sys.executable, "-m", "transferkit", "train", str(tiny_dir), "--out", str(out), "--image-size", "64",
               "--no-cache", "--epochs", "200", "--patience", "0", "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if "Epoch 4/" in line:
            process.send_signal(signal.SIGINT)
            break
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-2000:]
    assert "Interrupted: keeping the best weights" in output
    config = json.loads((out / "config.json").read_text())
    assert config["results"]["interrupted"] is True
    assert 3 <= config["results"]["epochs_run"] < 200
    assert (out / "model.keras").is_file()


def test_a_run_killed_mid_fine_tuning_resumes_and_finishes(tiny_dir, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    state = out / "checkpoint" / "state.json"
    command = [sys.executable, "-m", "transferkit", "train", str(tiny_dir), "--out", str(out), "--image-size", "64",
               "--no-cache", "--epochs", "2", "--fine-tune-epochs", "10", "--patience", "0", "--no-report", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            progress = json.loads(state.read_text())
        except (OSError, ValueError):
            progress = {}
        if progress.get("stage") == 2 and progress["epoch"] >= progress["fine_tune_start_epoch"] + 1:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert 4 <= killed_at < 12 and not (out / "model.keras").exists()

    result = invoke("train", tiny_dir, "--out", out, "--resume", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["epochs_run"] == 12
    history = (out / "history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == list(range(1, 13))
    assert (out / "model.keras").is_file() and not (out / "checkpoint").exists()
