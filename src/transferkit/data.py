"""Image folders in, labelled file lists and streaming `tf.data` pipelines out.

The layout is Keras's `image_dataset_from_directory` layout: one sub-folder per
class, labels in sorted folder-name order. Decoding goes through Pillow so every
entry point (training, evaluation, prediction) turns any file into the same RGB
pixels: EXIF orientation applied, palette/alpha composited on white, grayscale and
16-bit widened or scaled to 8-bit RGB, animated images reduced to their first frame.
Files on disk are only ever read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

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


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_NAMES


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(path)
    return _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder`, recursively, sorted, hidden files and OS litter skipped.

    Symbolic links are followed once: a folder already visited (a link loop) is skipped.
    """
    found, seen = [], {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if _visible(d) and real not in seen:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        found.extend(os.path.join(root, f) for f in files if is_image_file(f))
    return sorted(found)


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
    children = {p.name.lower(): p for p in data_dir.iterdir() if p.is_dir() and _visible(p.name)}
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
    found = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and _visible(p.name))
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


def split_key(path: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on the file's identity and the seed."""
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fraction(name: str, value, allow_zero: bool = False) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low_ok and value < 1.0):
        raise DataError(
            f"{name} must be {'in [0, 1)' if allow_zero else 'strictly between 0 and 1'}, got {value!r}. "
            "Use e.g. 0.2 to hold out 20 % of each class, or pass a separate folder."
        )


def stratified_split(
    files: LabelledFiles, val_split: float, seed: int, root: str | os.PathLike | None = None,
    groups: Sequence[Sequence[str]] = (), test_split: float = 0.0,
) -> tuple[LabelledFiles, LabelledFiles, LabelledFiles]:
    """(train, validation, test): about `val_split` and `test_split` of each class held out.

    A file's `split_key` (a hash of the seed and its path relative to `root`) decides:
    below `val_split` it is validation, at or above 1 - `test_split` it is test. So the
    split is reproducible, adding images never moves existing ones between splits, and
    changing one fraction never moves files of the other. Files in one of `groups`
    (e.g. duplicates) all follow the group's first path, so a duplicate never leaks
    across splits. Each class keeps at least one image in every split.
    """
    _check_fraction("val_split", val_split)
    _check_fraction("test_split", test_split, allow_zero=True)
    if val_split + test_split >= 1.0:
        raise DataError(f"val_split + test_split must leave images for training, got {val_split} + {test_split}.")
    keys = np.array([
        split_key(os.path.relpath(p, root) if root is not None else p, seed) for p in files.paths
    ])
    position = {path: i for i, path in enumerate(files.paths)}
    for group in groups:  # the first path's key: a member's own key, so still uniform
        members = sorted(position[p] for p in group if p in position)
        if members:
            keys[members] = keys[members[0]]
    split = np.where(keys < val_split, VALIDATION, np.where(keys >= 1.0 - test_split, TEST, TRAIN))
    labels = np.asarray(files.labels)
    wanted = [(VALIDATION, val_split)] + ([(TEST, test_split)] if test_split else [])
    for index, name in enumerate(files.classes):
        members = np.flatnonzero(labels == index)
        ranked = members[np.argsort(keys[members], kind="stable")]
        for which, fraction in wanted:
            if len(members) * fraction < 0.5 or len(members) < 1 + len(wanted):
                raise DataError(
                    f"{'val' if which == VALIDATION else 'test'}_split={fraction} leaves class '{name}' "
                    f"({len(members)} image(s)) with no {which} image. Add images to that class, use a "
                    "larger fraction, or pass a separate folder."
                )
            if not (split[members] == which).any():  # the nearest training file moves over
                candidates = [i for i in (ranked if which == VALIDATION else ranked[::-1]) if split[i] == TRAIN]
                split[candidates[0]] = which
        if not (split[members] == TRAIN).any():
            split[ranked[len(ranked) // 2]] = TRAIN
    return tuple(files.subset(np.flatnonzero(split == which)) for which in (TRAIN, VALIDATION, TEST))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        if image.mode != "F" and array.max() > 255:
            array = array / 257.0  # 16-bit range onto 8-bit
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one file to a uint8 RGB array; with `size`, its centre size x size square
    (shorter side resized to `size`, the longer one cropped to it)."""
    with Image.open(path) as image:
        if image.width * image.height > max_pixels:
            raise DataError(
                f"{path}: {image.width}x{image.height} pixels is above the limit of {max_pixels} "
                "(a possible decompression bomb); downscale the file to use it."
            )
        if size is not None:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        if size is not None and image.size != (size, size):
            # Keep the aspect ratio and crop the centre, as ImageNet models saw their training
            # images; squashing distorts shapes (bench/resize_probe.py, BENCHMARKS.md).
            image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _load_or_flag(path: bytes, size: np.int64) -> tuple[np.ndarray, bool]:
    try:
        return load_image(path.decode(), int(size)), True
    except Exception as error:  # noqa: BLE001 - a bad file must never stop an epoch
        logger.warning("Skipping unreadable image %s: %s", path.decode(), error)
        return np.zeros((int(size), int(size), 3), np.uint8), False


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | None,
    image_size: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    drop_unreadable: bool = True,
):
    """A batched `tf.data.Dataset` of float32 (size, size, 3) images in 0-255 (and labels).

    Only paths live in memory; images are decoded in parallel as batches are drawn.
    Unreadable files are logged and dropped instead of ending the epoch; with
    `drop_unreadable=False` each element keeps a trailing `ok` flag instead, so a
    caller can keep predictions aligned with its list of paths.
    """
    import tensorflow as tf

    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(list(paths))
    else:
        ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(path, *label):
        image, ok = tf.numpy_function(_load_or_flag, [path, image_size], (tf.uint8, tf.bool))
        image.set_shape((image_size, image_size, 3))
        return (tf.cast(image, tf.float32), *label, ok)

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if drop_unreadable:
        labelled = labels is not None
        ds = ds.filter(lambda *item: item[-1])
        ds = ds.map(lambda *item: item[:2] if labelled else item[0])
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
