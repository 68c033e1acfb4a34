"""The two training stages, run on one model.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes the top of the
backbone and continues the same model at a lower learning rate. Across both, the
weights of the epoch with the lowest validation loss are the ones kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from transferkit.model import compile_classifier, unfreeze_from

# Defaults are set in optimisation steps so they hold from a few hundred images
# (a handful of steps per epoch) to tens of thousands (hundreds per epoch).
HEAD_MIN_STEPS, HEAD_EPOCH_RANGE = 300, (10, 50)
FINE_TUNE_MIN_STEPS, FINE_TUNE_EPOCH_RANGE = 100, (5, 15)


def auto_epochs(num_train: int, batch_size: int, min_steps: int, epoch_range: tuple[int, int]) -> int:
    """Enough epochs for `min_steps` optimiser steps, within `epoch_range`."""
    steps_per_epoch = max(1, math.ceil(num_train / batch_size))
    low, high = epoch_range
    return int(min(high, max(low, math.ceil(min_steps / steps_per_epoch))))


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
    """Remembers the weights of the lowest-validation-loss epoch, across fit() calls."""

    def __init__(self):
        super().__init__()
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and np.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_epoch = float(loss), epoch + 1
            self.best_weights = self.model.get_weights()

    def restore(self, model: keras.Model) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


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
    train_ds,
    val_ds,
    num_classes: int,
    *,
    epochs: int,
    learning_rate: float,
    fine_tune_epochs: int,
    fine_tune_learning_rate: float,
    fine_tune_at: int | str,
    patience: int | None,
    steps_per_epoch: int,
    fine_tune_warmup: float = 0.1,
    verbose: int = 1,
) -> TrainingResult:
    """Run stage 1 and (if fine_tune_epochs > 0) stage 2; leaves the best weights in `model`."""
    result = TrainingResult()
    best = BestWeights()

    def run_stage(stage: int, stage_epochs: int, lr: float, first_epoch: int):
        """Fit `stage_epochs` more epochs; `lr` is the stage's peak learning rate."""
        callbacks = [best, EpochTimer()]
        if patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
        start = time.perf_counter()
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=first_epoch - 1,
            epochs=first_epoch - 1 + stage_epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
        result.stage_seconds[f"stage{stage}"] = round(time.perf_counter() - start, 2)
        result.history.extend(_history_rows(history, stage, first_epoch, lr))

    if verbose:
        print(f"Stage 1: training the head on the frozen backbone ({epochs} epochs max, lr {learning_rate:g})")
    compile_classifier(model, num_classes, cosine_schedule(learning_rate, steps_per_epoch * epochs))
    run_stage(1, epochs, learning_rate, 1)
    best.restore(model)
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
        schedule = cosine_schedule(fine_tune_learning_rate, steps_per_epoch * fine_tune_epochs, fine_tune_warmup)
        compile_classifier(model, num_classes, schedule)
        run_stage(2, fine_tune_epochs, fine_tune_learning_rate, first)
        best.restore(model)

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
