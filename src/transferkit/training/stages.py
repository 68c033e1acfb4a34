"""The training stages, run on one model as a loop over stage descriptions.

Stage 1 trains the head on a frozen backbone; stage 2 unfreezes the top of the
backbone and continues the same model at a lower learning rate. Across both, the
weights of the epoch with the lowest validation loss are the ones kept. A stage is
a description (`Stage`): how many epochs at which peak learning rate, and how to get
the model it fits with its data once it starts. Resuming from a checkpoint is worked
out in one place, `_epochs_done`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from transferkit.modeling.classifier import compile_classifier
from transferkit.training.callbacks import (
    BestWeights, Checkpoint, EpochRecorder, StopOnCtrlC, TrainingResult, load_checkpoint, save_checkpoint,
)
from transferkit.training.budget import Deadline
from transferkit.training.schedules import cosine_schedule


@dataclass(frozen=True)
class Stage:
    """One stage: `prepare()` returns (model to fit, training data, validation data) when the stage starts.

    In the plain recipe the model to fit is the full model; with cached activations it
    is a smaller model sharing the full model's layers. `prepare` is also where stage 2
    unfreezes the backbone's top.
    """

    number: int
    title: str
    epochs: int
    learning_rate: float
    prepare: Callable[[], tuple]
    warmup: float = 0.0  # fraction of the stage's steps spent ramping the learning rate up from zero
    deadline: float | None = None  # time.perf_counter() by which the stage's last epoch must end (--time-budget)
    min_seconds: float = 0.0  # with a deadline: the stage is skipped when less time than this is left
    # set: the stage is solved in closed form (the head's logistic regression) and recorded as one epoch
    solve: Callable[[], None] | None = None


def run_stages(
    model: keras.Model,
    num_classes: int,
    stages: list[Stage],
    *,
    patience: int | None,
    steps_per_epoch: int,
    class_weight: dict | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    verbose: int = 1,
    extra_callbacks: tuple = (),
) -> TrainingResult:
    """Run each stage with epochs > 0 in turn; leaves the best weights in `model`.

    With `checkpoint_dir`, every epoch is checkpointed there; `resume` continues from it.
    `extra_callbacks` (loggers: TensorBoard, MLflow) see every epoch of every stage; one
    with a `stage` attribute is told which stage runs.
    """
    result = TrainingResult()
    best = BestWeights(model)
    ctrl_c = StopOnCtrlC()
    state = load_checkpoint(checkpoint_dir, model, best, result) if resume else {"stage": 1, "epoch": 0}
    try:
        for stage in stages:
            if stage.epochs <= 0:
                continue
            first = 1 if stage.number == 1 else (result.fine_tune_start_epoch or len(result.history) + 1)
            done = _epochs_done(state, stage.number, first)
            if done is None:
                continue
            if stage.number > 1 and stage.deadline is not None and time.perf_counter() + stage.min_seconds > stage.deadline:
                if verbose:
                    print(f"{stage.title}: skipped, the time budget is used up.")
                continue
            if stage.number > 1:
                result.fine_tune_start_epoch = first
            fit_model, train_data, val_data = stage.prepare()
            if verbose:
                print(stage.title if stage.solve else f"{stage.title} ({stage.epochs} epochs max, "
                                                      f"lr {stage.learning_rate:g})")
            schedule = cosine_schedule(stage.learning_rate, steps_per_epoch * stage.epochs, stage.warmup)
            compile_classifier(fit_model, num_classes, schedule)
            if done:  # a resumed stage: its learning-rate schedule continues where it was
                fit_model.optimizer.iterations.assign(done * steps_per_epoch)
            callbacks = [best, EpochRecorder(result.history, stage.number, stage.learning_rate), ctrl_c]
            if checkpoint_dir is not None:
                callbacks.append(Checkpoint(checkpoint_dir, model, best, result, stage.number))
            for extra in extra_callbacks:
                if hasattr(extra, "stage"):
                    extra.stage = stage.number
                callbacks.append(extra)
            if patience:
                callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
            if stage.deadline is not None:
                callbacks.append(Deadline(stage.deadline))
            started = time.perf_counter()
            if stage.solve is not None:
                _solved_epoch(fit_model, stage.solve, train_data, val_data, callbacks, first - 1)
            else:
                fit_model.fit(train_data, validation_data=val_data, initial_epoch=first - 1 + done,
                              epochs=first - 1 + stage.epochs, callbacks=callbacks, class_weight=class_weight,
                              verbose=verbose)
            result.stage_seconds[f"stage{stage.number}"] = round(time.perf_counter() - started, 2)
            if ctrl_c.requested:
                raise KeyboardInterrupt  # ends every stage; handled below like a hard Ctrl-C
            best.restore()
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, model, best, result, stage.number, best_is_current=False,
                                stage_done=True)
    except KeyboardInterrupt:
        if best.best_weights is None:
            raise  # not one epoch finished: nothing worth keeping
        result.interrupted = True
        best.restore()
        if verbose:
            print(f"\nInterrupted: keeping the best weights so far (epoch {best.best_epoch}).")
    head_rows = [r for r in result.history if r["stage"] == 1]
    result.val_accuracy_stage1 = _row(head_rows, _best_epoch(head_rows)).get("val_accuracy")
    row = _row(result.history, best.best_epoch)
    result.best_epoch = best.best_epoch
    result.val_accuracy = row.get("val_accuracy")
    result.val_loss = row.get("val_loss")
    return result


def _solved_epoch(model: keras.Model, solve: Callable[[], None], train_data, val_data, callbacks: list,
                  epoch: int) -> None:
    """Solve, then score the result as one epoch, so best weights, history rows, checkpoints and
    loggers treat it like any fitted epoch."""
    hooks = keras.callbacks.CallbackList(callbacks, model=model)
    hooks.on_train_begin()
    hooks.on_epoch_begin(epoch)
    solve()
    logs = model.evaluate(train_data, verbose=0, return_dict=True)
    logs.update({f"val_{k}": v for k, v in model.evaluate(val_data, verbose=0, return_dict=True).items()})
    hooks.on_epoch_end(epoch, logs)
    hooks.on_train_end(logs)


def _epochs_done(state: dict, stage: int, first_epoch: int) -> int | None:
    """Epochs of `stage` a checkpoint already holds; None when the stage finished before."""
    if state["stage"] > stage or (state["stage"] == stage and state.get("stage_done")):
        return None
    return state["epoch"] - first_epoch + 1 if state["stage"] == stage else 0


def _row(history: list[dict], epoch: int | None) -> dict:
    return next((row for row in history if row["epoch"] == epoch), history[-1] if history else {})


def _best_epoch(history: list[dict]) -> int | None:
    """The epoch of lowest validation loss among `history` rows."""
    rows = [r for r in history if np.isfinite(r.get("val_loss", np.nan))]
    return min(rows, key=lambda r: r["val_loss"])["epoch"] if rows else None
