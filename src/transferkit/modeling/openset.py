"""What a trained model's outputs mean off its training set: calibrated confidence and an unknown score.

Only the parts applied at prediction time live here (pure numpy, so the run folder, the
predictor and exports can use them); fitting them is `transferkit.analysis.calibration`
and `transferkit.analysis.ood`.

- Temperature scaling divides the logits by one number T fitted on held-out data. It
  never changes which class wins, only how sure the model says it is. Probabilities
  are turned back into logits (log p for softmax, log-odds for sigmoid), so the same
  correction applies to any runtime's output.
- The unknown score is larger for images unlike the training images. "knn" is one
  minus the cosine similarity of an image's pooled backbone features to its k-th
  nearest training image; "msp", "energy" and "mahalanobis" are the measured
  alternatives (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np


def to_class_probabilities(model_output, num_classes: int) -> np.ndarray:
    """(n, num_classes) probabilities from either head shape (one sigmoid unit for two classes)."""
    output = np.asarray(model_output, dtype=np.float64)
    if num_classes == 2:
        p = output.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return output



def head_logits(penultimate, kernel, bias) -> np.ndarray:
    """Logits of the final Dense layer from its input, in float64; two-class ones as two columns."""
    return two_class_logits(np.asarray(penultimate, np.float64) @ np.asarray(kernel, np.float64)
                            + np.asarray(bias, np.float64))

EPSILON = 1e-12
METHODS = ("knn", "mahalanobis", "energy", "msp")
DEFAULT_METHOD = "knn"
DEFAULT_ACCEPT_RATE = 0.95
DEFAULT_K = 1


def logits_of(probabilities) -> np.ndarray:
    """(n, c) logits equivalent to (n, c) probabilities (for c == 2, [0, log-odds])."""
    p = np.clip(np.asarray(probabilities, np.float64), EPSILON, 1.0)
    if p.shape[1] == 2:
        odds = np.log(p[:, 1]) - np.log(np.clip(p[:, 0], EPSILON, 1.0))
        return np.stack([np.zeros_like(odds), odds], axis=1)
    return np.log(p)


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probabilities, temperature: float | None) -> np.ndarray:
    """Probabilities as if the logits had been divided by `temperature`; NaN rows stay NaN."""
    probabilities = np.asarray(probabilities, np.float64)
    if temperature is None or temperature == 1.0 or not len(probabilities):
        return probabilities
    out = np.full_like(probabilities, np.nan)
    ok = ~np.isnan(probabilities).any(axis=1)
    if ok.any():
        out[ok] = softmax(logits_of(probabilities[ok]) / float(temperature))
    return out


def two_class_logits(logits) -> np.ndarray:
    """(n, c) logits from a head's raw output: a sigmoid head's (n, 1) becomes [0, z]."""
    z = np.asarray(logits, np.float64)
    if z.ndim == 1 or z.shape[1] == 1:
        z = z.reshape(-1)
        return np.stack([np.zeros_like(z), z], axis=1)
    return z


def normalize(features) -> np.ndarray:
    f = np.asarray(features, np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_score(features, bank, k: int = DEFAULT_K, chunk: int = 256) -> np.ndarray:
    """1 - cosine similarity to the k-th nearest row of `bank` (rows L2-normalised; pass float32 rows
    when calling often: converting a float16 bank costs more than the product)."""
    f = normalize(features)
    bank = np.asarray(bank, np.float32)
    k = max(1, min(int(k), len(bank)))
    scores = np.empty(len(f))
    for start in range(0, len(f), chunk):
        similarity = f[start:start + chunk] @ bank.T
        kth = similarity.max(axis=1) if k == 1 else -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
        scores[start:start + chunk] = 1.0 - kth
    return scores


def mahalanobis_score(features, means, precision) -> np.ndarray:
    """Smallest squared Mahalanobis distance to a class mean (shared covariance), normalised features."""
    f = normalize(features).astype(np.float64)
    best = np.full(len(f), np.inf)
    for mean in np.asarray(means, np.float64):
        d = f - mean
        best = np.minimum(best, np.einsum("ij,jk,ik->i", d, precision, d))
    return best


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """-T logsumexp(z / T): low (very negative) for confident in-distribution images."""
    z = two_class_logits(logits) / temperature
    top = z.max(axis=1)
    return -temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def msp_score(probabilities) -> np.ndarray:
    """1 - the largest class probability (the max-softmax baseline)."""
    return 1.0 - np.asarray(probabilities, np.float64).max(axis=1)


def threshold_for(accepted_scores, accept_rate: float) -> float:
    """The score below which `accept_rate` of `accepted_scores` (in-distribution images) fall."""
    scores = np.asarray(accepted_scores, np.float64)
    return float(np.quantile(scores, accept_rate, method="higher"))
