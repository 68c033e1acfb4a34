"""The two training stages, run on one model.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes the top of the
backbone and continues the same model at a lower learning rate. Across both, the
weights of the epoch with the lowest validation loss are the ones kept.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from transferkit.model import compile_classifier, unfreeze_from
from transferkit.rundir import atomic_path, write_json

LAST_WEIGHTS, BEST_WEIGHTS, STATE_FILE = "last.weights.h5", "best.weights.h5", "state.json"

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


class EpochRecorder(keras.callbacks.Callback):
    """Appends one history row per finished epoch, so an interrupted stage keeps its rows."""

    def __init__(self, rows: list, stage: int, learning_rate: float):
        super().__init__()
        self.rows, self.stage, self.learning_rate = rows, stage, learning_rate

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({
            **{k: float(v) for k, v in (logs or {}).items()},
            "epoch": epoch + 1, "stage": self.stage, "learning_rate": self.learning_rate,
            "seconds": time.perf_counter() - self._start,
        })


class Checkpoint(keras.callbacks.Callback):
    """After every epoch: the full model's last and best weights and where training stands.

    Files are replaced atomically, so a run killed at any moment (even SIGKILL) can be
    resumed from its last completed epoch.
    """

    def __init__(self, folder, target: keras.Model, best: "BestWeights", result: "TrainingResult", stage: int):
        super().__init__()
        self.folder, self.target, self.best, self.result, self.stage = Path(folder), target, best, result, stage

    def on_epoch_end(self, epoch, logs=None):
        save_checkpoint(self.folder, self.target, self.best, self.result, self.stage,
                        best_is_current=self.best.best_epoch == epoch + 1)


def save_checkpoint(folder: Path, model: keras.Model, best: "BestWeights", result: "TrainingResult", stage: int,
                    best_is_current: bool, stage_done: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / LAST_WEIGHTS) as tmp:
        model.save_weights(tmp)
    if best_is_current:
        with atomic_path(folder / BEST_WEIGHTS) as tmp:
            model.save_weights(tmp)
    write_json(folder / STATE_FILE, {
        "stage": stage, "stage_done": stage_done, "epoch": result.history[-1]["epoch"] if result.history else 0,
        "history": result.history, "best_epoch": best.best_epoch, "best_loss": best.best_loss,
        "fine_tune_start_epoch": result.fine_tune_start_epoch, "stage_seconds": result.stage_seconds,
    })


def load_checkpoint(folder: Path, model: keras.Model, best: "BestWeights", result: "TrainingResult") -> dict:
    """Restore weights, history and the best-so-far from `folder`; returns the saved state."""
    state = json.loads((folder / STATE_FILE).read_text())
    result.history[:] = state["history"]
    result.fine_tune_start_epoch = state["fine_tune_start_epoch"]
    result.stage_seconds.update(state["stage_seconds"])
    if state["best_epoch"] is not None:
        model.load_weights(folder / BEST_WEIGHTS)
        best.best_weights, best.best_epoch, best.best_loss = model.get_weights(), state["best_epoch"], state["best_loss"]
    model.load_weights(folder / LAST_WEIGHTS)
    return state


class StopOnCtrlC(keras.callbacks.Callback):
    """Turns the first Ctrl-C into a clean stop after the current batch.

    A KeyboardInterrupt raised inside TensorFlow's input threads can abort the whole
    process; a flag checked between batches cannot. A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        super().__init__()
        self.requested = False
        self._previous = None

    def on_train_begin(self, logs=None):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def on_train_batch_end(self, batch, logs=None):
        if self.requested:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._previous is not None and not self.requested:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainingResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch, both stages
    fine_tune_start_epoch: int | None = None  # first epoch number of stage 2
    best_epoch: int | None = None
    val_accuracy_stage1: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    stage_seconds: dict = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C: the best weights so far were kept


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
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    verbose: int = 1,
) -> TrainingResult:
    """Run stage 1 and (if fine_tune_epochs > 0) stage 2; leaves the best weights in `model`.

    `stage1` is (model to fit, training data, validation data); `stage2` returns the
    same once the backbone's top is unfrozen. Both fit `model` itself in the plain
    recipe, or smaller models sharing its layers when activations are cached. With
    `checkpoint_dir`, every epoch is checkpointed there; `resume` continues from it.
    """
    result = TrainingResult()
    best = BestWeights(model)
    ctrl_c = StopOnCtrlC()
    state = load_checkpoint(checkpoint_dir, model, best, result) if resume else {"stage": 1, "epoch": 0}
    stage1_done = state["stage"] == 2 or state.get("stage_done", False)

    def run_stage(stage: int, fit_model, train_data, val_data, stage_epochs: int, lr: float, first_epoch: int):
        """Fit `stage_epochs` more epochs; `lr` is the stage's peak learning rate."""
        if ctrl_c.requested:
            raise KeyboardInterrupt
        callbacks = [best, EpochRecorder(result.history, stage, lr), ctrl_c]
        if checkpoint_dir is not None:
            callbacks.append(Checkpoint(checkpoint_dir, model, best, result, stage))
        if patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
        start = time.perf_counter()
        steps_done = stage_steps_done(stage, first_epoch)
        if steps_done:  # a resumed stage: its learning-rate schedule continues where it was
            fit_model.optimizer.iterations.assign(steps_done)
        fit_model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=first_epoch - 1,
            epochs=first_epoch - 1 + stage_epochs,
            callbacks=callbacks,
            class_weight=class_weight,
            verbose=verbose,
        )
        result.stage_seconds[f"stage{stage}"] = round(time.perf_counter() - start, 2)
        if ctrl_c.requested:
            raise KeyboardInterrupt  # ends both stages; handled below like a hard Ctrl-C

    def stage_steps_done(stage: int, first_epoch: int) -> int:
        """Optimiser steps a resumed stage already took, so its schedule continues."""
        stage_start = 1 if stage == 1 else result.fine_tune_start_epoch
        return (first_epoch - stage_start) * steps_per_epoch

    def both_stages():
        if not stage1_done:
            if verbose:
                print(f"Stage 1: training the head on the frozen backbone ({epochs} epochs max, lr {learning_rate:g})")
            compile_classifier(stage1[0], num_classes, cosine_schedule(learning_rate, steps_per_epoch * epochs))
            done = state["epoch"]
            run_stage(1, *stage1, epochs - done, learning_rate, done + 1)
            best.restore()
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, model, best, result, 1, best_is_current=False, stage_done=True)
        if fine_tune_epochs > 0:
            trainable = unfreeze_from(model, fine_tune_at)
            first = result.fine_tune_start_epoch or len(result.history) + 1
            result.fine_tune_start_epoch = first
            if verbose:
                print(
                    f"Stage 2: fine-tuning the top {trainable} backbone layers from {fine_tune_at!r} "
                    f"({fine_tune_epochs} epochs max, lr {fine_tune_learning_rate:g})"
                )
            fit_model, train_data, val_data = stage2()
            schedule = cosine_schedule(fine_tune_learning_rate, steps_per_epoch * fine_tune_epochs, fine_tune_warmup)
            compile_classifier(fit_model, num_classes, schedule)
            done = state["epoch"] - first + 1 if state["stage"] == 2 else 0
            run_stage(2, fit_model, train_data, val_data, fine_tune_epochs - done, fine_tune_learning_rate,
                      first + done)
            best.restore()

    try:
        both_stages()
    except KeyboardInterrupt:
        if best.best_weights is None:
            raise  # not one epoch finished: nothing worth keeping
        result.interrupted = True
        best.restore()
        if verbose:
            print(f"\nInterrupted: keeping the best weights so far (epoch {best.best_epoch}).")
    head_rows = [r for r in result.history if r["stage"] == 1]
    result.val_accuracy_stage1 = _best_row(head_rows, _best_epoch(head_rows)).get("val_accuracy")
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


def _best_epoch(history: list[dict]) -> int | None:
    """The epoch of lowest validation loss among `history` rows."""
    rows = [r for r in history if np.isfinite(r.get("val_loss", np.nan))]
    return min(rows, key=lambda r: r["val_loss"])["epoch"] if rows else None
