"""Evaluation on real images: metrics agree with each other, predictions stay with their files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import FAST, RPS, checksums, copy_subset
from transferkit import ImageClassifier
from transferkit.cli import app
from transferkit.errors import DataError
from transferkit.analysis.evaluation import evaluate_files, labelled_folder, plot_misclassified
from transferkit.runs.folder import read_split

runner = CliRunner()


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def check_consistent(metrics: dict, n_classes: int) -> None:
    """The numbers of one evaluation agree with each other."""
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.shape == (n_classes, n_classes)
    assert matrix.sum() == metrics["images"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["accuracy"])
    assert matrix.sum() - np.trace(matrix) == metrics["misclassified"]
    supports = [m["support"] for m in metrics["per_class"].values()]
    assert sum(supports) == metrics["images"]
    for name, m in metrics["per_class"].items():
        row = matrix[metrics["classes"].index(name)]
        assert m["support"] == row.sum()
        assert m["recall"] == pytest.approx(row[metrics["classes"].index(name)] / row.sum())
    assert metrics["macro_avg"]["f1"] == pytest.approx(np.mean([m["f1"] for m in metrics["per_class"].values()]))
    assert metrics["loss"] == metrics["log_loss"] > 0


@pytest.fixture(scope="module")
def rps_run(tmp_path_factory):
    """One small real 3-class model (RGBA PNG sources), enough for multi-class metrics."""
    root = tmp_path_factory.mktemp("rps")
    data_dir = copy_subset(RPS, root / "data", per_class=24)
    classifier = ImageClassifier(**{**FAST, "image_size": 64, "epochs": 2, "fine_tune_epochs": 0}).fit(
        data_dir, out=root / "run"
    )
    return classifier, root / "run", data_dir


@pytest.fixture(scope="module")
def alpaca_validation(alpaca_run):
    """The alpaca run's validation split, rebuilt from split.csv and predicted once for this module."""
    classifier, run_dir, _ = alpaca_run
    return evaluate_files(classifier.trained_, read_split(run_dir), source="validation split")


def test_validation_split_is_reproduced_from_split_csv(alpaca_run, alpaca_validation):
    classifier, run_dir, _ = alpaca_run
    files = read_split(run_dir)
    assert files.paths == classifier.val_files_.paths and files.labels == classifier.val_files_.labels

    metrics = alpaca_validation.metrics()
    assert metrics["images"] == len(classifier.val_files_)
    # Same weights, same images: the accuracy training reported for its best epoch. The loss is of
    # the calibrated probabilities, whose temperature minimises the loss on these very images.
    assert metrics["accuracy"] == pytest.approx(classifier.results_["val_accuracy"], abs=1e-6)
    assert metrics["loss"] <= classifier.results_["val_loss"] * (1 + 1e-3)
    assert set(metrics) >= {"images", "unreadable", "accuracy", "loss", "per_class", "macro_avg", "weighted_avg",
                            "confusion_matrix", "roc_auc", "log_loss"}
    assert "top_k_accuracy" not in metrics and 0.5 < metrics["roc_auc"] <= 1.0
    check_consistent(metrics, 2)


def test_outputs_on_a_shuffled_folder_with_a_broken_file(alpaca_run, tmp_path):
    """Files renamed into a new order, a corrupt file among them: every row keeps its own prediction."""
    classifier, run_dir, _ = alpaca_run
    val = classifier.val_files_
    rng = np.random.default_rng(7)
    data_dir, origin = tmp_path / "shuffled", {}
    for path, label in zip(val.paths, val.labels):
        target = data_dir / val.classes[label] / f"{rng.integers(1 << 40):011x}{Path(path).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        origin[str(target)] = path
    (data_dir / "alpaca" / "7broken.jpg").write_bytes(b"not a jpeg at all")
    before_data, before_run = checksums(data_dir), checksums(run_dir)

    out = tmp_path / "eval"
    metrics = classifier.evaluate(data_dir, batch_size=7, out=out)

    assert metrics["images"] == len(val) and metrics["unreadable"] == [str(data_dir / "alpaca" / "7broken.jpg")]
    check_consistent(metrics, 2)
    rows = read_rows(out / "predictions.csv")
    assert [origin[r["path"]] for r in rows] != list(val.paths), "the copy should be in another order"
    expected = dict(zip(val.paths, classifier.predict_proba(list(val.paths))))
    for row in rows:
        want = expected[origin[row["path"]]]
        got = [float(row[f"p[{name}]"]) for name in classifier.classes_]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert row["true"] == Path(row["path"]).parent.name
        assert row["predicted"] == classifier.classes_[int(np.argmax(want))]

    wrong = [r for r in rows if r["true"] != r["predicted"]]
    listed = read_rows(out / "misclassified.csv")
    assert sorted(r["path"] for r in listed) == sorted(r["path"] for r in wrong)
    assert len(listed) == metrics["misclassified"]
    losses = [float(r["loss"]) for r in listed]
    assert losses == sorted(losses, reverse=True), "worst first"
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert (out / name).stat().st_size > 10_000
    assert checksums(data_dir) == before_data and checksums(run_dir) == before_run


def test_gallery_holds_exactly_the_misclassified_worst_first(alpaca_validation, tmp_path):
    result = alpaca_validation
    wrong = [p for p, t, y in zip(result.paths, result.labels, result.predicted) if t != y]
    assert len(wrong) > 1, "a briefly trained model makes some mistakes on the validation images"
    shown = plot_misclassified(result, tmp_path / "gallery.png")
    assert sorted(shown) == sorted(wrong)
    losses = dict(zip(result.paths, result.losses))
    assert [losses[p] for p in shown] == sorted(losses[p] for p in wrong)[::-1]
    assert plot_misclassified(result, tmp_path / "capped.png", limit=2) == shown[:2]


def test_three_classes_give_top_k_and_no_auc(rps_run):
    classifier, run_dir, data_dir = rps_run
    metrics = ImageClassifier.load(run_dir).evaluate(data_dir)
    assert metrics["images"] == 72 and metrics["classes"] == ["paper", "rock", "scissors"]
    assert "roc_auc" not in metrics and set(metrics["top_k_accuracy"]) == {"2"}
    assert metrics["accuracy"] <= metrics["top_k_accuracy"]["2"] <= 1.0
    check_consistent(metrics, 3)


def test_class_differences_are_named_and_a_subset_is_opt_in(rps_run, tmp_path):
    classifier, _, data_dir = rps_run
    subset = tmp_path / "subset"
    shutil.copytree(data_dir / "rock", subset / "rock")
    shutil.copytree(data_dir / "paper", subset / "lizard")
    with pytest.raises(DataError, match=r"missing \['paper', 'scissors'\], extra \['lizard'\].*--allow-class-subset"):
        classifier.evaluate(subset)
    files, missing, extra = labelled_folder(subset, classifier.classes_, allow_class_subset=True)
    assert set(files.labels) == {1} and missing == ["paper", "scissors"] and extra == ["lizard"]
    metrics = classifier.evaluate(subset, allow_class_subset=True)
    assert metrics["images"] == 24 and list(metrics["per_class"]) == ["rock"]
    assert metrics["missing_classes"] == ["paper", "scissors"] and metrics["extra_classes"] == ["lizard"]
    assert np.asarray(metrics["confusion_matrix"]).sum() == 24
    assert metrics["accuracy"] == pytest.approx(metrics["per_class"]["rock"]["recall"])


def test_cli_evaluate_json_and_class_subset(rps_run, tmp_path):
    classifier, run_dir, data_dir = rps_run
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    before = checksums(run_copy)
    result = runner.invoke(app, ["evaluate", str(run_copy), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["images"] == len(classifier.val_files_) and metrics["source"] == "validation split"
    written = {str(p.relative_to(run_copy)) for p in run_copy.rglob("*") if p.is_file()} - set(before)
    assert written == {f"evaluation/validation/{name}" for name in (
        "metrics.json", "predictions.csv", "misclassified.csv", "confusion_matrix.png", "misclassified.png")}
    assert {k: v for k, v in checksums(run_copy).items() if k in before} == before

    subset = tmp_path / "subset"
    shutil.copytree(data_dir / "rock", subset / "rock")
    (subset / "lizard").mkdir()
    table = runner.invoke(app, ["evaluate", str(run_copy), str(subset), "--allow-class-subset",
                                "--out", str(tmp_path / "e")], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "24 images, accuracy" in table.output and "macro avg" in table.output and "rock" in table.output
    assert "model classes without a folder ['paper', 'scissors'], folders the model does not know ['lizard']" \
        in table.output
    assert (tmp_path / "e" / "confusion_matrix.png").is_file()
