"""Temperature scaling (Guo et al. 2017): make the reported confidence match the hit rate.

Fine-tuned networks are over-confident; one temperature T, fitted by minimising the
negative log-likelihood of held-out logits, fixes most of it without changing any
prediction. ECE (expected calibration error) measures the gap: the mean |confidence -
accuracy| over equal-width confidence bins, weighted by how many images fall in each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferkit.modeling.openset import softmax, two_class_logits
from transferkit.runs import folder as rundir
from transferkit.runs.trained import TrainedModel

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
MIN_IMAGES = 4  # fewer held-out images than this: T = 1 (nothing to fit on)


def nll(logits, labels, temperature: float) -> float:
    z = two_class_logits(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels) -> float:
    """The T in TEMPERATURE_RANGE minimising NLL(softmax(logits / T)); 1.0 with too few images."""
    from scipy.optimize import minimize_scalar

    logits, labels = two_class_logits(logits), np.asarray(labels, int)
    if len(labels) < MIN_IMAGES or (logits.argmax(1) == labels).all():
        return 1.0  # all correct: NLL falls as T -> 0, which would only make the model sharper than it earned
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(low, high),
                             method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def expected_calibration_error(probabilities, labels, bins: int = BINS) -> float:
    """Top-label ECE over `bins` equal-width confidence bins."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels, int)
    if not len(labels):
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap += mask.sum() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(gap / len(labels))


def calibration_summary(logits, labels, temperature: float, split: str = "validation") -> dict:
    """What calibration.json records: T, ECE and NLL before/after, on how many images."""
    labels = np.asarray(labels, int)
    before, after = softmax(two_class_logits(logits)), softmax(two_class_logits(logits) / temperature)
    return {
        "method": "temperature", "temperature": round(float(temperature), 6), "fitted_on": split,
        "images": int(len(labels)),
        "ece_before": expected_calibration_error(before, labels), "ece_after": expected_calibration_error(after, labels),
        "nll_before": nll(logits, labels, 1.0) if len(labels) else None,
        "nll_after": nll(logits, labels, temperature) if len(labels) else None,
    }


def plot_reliability(probabilities_before, probabilities_after, labels, path, bins: int = 10) -> Path:
    """Reliability diagram: accuracy per confidence bin, before and after scaling, against the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transferkit.analysis.figures import _save

    labels = np.asarray(labels, int)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect")
    for probabilities, name, color in ((probabilities_before, "before", "#d62728"),
                                       (probabilities_after, "after", "#1f77b4")):
        probabilities = np.asarray(probabilities, np.float64)
        confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
        which = np.minimum((confidence * bins).astype(int), bins - 1)
        xs = [confidence[which == b].mean() for b in range(bins) if (which == b).any()]
        ys = [correct[which == b].mean() for b in range(bins) if (which == b).any()]
        ece = expected_calibration_error(probabilities, labels)
        ax.plot(xs, ys, marker="o", color=color, label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Reliability, {len(labels)} held-out images")
    ax.legend(loc="upper left")
    return _save(fig, path)


def evaluation_calibration(calibrated_probabilities, labels, calibration: dict | None) -> dict | None:
    """ECE of an evaluation's (calibrated) probabilities and of the same ones unscaled; None without calibration."""
    from transferkit.modeling.openset import apply_temperature

    if not calibration:
        return None
    temperature = float(calibration["temperature"])
    raw = apply_temperature(calibrated_probabilities, 1.0 / temperature)  # exact inverse of the scaling
    return {"temperature": temperature, "ece": expected_calibration_error(calibrated_probabilities, labels),
            "ece_uncalibrated": expected_calibration_error(raw, labels),
            "fitted_on": calibration.get("fitted_on"), "fitted_images": calibration.get("images")}


def write_reliability(trained: TrainedModel, held_out, run_dir) -> None:
    """reliability.png: the validation images' confidence against accuracy, before and after scaling."""
    logits = two_class_logits(held_out.logits)
    plot_reliability(softmax(logits), softmax(logits / trained.temperature), held_out.labels,
                     Path(run_dir) / rundir.RELIABILITY_FILE)
