"""Callbacks of both stages: best weights across stages, history rows, per-epoch checkpoints, a clean Ctrl-C."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from transferkit.runs.folder import atomic_path, write_json

LAST_WEIGHTS, BEST_WEIGHTS, STATE_FILE = "last.weights.npz", "best.weights.npz", "state.json"


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
    weights = model.get_weights()
    _save_weights(folder / LAST_WEIGHTS, weights)
    if best_is_current:
        _save_weights(folder / BEST_WEIGHTS, weights)
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
        best.best_weights = _load_weights(folder / BEST_WEIGHTS)
        best.best_epoch, best.best_loss = state["best_epoch"], state["best_loss"]
    model.set_weights(_load_weights(folder / LAST_WEIGHTS))
    return state


def _save_weights(path: Path, weights: list) -> None:
    """Plain .npz arrays: a small fraction of the time of Keras's HDF5 weights file, every epoch."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, *weights)


def _load_weights(path: Path) -> list:
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


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


TENSORBOARD_DIR = "tensorboard"


class TensorBoardLogger(keras.callbacks.Callback):
    """Per-epoch scalars of both stages into one event file, numbered by the run's epoch (not the stage's).

    One writer across both fit() calls, so `tensorboard --logdir runs/` draws each run as
    one continuous curve; the first epoch of stage 2 is marked by `fine_tuning/started`.
    Summaries are written with TensorFlow's own `tf.summary.write` and TensorBoard's
    plugin names, so runs are logged even where the `tensorboard` package is not installed.
    """

    def __init__(self, folder: Path):
        super().__init__()
        import tensorflow as tf

        self._tf = tf
        self.writer = tf.summary.create_file_writer(str(folder))
        self.stage = 1
        self._marked: set[int] = set()

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        with self.writer.as_default():
            for key, value in (logs or {}).items():
                split = "validation" if key.startswith("val_") else "train"
                self._write(f"{key.removeprefix('val_')}/{split}", float(value), step, "scalars")
            learning_rate = getattr(self.model.optimizer, "learning_rate", None)
            if learning_rate is not None:
                self._write("learning_rate", float(keras.ops.convert_to_numpy(learning_rate)), step, "scalars")
            self._write("stage", float(self.stage), step, "scalars")
            if self.stage > 1 and self.stage not in self._marked:
                self._marked.add(self.stage)
                self._write("fine_tuning/started", 1.0, step, "scalars")
                self._write("fine_tuning/note", f"stage {self.stage} starts at epoch {step}", step, "text")
        self.writer.flush()

    def _write(self, tag: str, value, step: int, plugin: str) -> None:
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        dtype = self._tf.float32 if plugin == "scalars" else self._tf.string
        self._tf.summary.write(tag, self._tf.constant(value, dtype=dtype), step=step, metadata=metadata)

    def log_images(self, pngs: dict, step: int = 0) -> None:
        """Add PNG files (samples, confusion matrix, learning curves) as TensorBoard images."""
        tf = self._tf
        with self.writer.as_default():
            for name, path in pngs.items():
                if path is not None and Path(path).is_file():
                    png = tf.io.read_file(str(path))
                    height, width = tf.io.decode_png(png, channels=3).shape[:2]
                    self._write(name, [str(width).encode(), str(height).encode(), png.numpy()], step, "images")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
