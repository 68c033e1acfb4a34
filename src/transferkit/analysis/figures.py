"""Figures written into a run directory (matplotlib, headless)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from transferkit.runs.folder import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def plot_learning_curves(history: Sequence[dict], fine_tune_start_epoch: int | None, path) -> Path:
    """Accuracy and loss per epoch, train vs validation, fine-tuning start marked."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, [row.get(metric, np.nan) for row in history], "o-", ms=3, label="training")
        ax.plot(epochs, [row.get(f"val_{metric}", np.nan) for row in history], "o-", ms=3, label="validation")
        if fine_tune_start_epoch is not None:
            ax.axvline(fine_tune_start_epoch - 0.5, color="0.4", ls="--", lw=1, label="fine-tuning starts")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if metric == "accuracy" else "upper right", fontsize=8)
    axes[0].set_ylim(top=1.01)
    fig.suptitle("Learning curves")
    return _save(fig, path)


def plot_image_grid(images: Sequence[np.ndarray], titles: Sequence[str], path, columns: int = 6) -> Path:
    """A grid of uint8 RGB images, each with a (wrapped) title."""
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(np.asarray(image, dtype=np.uint8))
        ax.set_title("\n".join(textwrap.wrap(title, 22)[:2]), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
