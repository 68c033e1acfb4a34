"""Fit, at the end of training, what lets a run say "I do not know": temperature and unknown detector.

One extra un-augmented pass over the training and validation images of the finished
model gives pooled backbone features and head logits. The temperature is fitted on the
validation logits (`analysis.calibration`); the unknown score (`modeling.openset`) uses
the training features as its reference and its threshold is the validation score that
`accept_rate` of the validation images fall below, so about that share of images like
the training data is accepted. The threshold can be moved at prediction time from the
stored validation scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from transferkit import data
from transferkit.analysis.calibration import calibration_summary, fit_temperature
from transferkit.errors import ConfigError
from transferkit.modeling import openset
from transferkit.runs.trained import TrainedModel

logger = logging.getLogger("transferkit")


@dataclass
class FeatureSet:
    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray


def features_of(trained: TrainedModel, files: data.LabelledFiles, batch_size: int = 32) -> FeatureSet:
    """Pooled features and logits of the readable files."""
    features, logits = trained.predict_features(list(files.paths), batch_size)
    ok = ~np.isnan(logits).any(axis=1)
    return FeatureSet(features[ok], logits[ok], np.asarray(files.labels, int)[ok])


def check_accept_rate(accept_rate) -> float:
    if isinstance(accept_rate, bool) or not isinstance(accept_rate, (int, float)) or not 0 < accept_rate <= 1:
        raise ConfigError(f"accept_rate must be a number in (0, 1] (the share of in-distribution images to accept, "
                          f"e.g. 0.95), got {accept_rate!r}.")
    return float(accept_rate)


def fit_detector(train: FeatureSet, method: str = openset.DEFAULT_METHOD, k: int = openset.DEFAULT_K) -> dict:
    """The reference arrays `method` scores against (for knn the normalised training features)."""
    if method not in openset.METHODS:
        raise ConfigError(f"Unknown-score method {method!r} is not one of {list(openset.METHODS)}.")
    ood: dict = {"method": method, "k": int(k), "reference_images": int(len(train.labels))}
    if method == "knn":
        ood["bank"] = openset.normalize(train.features).astype(np.float16)
    elif method == "mahalanobis":
        from sklearn.covariance import LedoitWolf

        f = openset.normalize(train.features).astype(np.float64)
        classes = np.unique(train.labels)
        means = np.stack([f[train.labels == c].mean(axis=0) for c in classes])
        centred = f - means[np.searchsorted(classes, train.labels)]
        ood["means"] = means.astype(np.float32)
        ood["precision"] = LedoitWolf().fit(centred).precision_.astype(np.float32)
    return ood


def fit_open_set(trained: TrainedModel, accept_rate: float = openset.DEFAULT_ACCEPT_RATE,
                 method: str = openset.DEFAULT_METHOD, batch_size: int = 32, outputs: dict | None = None
                 ) -> FeatureSet | None:
    """Set `trained.calibration` and `trained.ood` from its own train/validation split.

    `outputs`: {split: (features, logits, labels)} already computed (training's activation cache
    gives them without decoding the files again); else one pass over the files.
    Returns the validation features (for the reliability diagram), or None when the run
    has too few validation images to fit anything (both then stay None).
    """
    accept_rate = check_accept_rate(accept_rate)
    if outputs is None:
        train, val = (features_of(trained, trained.split(name), batch_size) for name in (data.TRAIN, data.VALIDATION))
    else:
        train, val = (FeatureSet(*outputs[name]) for name in (data.TRAIN, data.VALIDATION))
        files = trained.split(data.TRAIN)
        if len(files) and len(val.labels):  # the run's own conversion (kept in RUN/openvino), as a pass would make
            sample, _ = next(data.decoded_batches(files.paths[:batch_size], trained.image_size, batch_size))
            trained.forward(sample, images=len(files))
    if len(val.labels) < 2 or len(train.labels) < 2:
        logger.warning("Too few readable validation images (%d) to calibrate or fit an unknown detector.", len(val.labels))
        return None
    temperature = fit_temperature(val.logits, val.labels)
    trained.calibration = calibration_summary(val.logits, val.labels, temperature)
    ood = fit_detector(train, method)
    trained.ood = ood
    scores = trained.unknown_scores(val.features, val.logits)
    ood.update(accept_rate=accept_rate, threshold=openset.threshold_for(scores, accept_rate),
               validation_images=int(len(scores)), val_scores=np.sort(scores).astype(np.float32))
    # exports only carry probabilities: they reject by max-softmax, with its own threshold
    msp = np.sort(openset.msp_score(openset.softmax(openset.two_class_logits(val.logits) / temperature)))
    ood.update(msp_threshold=openset.threshold_for(msp, accept_rate), msp_val_scores=msp.astype(np.float32))
    _measure_bf16(trained, trained.split(data.VALIDATION), val, accept_rate, batch_size)
    return val


def _measure_bf16(trained: TrainedModel, files: data.LabelledFiles, val: FeatureSet, accept_rate: float,
                  batch_size: int) -> None:
    """Score the validation images again with the run's OpenVINO copy in bf16: the top-1 agreement
    decides whether prediction may use it, and its own threshold keeps the acceptance rate."""
    if trained.openvino_forward() is None:
        return
    _, features, logits = trained.predict_outputs(list(files.paths), batch_size, precision="bf16")
    ok = ~np.isnan(logits).any(axis=1)
    if ok.sum() != len(val.labels):
        return
    scores = np.sort(trained.unknown_scores(features[ok], logits[ok]))
    trained.ood.update(bf16_top1_agreement=float((logits[ok].argmax(1) == val.logits.argmax(1)).mean()),
                       bf16_threshold=openset.threshold_for(scores, accept_rate), bf16_val_scores=scores.astype(np.float32))
