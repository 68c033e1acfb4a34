"""The folder layout: which files are images, which folders are classes, which are splits.

The layout is Keras's `image_dataset_from_directory` layout: one sub-folder per
class, labels in sorted folder-name order. `find_images` is the one walker every
part of transferkit (training, doctor, evaluate, predict) uses, so they all agree on
what an image is. Files on disk are only ever read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from transferkit.errors import DataError

logger = logging.getLogger("transferkit")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Operating-system litter that is never a class or an image.
IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini", "@eaDir", "$RECYCLE.BIN", "System Volume Information"}
# Pillow's own default; larger images are refused as possible decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class LabelledFiles:
    """Image paths with integer labels indexing `classes`."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def subset(self, indices: Iterable[int]) -> "LabelledFiles":
        indices = list(indices)
        return LabelledFiles(
            tuple(self.paths[i] for i in indices),
            tuple(self.labels[i] for i in indices),
            self.classes,
        )


def is_visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_NAMES


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(path)
    return is_visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def walk_files(folder: str | os.PathLike, notify: Callable[[str, str, str], None] | None = None) -> list[str]:
    """Every visible file under `folder`, recursively, sorted; hidden files and OS litter skipped.

    Symbolic links are followed once: a folder already visited, or one leading back to
    an ancestor, is a loop and not entered again. `notify(event, path, detail)` hears
    what the walk decided, for reports: "symlink-loop" (detail: where it leads),
    "symlink" (a linked folder, followed), "nested-folder", "unreadable" (cannot be listed).
    """
    notify = notify or (lambda event, path, detail: None)
    start = os.path.realpath(folder)
    seen, files = {start}, []

    def unlistable(error: OSError) -> None:
        notify("unreadable", error.filename or str(folder), error.strerror or str(error))

    for root, dirs, names in os.walk(folder, followlinks=True, onerror=unlistable):
        kept = []
        for d in sorted(dirs):
            full = os.path.join(root, d)
            if not is_visible(d):
                continue
            real = os.path.realpath(full)
            if real in seen or start.startswith(real + os.sep):
                notify("symlink-loop", full, real)
                continue
            seen.add(real)
            kept.append(d)
            notify("nested-folder", full, "")
            if os.path.islink(full):
                notify("symlink", full, real)
        dirs[:] = kept
        files.extend(os.path.join(root, f) for f in names if is_visible(f))
    return sorted(files)


def find_images(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder` (see `walk_files`), sorted."""
    return [path for path in walk_files(folder) if is_image_file(path)]


TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
SPLIT_FOLDERS = {"train": ("train", "training"), "validation": ("val", "validation", "valid"), "test": ("test",)}


def resolve_layout(data_dir: str | os.PathLike, val_dir=None) -> tuple[Path, Path | None, Path | None]:
    """(train, validation, test) folders: DATA_DIR itself, or its pre-split sub-folders.

    A DATA_DIR whose only sub-folders are split names (train/, val/ or validation/,
    test/), each holding class folders, is taken as already split; an explicit
    `val_dir` wins over a val/ folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return data_dir, Path(val_dir) if val_dir else None, None
    children = {p.name.lower(): p for p in data_dir.iterdir() if p.is_dir() and is_visible(p.name)}
    found = {split: next((children[n] for n in names if n in children), None) for split, names in SPLIT_FOLDERS.items()}
    split_names = {n for names in SPLIT_FOLDERS.values() for n in names}
    if found["train"] is None or set(children) - split_names:
        return data_dir, Path(val_dir) if val_dir else None, None
    logger.info("'%s' is already split: training on %s", data_dir, found["train"])
    return found["train"], Path(val_dir) if val_dir else found["validation"], found["test"]


def list_class_folders(data_dir: str | os.PathLike, classes: Sequence[str] | None = None) -> LabelledFiles:
    """Every image of a class-per-folder directory, labelled by sorted folder name.

    `classes` forces the class list and order (a validation folder must match the
    training folder's classes).
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(
            f"Data directory '{data_dir}' does not exist. Pass a folder holding one "
            "sub-folder of images per class, e.g. data/cat/*.jpg and data/dog/*.jpg."
        )
    if not data_dir.is_dir():
        raise DataError(
            f"'{data_dir}' is a file, not a folder. Pass a folder holding one sub-folder "
            "of images per class, e.g. data/cat/*.jpg and data/dog/*.jpg."
        )
    found = class_folders(data_dir)
    if classes is None:
        if len(found) < 2:
            loose = sum(1 for p in data_dir.iterdir() if p.is_file() and is_image_file(p))
            hint = (
                f" It holds {loose} image(s) directly; move them into one sub-folder per class."
                if loose
                else ""
            )
            raise DataError(
                f"Found {len(found)} class folder(s) in '{data_dir}' ({', '.join(found) or 'none'}); "
                f"a classifier needs at least 2.{hint} Put each class's images in its own "
                "sub-folder, e.g. data/cat/*.jpg and data/dog/*.jpg."
            )
        classes = found
    else:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        if missing or extra:
            raise DataError(
                f"The classes in '{data_dir}' differ from the expected ones {list(classes)}: "
                f"missing {missing}, unexpected {extra}. Give it the same class sub-folders."
            )
    paths, labels = [], []
    for index, name in enumerate(classes):
        images = find_images(data_dir / name)
        if not images:
            raise DataError(
                f"Class folder '{data_dir / name}' holds no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)}). Add images to it or remove the folder."
            )
        paths.extend(images)
        labels.extend([index] * len(images))
    return LabelledFiles(tuple(paths), tuple(labels), tuple(classes))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's contents, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def class_folders(data_dir: str | os.PathLike) -> list[str]:
    """Names of the visible sub-folders of `data_dir`, sorted: its classes."""
    return sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir() and is_visible(p.name))


def expand_image_paths(inputs) -> list[str]:
    """Files as given, folders searched recursively; non-image files warned about and skipped."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(find_images(item))
        elif item.is_file():
            if is_image_file(item):
                paths.append(str(item))
            else:
                logger.warning("Skipping %s: not an image file (%s).", item, ", ".join(IMAGE_EXTENSIONS))
        else:
            raise DataError(f"'{item}' does not exist. Pass image files or folders of images.")
    return paths


def evenly_spaced(items: Sequence, limit: int | None) -> list:
    """`limit` items spread evenly over `items` (all of them when None or enough)."""
    items = list(items)
    if limit is None or len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]
