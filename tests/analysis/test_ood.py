"""Unknown rejection on real images: alpaca photos are not hand gestures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def test_alpaca_photos_are_unknown_to_an_rps_model(rps_run, alpaca_photos):
    from transferkit.deploy.predictor import Predictor

    _, run_dir = rps_run
    ood = json.loads((run_dir / "ood.json").read_text())
    assert ood["method"] == "knn" and ood["accept_rate"] == 0.95
    predictor = Predictor(run_dir)
    validation = [str(p) for p in predictor.trained.split("validation").paths]
    far = predictor.predict(alpaca_photos)
    near = predictor.predict(validation)
    far_rate = np.mean([p.unknown for p in far])
    val_rate = np.mean([p.unknown for p in near])
    assert len(far) == len(alpaca_photos) and all(p.score is not None for p in far)
    assert far_rate >= 0.8 and far_rate > val_rate + 0.5
    assert val_rate <= 0.2
    assert np.median([p.score for p in far]) > np.median([p.score for p in near])
    # a stricter accept rate never accepts more; --no-reject leaves the fields empty
    strict = predictor.predict(validation, accept_rate=0.5)
    assert sum(p.unknown for p in strict) >= sum(p.unknown for p in near)
    assert all(p.unknown is None for p in predictor.predict(alpaca_photos[:2], reject=False))
    assert all(p.unknown for p in predictor.predict(alpaca_photos[:2], threshold=-1.0))


def test_predict_cli_shows_unknown(rps_run, alpaca_photos):
    _, run_dir = rps_run
    command = [sys.executable, "-m", "transferkit", "predict", str(run_dir), *alpaca_photos[:3], "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["unknown"] for r in rows].count(True) >= 2 and all(isinstance(r["score"], float) for r in rows)
    result = subprocess.run(command + ["--no-reject"], capture_output=True, text=True, timeout=300)
    assert all(r["unknown"] is None for r in json.loads(result.stdout))
    bad = subprocess.run(command + ["--accept-rate", "1.5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "accept_rate" in bad.stderr + bad.stdout


def test_image_classifier_predict_carries_unknown_and_score(rps_run, alpaca_photos):
    from transferkit.deploy.predictor import Predictor

    classifier, run_dir = rps_run
    mine = classifier.predict(alpaca_photos[:6])
    theirs = Predictor(run_dir).predict(alpaca_photos[:6])
    assert [(p.label, p.unknown) for p in mine] == [(p.label, p.unknown) for p in theirs]
    assert any(p.unknown for p in mine)
    np.testing.assert_allclose([p.score for p in mine], [p.score for p in theirs], atol=1e-5)
    assert all(p.unknown is None and p.score is None for p in classifier.predict(alpaca_photos[:2], reject=False))


def test_detector_fitted_from_the_cache_matches_a_pass_over_the_files(rps_run):
    """Training fits the detector and temperature on its cached un-augmented views (no second decode):
    they must be the features and logits a pass over the files gives with the final weights."""
    from transferkit.analysis.ood import features_of
    from transferkit.runs.trained import TrainedModel

    _, run_dir = rps_run
    trained = TrainedModel.load(run_dir)
    bank = np.asarray(trained.ood["bank"], np.float32)
    passed = features_of(trained, trained.split("train"))
    assert bank.shape == passed.features.shape
    from transferkit.modeling.openset import normalize

    cosine = np.sum(bank * normalize(passed.features), axis=1)
    assert cosine.min() > 0.99, cosine.min()
    val = features_of(trained, trained.split("validation"))
    scores = np.sort(trained.unknown_scores(val.features, val.logits))
    assert np.allclose(scores, np.sort(trained.ood["val_scores"]), atol=0.02)
