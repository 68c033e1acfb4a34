"""The two training stages, run on one model.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes the top of the
backbone and continues the same model at a lower learning rate. Across both, the
weights of the epoch with the lowest validation loss are the ones kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np

from transferkit.model import compile_classifier, unfreeze_from

# Defaults are set in optimisation steps so they hold from a few hundred images
# (a handful of steps per epoch) to tens of thousands (hundreds per epoch).
HEAD_MIN_STEPS, HEAD_EPOCH_RANGE = 300, (10, 50)
FINE_TUNE_MIN_STEPS, FINE_TUNE_EPOCH_RANGE = 100, (2, 15)


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


def auto_views(num_train: int) -> int:
    """Enough views for about `MIN_AUGMENTED_SAMPLES` cached samples, within `VIEW_RANGE`."""
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


class BestWeights(keras.callbacks.Callback):
    """Remembers `target`'s weights at the lowest validation loss, across fit() calls.

    `target` is the full model even when a stage fits a smaller model that shares
    its layers (cached training).
    """

    def __init__(self, target: keras.Model):
        super().__init__()
        self.target = target
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and np.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_epoch = float(loss), epoch + 1
            self.best_weights = self.target.get_weights()

    def restore(self) -> None:
        if self.best_weights is not None:
            self.target.set_weights(self.best_weights)


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start


@dataclass
class TrainingResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch, both stages
    fine_tune_start_epoch: int | None = None  # first epoch number of stage 2
    best_epoch: int | None = None
    val_accuracy_stage1: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    stage_seconds: dict = field(default_factory=dict)


def _history_rows(history: keras.callbacks.History, stage: int, first_epoch: int, learning_rate: float):
    keys = list(history.history)
    epochs = len(history.history[keys[0]]) if keys else 0
    return [
        {"epoch": first_epoch + i, "stage": stage, "learning_rate": learning_rate,
         **{k: float(history.history[k][i]) for k in keys}}
        for i in range(epochs)
    ]


def train_two_stages(
    model: keras.Model,
    num_classes: int,
    stage1: tuple,
    stage2: Callable[[], tuple],
    *,
    epochs: int,
    learning_rate: float,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float,
    fine_tune_at: int | str,
    patience: int | None,
    steps_per_epoch: int,
    class_weight: dict | None = None,
    fine_tune_warmup: float = 0.1,
    verbose: int = 1,
) -> TrainingResult:
    """Run stage 1 and (if fine_tune_epochs > 0) stage 2; leaves the best weights in `model`.

    `stage1` is (model to fit, training data, validation data); `stage2` returns the
    same once the backbone's top is unfrozen. Both fit `model` itself in the plain
    recipe, or smaller models sharing its layers when activations are cached.
    """
    result = TrainingResult()
    best = BestWeights(model)

    def run_stage(stage: int, fit_model, train_data, val_data, stage_epochs: int, lr: float, first_epoch: int):
        """Fit `stage_epochs` more epochs; `lr` is the stage's peak learning rate."""
        callbacks = [best, EpochTimer()]
        if patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
        start = time.perf_counter()
        history = fit_model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=first_epoch - 1,
            epochs=first_epoch - 1 + stage_epochs,
            callbacks=callbacks,
            class_weight=class_weight,
            verbose=verbose,
        )
        result.stage_seconds[f"stage{stage}"] = round(time.perf_counter() - start, 2)
        result.history.extend(_history_rows(history, stage, first_epoch, lr))

    if verbose:
        print(f"Stage 1: training the head on the frozen backbone ({epochs} epochs max, lr {learning_rate:g})")
    compile_classifier(stage1[0], num_classes, cosine_schedule(learning_rate, steps_per_epoch * epochs))
    run_stage(1, *stage1, epochs, learning_rate, 1)
    best.restore()
    result.val_accuracy_stage1 = _best_row(result.history, best.best_epoch).get("val_accuracy")

    if fine_tune_epochs > 0:
        trainable = unfreeze_from(model, fine_tune_at)
        first = len(result.history) + 1
        result.fine_tune_start_epoch = first
        if verbose:
            print(
                f"Stage 2: fine-tuning the top {trainable} backbone layers from {fine_tune_at!r} "
                f"({fine_tune_epochs} epochs max, lr {fine_tune_learning_rate:g})"
            )
        fit_model, train_data, val_data = stage2()
        schedule = cosine_schedule(fine_tune_learning_rate, steps_per_epoch * fine_tune_epochs, fine_tune_warmup)
        compile_classifier(fit_model, num_classes, schedule)
        run_stage(2, fit_model, train_data, val_data, fine_tune_epochs, fine_tune_learning_rate, first)
        best.restore()

    row = _best_row(result.history, best.best_epoch)
    result.best_epoch = best.best_epoch
    result.val_accuracy = row.get("val_accuracy")
    result.val_loss = row.get("val_loss")
    return result


def _best_row(history: list[dict], epoch: int | None) -> dict:
    for row in history:
        if row["epoch"] == epoch:
            return row
    return history[-1] if history else {}
