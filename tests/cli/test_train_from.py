"""`transferkit train DATA --from RUN`: wiring, the parent in `transferkit runs`, bad input exits 2."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import make_images
from transferkit.cli import app

runner = CliRunner()
QUICK = ("--epochs", 1, "--fine-tune-epochs", 1, "--cached-views", 2, "--no-report", "--json")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_from_adds_a_class_and_runs_shows_the_parent(small_run, tmp_path, monkeypatch):
    from transferkit.cli.app import out

    monkeypatch.setattr(out, "_width", 250)  # a wide terminal: no cell is cut short
    _, parent = small_run
    data = make_images(tmp_path / "data", classes=("circle", "square", "zcross"), per_class=8)
    result = invoke("train", data, "--from", parent, "--out", tmp_path / "runs" / "child", *QUICK)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["classes"] == ["circle", "square", "zcross"]
    assert summary["parent_run"] == str(parent.resolve())
    listing = invoke("runs", tmp_path / "runs", "--json")
    assert json.loads(listing.stdout)[0]["parent"] == str(parent.resolve())
    table = invoke("runs", tmp_path / "runs")
    child_row = next(line for line in table.output.splitlines() if line.startswith("│ child"))
    assert "parent" in table.output and child_row.split("│")[-2].strip() == parent.name  # the table shows its name


def test_train_from_bad_input_exits_2(small_run, synthetic_dir, tmp_path):
    _, parent = small_run
    not_a_run = invoke("train", synthetic_dir, "--from", synthetic_dir, "--out", tmp_path / "a", *QUICK)
    assert not_a_run.exit_code == 2 and "is not a transferkit run" in not_a_run.output
    size = invoke("train", synthetic_dir, "--from", parent, "--image-size", 64, "--out", tmp_path / "b", *QUICK)
    assert size.exit_code == 2
    assert "image_size 64 (the parent's is 32)" in size.output.replace("\n", " ")
    resume = invoke("train", synthetic_dir, "--from", parent, "--resume", "--out", tmp_path / "c")
    assert resume.exit_code == 2 and "cannot be combined with --resume" in resume.output.replace("\n", " ")
    assert not any((tmp_path / name).exists() for name in "abc")
