"""End-to-end training on real images with real ImageNet weights."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import FAST, RPS, checksums, copy_subset
from transferkit import ImageClassifier
from transferkit.modeling.classifier import backbone_of


def test_alpaca_reaches_well_above_chance(alpaca_run):
    classifier, run_dir, _ = alpaca_run
    results = classifier.results_
    assert results["train_images"] + results["val_images"] == 327
    assert 50 <= results["val_images"] <= 80  # about 20 % of each class
    assert results["val_accuracy"] >= 0.85, results
    assert results["val_accuracy_stage1"] >= 0.75, results
    assert classifier.classes_ == ["alpaca", "not alpaca"]


def test_two_stages_continue_the_same_epoch_count(alpaca_run):
    classifier, run_dir, _ = alpaca_run
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    # stage 1 is the head solved as a cross-validated logistic regression, recorded as one epoch
    head = classifier.resolved_settings_["head"]
    assert head["solver"] == "lbfgs" and head["cv_folds"] == 5 and 1e-4 <= head["C"] <= 10
    assert classifier.resolved_settings_["epochs"] == 1
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["stage"]) for r in rows] == [1, 2, 2, 2]
    assert {float(r["learning_rate"]) for r in rows if r["stage"] == "2"} == {1e-4}
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    # The kept weights are those of the lowest validation loss.
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert int(best["epoch"]) == classifier.results_["best_epoch"]
    assert abs(float(best["val_accuracy"]) - classifier.results_["val_accuracy"]) < 1e-9


def test_run_directory_holds_everything(alpaca_run):
    classifier, run_dir, _ = alpaca_run
    for name in ["model.keras", "classes.txt", "config.json", "history.csv", "split.csv",
                 "learning_curves.png", "samples.png"]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "classes.txt").read_text().splitlines() == ["alpaca", "not alpaca"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["params"]["seed"] == 42 and config["params"]["backbone"] == "mobilenet_v2"
    assert config["resolved"]["fine_tune_at"] == 100
    assert config["resolved"]["weights_file"].endswith("mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    assert {"keras", "tensorflow-cpu", "python"} <= set(config["versions"])
    with Image.open(run_dir / "learning_curves.png") as image:
        assert image.size[0] > 600
    with open(run_dir / "split.csv") as handle:
        split = list(csv.DictReader(handle))
    assert len(split) == 327 and {r["split"] for r in split} == {"train", "validation"}
    assert all(len(r["sha256"]) == 64 for r in split)
    assert len(config["data"]["fingerprint"]) == 64
    assert not list(run_dir.glob(".*.tmp*")), "temporary files left behind"


def test_training_never_touches_the_data(alpaca_run, alpaca_dir):
    _, _, before = alpaca_run
    assert checksums(alpaca_dir) == before


def test_backbone_stays_in_inference_mode_and_is_partly_unfrozen(alpaca_run):
    import keras

    classifier, _, _ = alpaca_run
    base = backbone_of(classifier.model_)
    assert not any(layer.trainable for layer in base.layers[:100])
    top = base.layers[100:]
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    # Batch norm uses its moving statistics even when Keras runs the model in training mode.
    size = classifier.trained_.image_size
    images = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")
    inputs = classifier.model_.get_layer("preprocess")(images)
    np.testing.assert_allclose(base(inputs, training=True), base(inputs, training=False), atol=1e-5)


def test_save_load_gives_identical_predictions(alpaca_run, tmp_path):
    classifier, run_dir, _ = alpaca_run
    val_paths = list(classifier.val_files_.paths)
    expected = classifier.predict_proba(val_paths)
    reloaded = ImageClassifier.load(run_dir)
    np.testing.assert_allclose(reloaded.predict_proba(val_paths), expected, atol=1e-6)
    # save() to a new folder round-trips too
    classifier.save(tmp_path / "copy")
    np.testing.assert_allclose(ImageClassifier.load(tmp_path / "copy").predict_proba(val_paths), expected, atol=1e-6)


def test_predict_on_a_folder_matches_labels(alpaca_run, tmp_path, caplog):
    classifier, run_dir, _ = alpaca_run
    folder = tmp_path / "incoming"
    (folder / "nested").mkdir(parents=True)
    val = classifier.val_files_
    truth = {}
    for i, (path, label) in enumerate(zip(val.paths, val.labels)):
        target = folder / ("nested" if i % 2 else "") / f"{i:03d}.jpg"
        target.write_bytes(open(path, "rb").read())
        truth[str(target)] = classifier.classes_[label]
    (folder / "notes.txt").write_text("not an image")
    predictions = ImageClassifier.load(run_dir).predict([folder, folder / "notes.txt"])
    assert sorted(p.path for p in predictions) == sorted(truth)
    accuracy = np.mean([p.label == truth[p.path] for p in predictions])
    assert accuracy >= 0.85
    assert all(0.5 <= p.confidence <= 1.0 for p in predictions)
    assert "notes.txt" in caplog.text


def test_evaluate_agrees_with_training_validation(alpaca_run):
    classifier, _, _ = alpaca_run
    result = classifier.evaluate(classifier.data_summary_["data_dir"])
    assert result["images"] == 327 and result["accuracy"] >= 0.85


def test_three_class_rps(tmp_path):
    data_dir = copy_subset(RPS, tmp_path / "rps", per_class=60)
    classifier = ImageClassifier(**{**FAST, "image_size": 96, "epochs": 10, "fine_tune_epochs": 1}).fit(data_dir)
    assert classifier.classes_ == ["paper", "rock", "scissors"]
    assert classifier.model_.output_shape == (None, 3)
    assert classifier.results_["val_accuracy"] >= 0.85, classifier.results_
    predictions = classifier.predict(data_dir / "rock", top_k=3)
    assert len(predictions) == 60 and all(len(p.top_k) == 3 for p in predictions)
    assert np.mean([p.label == "rock" for p in predictions]) >= 0.85
    probabilities = [sum(prob for _, prob in p.top_k) for p in predictions]
    np.testing.assert_allclose(probabilities, 1.0, atol=1e-5)


def test_imbalanced_data_is_weighted_and_reported_per_class(tmp_path):
    from conftest import ALPACA

    data_dir = tmp_path / "imbalanced"
    for name, count in (("alpaca", 48), ("not alpaca", 12)):
        (data_dir / name).mkdir(parents=True)
        for f in sorted((ALPACA / name).iterdir())[:count]:
            (data_dir / name / f.name).write_bytes(f.read_bytes())
    settings = {**FAST, "image_size": 64, "epochs": 1, "fine_tune_epochs": 0, "cached_views": 1}
    weighted = ImageClassifier(**settings).fit(data_dir)
    counts = weighted.train_files_.class_counts()
    assert counts["alpaca"] / counts["not alpaca"] > 3
    weights = weighted.resolved_settings_["class_weight"]
    total = sum(counts.values())
    assert weights == pytest.approx({0: total / (2 * counts["alpaca"]), 1: total / (2 * counts["not alpaca"])})
    unweighted = ImageClassifier(**{**settings, "class_weight": "none"}).fit(data_dir)
    assert unweighted.resolved_settings_["class_weight"] is None


def test_same_data_and_seed_give_the_same_split_and_metrics(tiny_dir):
    settings = {**FAST, "image_size": 64, "epochs": 2, "fine_tune_epochs": 1, "cached_views": 2}
    first, second = (ImageClassifier(**settings).fit(tiny_dir) for _ in range(2))
    assert first.val_files_ == second.val_files_
    assert first.data_summary_["fingerprint"] == second.data_summary_["fingerprint"]
    for a, b in zip(first.history_, second.history_):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)


def test_test_split_is_held_out_and_scored(tiny_dir, tmp_path):
    from transferkit.runs.folder import read_csv

    settings = {**FAST, "image_size": 64, "epochs": 2, "fine_tune_epochs": 0, "cached_views": 1,
                "val_split": 0.25, "test_split": 0.25, "write_report": False}
    classifier = ImageClassifier(**settings).fit(tiny_dir, out=tmp_path / "run")
    test = set(classifier.test_files_.paths)
    assert test and not test & (set(classifier.train_files_.paths) | set(classifier.val_files_.paths))
    assert classifier.results_["test_images"] == len(test)
    assert 0.0 <= classifier.results_["test_accuracy"] <= 1.0
    rows = read_csv(tmp_path / "run" / "split.csv")
    assert {r["path"] for r in rows if r["split"] == "test"} == test
    reloaded = ImageClassifier.load(tmp_path / "run")
    assert reloaded.evaluate(split="test")["accuracy"] == pytest.approx(classifier.results_["test_accuracy"])


def test_defaults_solve_the_head_at_224_px_without_fine_tuning(alpaca_dir):
    """The default path: one un-augmented view cached, the head solved, no stage 2; the unknown
    detector's reference features come from that cache and equal a pass over the files."""
    from transferkit.analysis.ood import features_of
    from transferkit.modeling.openset import normalize

    classifier = ImageClassifier(verbose=0, write_report=False).fit(alpaca_dir)
    resolved, results = classifier.resolved_settings_, classifier.results_
    assert resolved["image_size"] == 224 and resolved["fine_tune_epochs"] == 0 and resolved["cached_views"] == 1
    assert resolved["head"]["solver"] == "lbfgs"
    assert [row["stage"] for row in classifier.history_] == [1] and results["best_epoch"] == 1
    assert results["val_accuracy"] >= 0.9, results
    trained = classifier.trained_
    passed = features_of(trained, trained.split("train"))
    cosine = np.sum(np.asarray(trained.ood["bank"], np.float32) * normalize(passed.features), axis=1)
    assert cosine.min() > 0.99
