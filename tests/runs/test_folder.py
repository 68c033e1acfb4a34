"""Run-folder IO: atomic writes, the checks on --out and on a run folder, split.csv read back."""

from __future__ import annotations

import json

import pytest

from transferkit.data import LabelledFiles
from transferkit.errors import ConfigError, RunDirError
from transferkit.runs import folder as rundir


def fake_run(path, classes=("cat", "dog"), rows=()):
    path.mkdir(parents=True)
    (path / rundir.MODEL_FILE).write_bytes(b"")
    rundir.write_text(path / rundir.CLASSES_FILE, "\n".join(classes) + "\n")
    rundir.write_json(path / rundir.CONFIG_FILE, {"format": "transferkit-run", "data": {"data_dir": str(path.parent)}})
    if rows:
        rundir.write_csv(path / rundir.SPLIT_FILE, rows)
    return path


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "file.txt"
    rundir.write_text(target, "good")
    with pytest.raises(RuntimeError):
        with rundir.atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_csv_and_json_round_trip(tmp_path):
    rows = [{"epoch": 1, "stage": 1, "loss": 0.5}, {"epoch": 2, "stage": 2, "loss": 0.25, "lr": 1e-4}]
    rundir.write_csv(tmp_path / "h.csv", rows, rundir.history_fields(rows))
    assert rundir.parse_history(rundir.read_csv(tmp_path / "h.csv")) == rows
    rundir.write_json(tmp_path / "c.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2]}


def test_output_dir_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        rundir.check_output_dir(tmp_path / "file", overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RunDirError, match=r"is not empty.*--overwrite"):
        rundir.check_output_dir(tmp_path / "full", overwrite=False)
    assert rundir.next_free_dir(tmp_path / "full") == tmp_path / "full-2"
    assert not (tmp_path / "new").exists() and rundir.check_output_dir(tmp_path / "new", False) == tmp_path / "new"


def test_run_dir_checks(tmp_path):
    with pytest.raises(RunDirError, match="does not exist. Pass the --out folder"):
        rundir.read_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="lacks model.keras, classes.txt, config.json"):
        rundir.read_config(tmp_path / "empty")
    run = fake_run(tmp_path / "run")
    (run / rundir.CONFIG_FILE).write_text("{not json")
    with pytest.raises(RunDirError, match="is not valid JSON"):
        rundir.read_config(run)


def test_split_is_read_back_in_order_and_reanchored(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "dog").mkdir(parents=True)
    (data_dir / "dog" / "b.jpg").write_bytes(b"x")
    run = fake_run(tmp_path / "run", rows=[
        {"path": "elsewhere/dog/b.jpg", "class": "dog", "split": "validation"},  # relative: re-anchored
        {"path": "/abs/cat/a.jpg", "class": "cat", "split": "validation"},
        {"path": "/abs/cat/c.jpg", "class": "cat", "split": "train"},
    ])
    rundir.write_json(run / rundir.CONFIG_FILE, {"format": "transferkit-run", "data": {"data_dir": str(data_dir)}})
    files = rundir.read_split(run, "validation")
    assert files == LabelledFiles((str(data_dir / "dog" / "b.jpg"), "/abs/cat/a.jpg"), (1, 0), ("cat", "dog"))
    with pytest.raises(ConfigError, match="split must be one of"):
        rundir.read_split(run, "holdout")
    with pytest.raises(RunDirError, match="lists no test files"):
        rundir.read_split(run, "test")
