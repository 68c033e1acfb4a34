"""The closed-form head: a logistic regression folded into one Dense layer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from transferkit.modeling.linear_head import C_GRID, fit_linear_head


@pytest.fixture(scope="module")
def rps_features(rps_run):
    """Pooled features of the real rps images of a trained run, with their labels."""
    from transferkit.analysis.ood import features_of

    classifier, _ = rps_run
    trained = classifier.trained_
    features = features_of(trained, trained.split("train"))
    return features.features, features.labels


def test_dense_layer_gives_the_regressions_probabilities(rps_features):
    features, labels = rps_features
    head = fit_linear_head(features, labels, num_classes=3, seed=0)
    assert head.kernel.shape == (features.shape[1], 3) and head.folds >= 2 and head.C in C_GRID
    logits = features @ head.kernel + head.bias
    reference = LogisticRegression(C=head.C, max_iter=1000).fit(StandardScaler().fit_transform(features), labels)
    expected = reference.predict_proba(StandardScaler().fit(features).transform(features))
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert np.abs(probabilities - expected).max() < 1e-3
    assert (logits.argmax(1) == labels).mean() > 0.9


def test_two_classes_give_one_sigmoid_unit_and_tiny_classes_a_fixed_strength(rps_features):
    features, labels = rps_features
    two = labels < 2
    head = fit_linear_head(features[two], labels[two], num_classes=2, seed=0)
    assert head.kernel.shape == (features.shape[1], 1)
    predicted = ((features[two] @ head.kernel + head.bias)[:, 0] > 0).astype(int)  # the sigmoid's class 1
    assert (predicted == labels[two]).mean() > 0.9
    # a class with a single image cannot be folded: C is fixed, and said so
    rows = np.r_[np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)[:1]]
    tiny = fit_linear_head(features[rows], labels[rows], num_classes=2)
    assert tiny.folds == 0 and "fixed" in tiny.describe()
