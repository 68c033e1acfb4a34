"""Metrics, confusion matrix and the misclassified gallery for a labelled image set.

The numbers come from scikit-learn; the figures from matplotlib. Every prediction
is kept next to the path it came from (the `Evaluation` rows), so a CSV, a gallery
tile and a metric always describe the same file. Unreadable files are skipped and
listed, never allowed to shift the rows of the files after them.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from transferkit import data  # noqa: E402
from transferkit.runs import folder as rundir
from transferkit.runs.trained import TrainedModel
from transferkit.errors import ConfigError, DataError, RunDirError  # noqa: E402

logger = logging.getLogger("transferkit")

VALIDATION = "validation"
GALLERY_LIMIT = 48  # tiles in the misclassified gallery; the CSV lists every one
TOP_K_VALUES = (2, 3, 5)
EPSILON = 1e-15  # probability floor for log losses


# -- figures ---------------------------------------------------------------------


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG through a temporary file, then close it."""
    with rundir.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def wrap_label(text: str, width: int = 18, max_lines: int = 2) -> str:
    """A class name for a figure: at most `max_lines` lines of `width` characters (ellipsis if cut)."""
    lines = textwrap.wrap(str(text), width, break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "\u2026"
    return "\n".join(lines).replace("$", r"\$")  # a '$' in a class name is not matplotlib math


def thumbnail(image: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Shrink (never enlarge) an RGB array so its longer side is at most `max_side`."""
    from PIL import Image

    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


# -- which files ---------------------------------------------------------------------


def _class_folders(data_dir: Path) -> list[str]:
    return sorted(
        p.name for p in data_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in data.IGNORED_NAMES
    )


def _evaluated_split(data_dir: Path) -> Path:
    """A pre-split folder (train/, validation/, test/, as `train` takes it) is scored on test/, else validation/."""
    train, validation, test = data.resolve_layout(data_dir)
    if train == data_dir:
        return data_dir
    chosen = test or validation or train
    logger.warning("'%s' is already split: evaluating on its %s/ folder.", data_dir, chosen.name)
    return chosen


def labelled_folder(data_dir, classes: Sequence[str], allow_class_subset: bool = False):
    """Images of `data_dir` labelled with indices into the model's `classes`.

    Returns (files, missing, extra): the model classes without a folder and the
    folders the model does not know. Any difference is an error unless
    `allow_class_subset`, in which case only the shared classes are read.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is a file, not a folder" if data_dir.exists() else "does not exist"
        raise DataError(
            f"Data directory '{data_dir}' {what}. Pass a folder holding one sub-folder of "
            f"images per class of the model ({', '.join(classes)})."
        )
    data_dir = _evaluated_split(data_dir)
    found = _class_folders(data_dir)
    missing = [name for name in classes if name not in found]
    extra = [name for name in found if name not in classes]
    shared = [name for name in classes if name in found]
    if not shared:
        raise DataError(
            f"'{data_dir}' has no class folder the model knows: it holds {found or 'no folders'}, "
            f"the model's classes are {list(classes)}."
        )
    if (missing or extra) and not allow_class_subset:
        raise DataError(
            f"The classes in '{data_dir}' differ from the model's {list(classes)}: missing {missing}, "
            f"extra {extra}. Use a folder with the model's classes, or pass --allow-class-subset "
            f"(API: allow_class_subset=True) to evaluate on the {len(shared)} shared class(es) only."
        )
    paths, labels = [], []
    for name in shared:
        images = data.find_images(data_dir / name)
        if not images:
            raise DataError(
                f"Class folder '{data_dir / name}' holds no images "
                f"(looked for {', '.join(data.IMAGE_EXTENSIONS)}). Add images or remove the folder."
            )
        paths.extend(images)
        labels.extend([list(classes).index(name)] * len(images))
    return data.LabelledFiles(tuple(paths), tuple(labels), tuple(classes)), missing, extra


# -- the evaluation --------------------------------------------------------------------


@dataclass
class Evaluation:
    """Per-image results, row i of every array belonging to `paths[i]`."""

    classes: tuple[str, ...]
    paths: list[str]
    labels: np.ndarray  # true class index
    probabilities: np.ndarray  # (n, n_classes)
    unreadable: list[str] = field(default_factory=list)
    source: str = ""
    missing_classes: list[str] = field(default_factory=list)
    extra_classes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """Per-image cross-entropy, -log p(true class)."""
        true_p = self.probabilities[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(true_p, EPSILON, 1.0))

    def misclassified(self) -> np.ndarray:
        """Indices of the wrongly predicted images, highest loss first."""
        wrong = np.flatnonzero(self.predicted != self.labels)
        return wrong[np.argsort(-self.losses[wrong], kind="stable")]

    def rows(self) -> list[dict]:
        """One CSV row per image: truth, prediction, confidence, loss, every probability."""
        predicted, confidence, losses = self.predicted, self.confidence, self.losses
        return [
            {
                "path": path,
                "true": self.classes[self.labels[i]],
                "predicted": self.classes[predicted[i]],
                "correct": int(predicted[i] == self.labels[i]),
                "confidence": f"{confidence[i]:.6f}",
                "true_class_probability": f"{self.probabilities[i, self.labels[i]]:.6f}",
                "loss": f"{losses[i]:.6f}",
                **{f"p[{name}]": f"{self.probabilities[i, j]:.6f}" for j, name in enumerate(self.classes)},
            }
            for i, path in enumerate(self.paths)
        ]

    def metrics(self) -> dict:
        return compute_metrics(self.labels, self.probabilities, self.classes) | {
            "source": self.source,
            "unreadable": list(self.unreadable),
            "misclassified": int(len(self.misclassified())),
            "missing_classes": list(self.missing_classes),
            "extra_classes": list(self.extra_classes),
        }


def evaluate_files(
    trained: TrainedModel, files: data.LabelledFiles, batch_size: int | None = None, source: str = "",
    missing_classes: Sequence[str] = (), extra_classes: Sequence[str] = (),
) -> Evaluation:
    """Predict every file of `files` (labels index the model's classes)."""
    if tuple(files.classes) != tuple(trained.classes):
        raise ConfigError(
            f"The files are labelled with classes {list(files.classes)}, the model has {trained.classes}."
        )
    probabilities = trained.predict_proba(list(files.paths), batch_size)
    readable = ~np.isnan(probabilities).any(axis=1)
    unreadable = [p for p, ok in zip(files.paths, readable) if not ok]
    if unreadable:
        logger.warning("Skipped %d unreadable image(s): %s", len(unreadable), ", ".join(unreadable[:5]))
    if not readable.any():
        raise DataError(f"None of the {len(files)} images of {source or 'the data'} could be read.")
    probabilities = probabilities[readable]
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)  # float32 softmax drift
    return Evaluation(
        classes=tuple(trained.classes),
        paths=[p for p, ok in zip(files.paths, readable) if ok],
        labels=np.asarray(files.labels, dtype=int)[readable],
        probabilities=probabilities,
        unreadable=unreadable,
        source=source,
        missing_classes=list(missing_classes),
        extra_classes=list(extra_classes),
    )


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class and averaged precision/recall/F1, confusion matrix, AUC or top-k, log loss.

    Per-class rows and the macro/weighted averages cover the classes present in
    `labels` (all of them unless a class subset is evaluated); the confusion matrix
    always spans every model class, so it sums to the number of images.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
        top_k_accuracy_score,
    )

    labels = np.asarray(labels, dtype=int)
    num_classes = len(classes)
    all_labels = np.arange(num_classes)
    predicted = probabilities.argmax(axis=1)
    present = np.unique(labels)

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=present, zero_division=0
    )
    per_class = {
        classes[c]: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(present, precision, recall, f1, support)
    }
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predicted, labels=present, average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(labels))}

    metrics = {
        "images": int(len(labels)),
        "classes": list(classes),
        "accuracy": float(accuracy_score(labels, predicted)),
        "loss": float(log_loss(labels, probabilities, labels=all_labels)),
        "per_class": per_class,
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion_matrix": confusion_matrix(labels, predicted, labels=all_labels).tolist(),
    }
    metrics["log_loss"] = metrics["loss"]
    if num_classes == 2:
        metrics["roc_auc"] = (
            float(roc_auc_score(labels == 1, probabilities[:, 1])) if len(present) == 2 else None
        )
    else:
        metrics["top_k_accuracy"] = {
            str(k): float(top_k_accuracy_score(labels, probabilities, k=k, labels=all_labels))
            for k in TOP_K_VALUES
            if k < num_classes
        }
    return metrics


# -- outputs -----------------------------------------------------------------------


def plot_confusion_matrix(matrix, classes: Sequence[str], path, title: str = "Confusion matrix",
                          rows: Sequence[int] | None = None) -> Path:
    """Counts in every cell, coloured by the fraction of the true class (row).

    Colouring by row keeps small classes as readable as large ones; empty cells
    are left blank from 9 classes up so a 20-class matrix stays legible. `rows`
    limits the rows to the classes that were evaluated.
    """
    matrix = np.asarray(matrix)
    rows = list(range(len(classes))) if rows is None else list(rows)
    shown = matrix[rows]
    totals = shown.sum(axis=1, keepdims=True)
    fractions = np.divide(shown, totals, out=np.zeros(shown.shape, float), where=totals > 0)
    n_rows, n_cols = shown.shape
    longest = max(len(wrap_label(c).split("\n")[0]) for c in classes)
    cell = 0.55 if n_cols <= 10 else 0.42
    width = max(5.5, n_cols * cell + 2.0 + 0.07 * longest)
    height = max(4.5, n_rows * cell + 1.5 + 0.07 * longest)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    colorbar.set_label("fraction of the true class")
    fontsize = 11 if n_cols <= 6 else 9 if n_cols <= 12 else 7
    for i in range(n_rows):
        for j in range(n_cols):
            if shown[i, j] == 0 and n_cols > 8:
                continue
            ax.text(j, i, str(shown[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if fractions[i, j] > 0.55 else "black")
    rotate = n_cols > 4 or longest > 12
    # Rotated labels run diagonally past each other only on one line; upright ones wrap.
    ax.set_xticks(range(n_cols), [wrap_label(c, 26, 1) if rotate else wrap_label(c) for c in classes],
                  fontsize=min(10, fontsize + 1))
    ax.set_yticks(range(n_rows), [wrap_label(classes[r]) for r in rows], fontsize=min(10, fontsize + 1))
    if rotate:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_misclassified(evaluation: Evaluation, path, limit: int = GALLERY_LIMIT, columns: int = 5) -> list[str]:
    """Grid of the wrongly predicted images, worst (highest loss) first; returns the paths shown.

    Each tile: true label, predicted label and the model's confidence in it.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit!r}.")
    wrong = evaluation.misclassified()
    total = len(evaluation.paths)
    if len(wrong) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No misclassified images: all {total} predicted correctly.",
                ha="center", va="center", fontsize=12)
        save_figure(fig, path)
        return []
    shown = wrong[:limit]
    columns = max(1, min(columns, len(shown)))
    rows = math.ceil(len(shown) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        ax.imshow(thumbnail(data.load_image(evaluation.paths[i])))
        true = wrap_label(evaluation.classes[evaluation.labels[i]], 16, 1)
        predicted = evaluation.classes[evaluation.predicted[i]]
        ax.set_title(
            f"true: {true}\npred: {wrap_label(predicted, 16, 1)} ({evaluation.confidence[i]:.0%})",
            fontsize=10, loc="left", color="#a01818",
        )
    capped = f", showing the {len(shown)} worst" if len(shown) < len(wrong) else ""
    fig.suptitle(
        f"Misclassified: {len(wrong)} of {total} images{capped}, worst (highest loss) first\n"
        "title: true label / predicted label (model's confidence in it)",
        fontsize=12,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return [evaluation.paths[i] for i in shown]


EVALUATION_FILES = {
    "metrics": "metrics.json",
    "predictions": "predictions.csv",
    "misclassified_csv": "misclassified.csv",
    "confusion_matrix": "confusion_matrix.png",
    "misclassified_gallery": "misclassified.png",
}


def write_evaluation(evaluation: Evaluation, out_dir) -> dict:
    """Metrics JSON, per-image and misclassified CSVs, confusion matrix and gallery PNGs in `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"Evaluation output '{out_dir}' is a file; pass a folder.")
    paths = {key: out_dir / name for key, name in EVALUATION_FILES.items()}
    metrics = evaluation.metrics()
    rows = evaluation.rows()
    rundir.write_csv(paths["predictions"], rows)
    wrong = [{"rank": rank, **rows[i]} for rank, i in enumerate(evaluation.misclassified(), start=1)]
    rundir.write_csv(paths["misclassified_csv"], wrong, ["rank", *rows[0].keys()])
    present = sorted(set(evaluation.labels.tolist()))
    plot_confusion_matrix(
        metrics["confusion_matrix"], evaluation.classes, paths["confusion_matrix"],
        title=f"Confusion matrix: {metrics['images']} images, accuracy {metrics['accuracy']:.1%}",
        rows=present,
    )
    plot_misclassified(evaluation, paths["misclassified_gallery"])
    files = {key: str(p) for key, p in paths.items()}
    rundir.write_json(paths["metrics"], metrics | {"files": files})
    return files
