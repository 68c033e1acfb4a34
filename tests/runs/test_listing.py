"""`transferkit runs` on real run folders: two tiny trainings that differ in one setting."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from transferkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def two_runs(tiny_dir, tmp_path_factory):
    from transferkit import ImageClassifier

    root = tmp_path_factory.mktemp("runs")
    for name, epochs in (("a", 2), ("b", 3)):
        ImageClassifier(fine_tune_epochs=1, epochs=epochs, patience=None, verbose=0, write_report=False).fit(
            tiny_dir, out=root / "group" / name)
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "config.json").write_text("{broken")
    return root


def test_runs_lists_each_run_once_with_its_figures(two_runs):
    result = runner.invoke(app, ["runs", str(two_runs), "--json", "--sort", "-name"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["b", "a"]
    for row in rows:
        config = json.loads((two_runs / "group" / row["name"] / "config.json").read_text())
        assert row["source"] == config["data"]["source"] == str(config["data"]["source"])
        assert row["fingerprint"] == config["data"]["fingerprint"][:12]
        assert row["images"] == 24 and row["backbone"] == "mobilenet_v2"
        assert row["val_accuracy"] == config["results"]["val_accuracy"]
    assert rows[0]["fingerprint"] == rows[1]["fingerprint"]  # same data
    table = runner.invoke(app, ["runs", str(two_runs)])
    assert table.exit_code == 0
    first_cells = [line.split("│")[1].strip() for line in table.output.splitlines() if line.startswith("│")]
    assert {"a", "b"} <= set(first_cells)  # the table wraps long cells in a narrow terminal


def test_compare_shows_settings_that_differ(two_runs):
    a, b = two_runs / "group" / "a", two_runs / "group" / "b"
    result = runner.invoke(app, ["runs", "--compare", str(a), "--compare", str(b), "--json"])
    assert result.exit_code == 0, result.output
    compared = json.loads(result.output)
    assert compared["settings"]["epochs"] == [2, 3]
    assert "backbone" not in compared["settings"] and "data.fingerprint" not in compared["settings"]
    assert compared["metrics"]["epochs_run"] == [3, 4]


def test_bad_arguments_say_what_is_allowed(two_runs, tmp_path):
    result = runner.invoke(app, ["runs", str(two_runs), "--sort", "colour"])
    assert result.exit_code == 2 and "val_accuracy" in result.output
    result = runner.invoke(app, ["runs", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["runs", "--compare", str(two_runs / "group" / "a")])
    assert result.exit_code == 2 and "exactly two" in result.output
