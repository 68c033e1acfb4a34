"""`--time-budget`: fit the recipe to the time a user has, measured on this machine.

The cost of a cached run is mostly backbone passes (one per image and view, then one per
image after training for calibration and the unknown detector) plus the epochs. The
passes are timed on a few real batches before anything is chosen; the views and, only
if even one view will not fit, the image size follow from that. Epochs are not guessed:
each stage gets a deadline and stops after the last epoch that fits (`Deadline`), with
the best epoch's weights kept, so the run always ends with a saved model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np

# Shares of what is left after the measured fixed costs.
CACHE_SHARE, HEAD_SHARE = 0.4, 0.25  # backbone passes for the cache; stage 1 ends at this share of the rest
SAVE_SECONDS, REPORT_SECONDS = 8.0, 15.0  # writing the run folder and exiting; report.html and figures
TRACE_SECONDS = 5.0  # building a stage's training step before its first epoch
FALLBACK_SIZES = (160, 128, 96)  # tried in turn when one view at the backbone's size does not fit


@dataclass
class BudgetPlan:
    image_size: int
    views: int
    head_deadline: float  # time.perf_counter() values
    fine_tune_deadline: float
    fine_tune_first_epoch: float  # seconds stage 2 needs for one epoch; it is skipped when less is left
    write_report: bool
    reasons: list[str] = field(default_factory=list)
    extractor: object = None  # the cache's ViewExtractor that was timed, reused when the size stays

    def describe(self) -> str:
        return "; ".join(self.reasons)


def plan_budget(budget: float, started: float, seconds_per_image: float, measured_size: int, n_train: int,
                n_val: int, max_views: int, write_report: bool, sizes: tuple = FALLBACK_SIZES) -> BudgetPlan:
    """Views and image size for the cache, and stage deadlines, from one measured cost per backbone pass.
    `sizes`: the smaller image sizes it may fall back to (none for a model whose size is fixed)."""
    now = time.perf_counter()
    deadline = started + budget
    after_training = 1.3 * (n_train + n_val) * seconds_per_image + SAVE_SECONDS
    reasons = [f"{budget:.0f} s budget, {now - started:.0f} s used before training; "
               f"{1 / seconds_per_image:.0f} images/s through the backbone at {measured_size} px"]
    keep_report = write_report and deadline - now - after_training > 4 * REPORT_SECONDS
    if write_report and not keep_report:
        reasons.append("report.html skipped (it would not fit)")
    left = deadline - now - after_training - (REPORT_SECONDS if keep_report else 0)
    size, cost = measured_size, seconds_per_image
    views = int((CACHE_SHARE * left - n_val * cost) // max(n_train * cost, 1e-9))
    for smaller in sizes:
        if views >= 1:
            break
        if smaller >= size:  # only ever smaller than the size measured
            continue
        size, cost = smaller, seconds_per_image * (smaller / measured_size) ** 2
        views = int((CACHE_SHARE * left - n_val * cost) // max(n_train * cost, 1e-9))
        reasons.append(f"{smaller} px: one view at {measured_size} px would not fit")
    views = max(1, min(max_views, views))
    reasons.append(f"{views} cached view{'s' * (views > 1)} per image at {size} px")
    cache_end = now + (n_train * views + n_val) * cost
    rest = max(0.0, deadline - cache_end - after_training - (REPORT_SECONDS if keep_report else 0))
    head = max(HEAD_SHARE * rest, min(rest, TRACE_SECONDS + 5.0))  # a few head epochs come first
    head_deadline, fine_tune_deadline = cache_end + head, cache_end + rest
    reasons.append(f"epochs until {head_deadline - started:.0f} s (head) and {fine_tune_deadline - started:.0f} s "
                   "(fine-tuning), best epoch kept")
    first_epoch = TRACE_SECONDS + 3 * n_train * cost  # training the top costs about three forward passes
    return BudgetPlan(size, views, head_deadline, fine_tune_deadline, first_epoch, keep_report, reasons)


class Deadline(keras.callbacks.Callback):
    """Stops a stage after the last epoch that ends before `deadline` (by the slowest epoch so far)."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline, self.slowest, self.started = deadline, 0.0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.slowest = max(self.slowest, now - self.started)
        if now + self.slowest > self.deadline:
            self.model.stop_training = True


def measure_pass(extractor, paths, image_size: int, batch_size: int, views: int = 2) -> float:
    """Seconds per cached view (decoding, augmentation and one backbone pass), timed on real
    training images after a first batch that picks (and converts to) the runtime."""
    sample = list(paths[: batch_size * 3])
    pooled = np.zeros((len(sample), views, extractor.pooled_dim), np.float32)
    boundary = (np.zeros((len(sample), views, *extractor.boundary_shape), np.float16)
                if extractor.boundary_shape else None)
    warm = min(batch_size, max(1, len(sample) // 2))
    extractor.extract(sample[:warm], image_size, 1, batch_size, None if boundary is None else boundary[:warm],
                      pooled[:warm])
    started = time.perf_counter()
    extractor.extract(sample[warm:], image_size, views, batch_size, None if boundary is None else boundary[warm:],
                      pooled[warm:])
    return (time.perf_counter() - started) / max(1, (len(sample) - warm) * views)
