"""Temperature scaling: fitted on held-out logits, stored in the run, applied at prediction only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from transferkit.analysis.calibration import expected_calibration_error, fit_temperature
from transferkit.modeling.openset import apply_temperature, softmax


def test_fit_temperature_recovers_an_overconfident_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (2000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    temperature = fit_temperature(true_logits * 3.0, labels)  # a model 3x too sure
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(true_logits * 3.0), labels)
    after = expected_calibration_error(softmax(true_logits * 3.0 / temperature), labels)
    assert after < before / 2


def test_perfectly_separated_validation_keeps_temperature_one():
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [4.0, 1.0], [0.0, 5.0]])
    assert fit_temperature(logits, np.array([0, 1, 0, 1])) == 1.0


def test_sigmoid_logit_is_scaled_like_two_class_softmax():
    p = np.array([[0.1, 0.9], [0.7, 0.3]])
    scaled = apply_temperature(p, 2.0)
    logit = np.log(0.9 / 0.1) / 2
    assert scaled[0, 1] == pytest.approx(1 / (1 + np.exp(-logit)))
    assert (scaled.argmax(1) == p.argmax(1)).all()
    assert np.isnan(apply_temperature(np.array([[np.nan, np.nan]]), 2.0)).all()


def test_run_folder_stores_and_applies_calibration(rps_run, tmp_path):
    from transferkit.deploy.predictor import Predictor
    from transferkit.runs.trained import TrainedModel

    classifier, run_dir = rps_run
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert calibration["images"] == classifier.results_["val_images"]
    assert 0.05 <= calibration["temperature"] <= 20
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9  # what T minimises; ECE on 9 images is noise
    assert (run_dir / "reliability.png").stat().st_size > 1000

    trained = TrainedModel.load(run_dir)
    paths = list(trained.split("validation").paths)[:6]
    raw = trained.predict_proba(paths, calibrated=False)
    calibrated = trained.predict_proba(paths)
    np.testing.assert_allclose(calibrated, apply_temperature(raw, calibration["temperature"]), atol=1e-6)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    via_predictor = Predictor(run_dir, runtime="keras").predict_proba(paths)
    np.testing.assert_allclose(via_predictor, calibrated, atol=1e-5)

    # An old run folder (no calibration.json, no ood files) predicts exactly as before.
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for name in ("calibration.json", "ood.json", "ood.npz"):
        (old / name).unlink()
    old_predictor = Predictor(old, runtime="keras")
    np.testing.assert_allclose(old_predictor.predict_proba(paths), raw, atol=1e-6)
    assert all(p.unknown is None and p.score is None for p in old_predictor.predict(paths))


def test_evaluate_reports_calibration(rps_run):
    classifier, run_dir = rps_run
    metrics = classifier.evaluate(run_dir=run_dir)
    assert metrics["calibration"]["temperature"] == pytest.approx(classifier.trained_.temperature)
    assert 0 <= metrics["calibration"]["ece"] <= 1 and 0 <= metrics["calibration"]["ece_uncalibrated"] <= 1
