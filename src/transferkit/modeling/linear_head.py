"""The classifier layer fitted in closed form: L2-regularised logistic regression on pooled features.

On frozen features the head's problem is convex, so a solver finds its optimum in seconds, and
the one choice that matters, the L2 strength, is chosen by cross-validation on the training images
themselves (scikit-learn's `LogisticRegressionCV`), instead of by epochs of Adam judged on a small
validation split (BENCHMARKS.md, "Accuracy on held-out images").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Inverse L2 strengths tried, on standardised features; folds at most (fewer for a class with fewer images).
C_GRID = tuple(np.logspace(-4, 1, 6))
CV_FOLDS = 5
FALLBACK_C = 0.1  # for a class too small to cross-validate (under 2 images)
MAX_ITER = 1000


@dataclass
class LinearHead:
    kernel: np.ndarray  # (features, units): units 1 (sigmoid, two classes) or the number of classes (softmax)
    bias: np.ndarray
    C: float
    folds: int  # 0: C was not cross-validated

    def describe(self) -> str:
        how = f"chosen by {self.folds}-fold cross-validation" if self.folds else "fixed (a class is too small to fold)"
        return f"logistic regression, C={self.C:g} {how}"


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int, class_weight: dict | None = None,
                    seed: int = 0) -> LinearHead:
    """The Dense layer (kernel, bias) on raw `features` that equals a logistic regression on standardised ones.

    Standardising makes one C grid fit every backbone; folding the scaler into the weights keeps the
    Keras head a single Dense layer, so fine-tuning and every export see an ordinary model.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (images, dim) with one label each, got {features.shape} and {labels.shape}")
    scaler = StandardScaler().fit(features)
    x = scaler.transform(features)
    folds = int(min(CV_FOLDS, np.bincount(labels, minlength=num_classes).min()))
    # One BLAS thread: on these small matrices threads cost more than they give (several times slower on 2 cores).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notice about its attribute names
        if folds >= 2:
            model = LogisticRegressionCV(Cs=list(C_GRID), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                         scoring="neg_log_loss", max_iter=MAX_ITER, class_weight=class_weight)
        else:
            folds, model = 0, LogisticRegression(C=FALLBACK_C, max_iter=MAX_ITER, class_weight=class_weight)
        model.fit(x, labels)
    C = float(np.ravel(model.C_)[0]) if folds else FALLBACK_C
    coef = model.coef_ / scaler.scale_  # (units, features) on raw features
    bias = model.intercept_ - coef @ scaler.mean_
    return LinearHead(coef.T.astype(np.float32), bias.astype(np.float32), C, folds)
