"""How long and how fast: epochs and cached views from the data size, class weights, the learning-rate schedule."""

from __future__ import annotations

import math

import keras
import numpy as np

# Defaults are set in optimisation steps so they hold from a few hundred images
# (a handful of steps per epoch) to tens of thousands (hundreds per epoch).
HEAD_MIN_STEPS, HEAD_EPOCH_RANGE = 300, (10, 50)
FINE_TUNE_MIN_STEPS, FINE_TUNE_EPOCH_RANGE = 100, (2, 15)
# A run started from a trained one (`--from`) starts close to its optimum: a third of the head's
# steps, half of fine-tuning's, and one (un-augmented) cached view, since the parent has seen
# augmented views already; halving the backbone passes (BENCHMARKS.md, "Updating a model").
UPDATE_HEAD_MIN_STEPS, UPDATE_HEAD_EPOCH_RANGE = 100, (5, 20)
UPDATE_FINE_TUNE_MIN_STEPS, UPDATE_FINE_TUNE_EPOCH_RANGE = 50, (1, 8)
UPDATE_VIEWS = 1


def stage_epochs(num_train: int, batch_size: int, update: bool) -> tuple[int, int]:
    """Automatic (head, fine-tuning) epochs; `update`: for a run that starts from a trained one."""
    if update:
        return (auto_epochs(num_train, batch_size, UPDATE_HEAD_MIN_STEPS, UPDATE_HEAD_EPOCH_RANGE),
                auto_epochs(num_train, batch_size, UPDATE_FINE_TUNE_MIN_STEPS, UPDATE_FINE_TUNE_EPOCH_RANGE))
    return (auto_epochs(num_train, batch_size, HEAD_MIN_STEPS, HEAD_EPOCH_RANGE),
            auto_epochs(num_train, batch_size, FINE_TUNE_MIN_STEPS, FINE_TUNE_EPOCH_RANGE))


def _clamp(value: float, bounds: tuple[int, int]) -> int:
    return int(min(bounds[1], max(bounds[0], value)))


def auto_epochs(num_train: int, batch_size: int, min_steps: int, epoch_range: tuple[int, int]) -> int:
    """Enough epochs for `min_steps` optimiser steps, within `epoch_range`."""
    steps_per_epoch = max(1, math.ceil(num_train / batch_size))
    return _clamp(math.ceil(min_steps / steps_per_epoch), epoch_range)


# Above this ratio of largest to smallest training class, class_weight="auto" weighs
# each class inversely to its size, so a minority class is not simply ignored.
CLASS_WEIGHT_RATIO = 3.0


def balanced_class_weights(counts: dict[str, int], mode: str) -> dict[int, float] | None:
    """{class index: weight} for Keras, or None when weighting is off or not needed."""
    values = np.asarray(list(counts.values()), dtype=float)
    if mode == "none" or (mode == "auto" and values.max() / values.min() <= CLASS_WEIGHT_RATIO):
        return None
    return {i: float(values.sum() / (len(values) * n)) for i, n in enumerate(values)}


# Cached views per training image: small sets need more augmented draws, large ones
# bring their own variety (and each view costs one backbone pass per image).
MIN_AUGMENTED_SAMPLES, VIEW_RANGE = 2000, (2, 8)


def auto_views(num_train: int, update: bool = False) -> int:
    """Enough views for about `MIN_AUGMENTED_SAMPLES` cached samples, within `VIEW_RANGE`; `UPDATE_VIEWS` for
    a run that starts from a trained one."""
    if update:
        return UPDATE_VIEWS
    return _clamp(round(MIN_AUGMENTED_SAMPLES / max(1, num_train)), VIEW_RANGE)


def cosine_schedule(learning_rate: float, total_steps: int, warmup_fraction: float = 0.0):
    """Cosine decay over a stage, after an optional linear warm-up from zero.

    The warm-up matters for fine-tuning: Adam's first updates are about the size of
    the learning rate for every weight, which jolts pretrained layers unless ramped.
    """
    total_steps = max(1, int(total_steps))
    warmup = int(round(total_steps * warmup_fraction))
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total_steps - warmup), warmup_target=learning_rate, warmup_steps=warmup
    )


# Fine-tuning ramps its learning rate up over this fraction of its steps (see `cosine_schedule`).
FINE_TUNE_WARMUP = 0.1
