"""Decode every file of an image folder and say, per file, what training will make of it.

`scan_dataset` is the check behind `transferkit doctor` and the scan `train` runs
first. Each candidate file (an image extension inside a class folder) is decoded in
full with `data.load_image`, the decoder training itself uses, so "usable" here means
"training will read it", and the paths come out exactly as `data.find_images` writes
them. Nothing is ever written into the scanned folders; the optional cache lives
wherever the caller says, and is keyed by (relative path, size, mtime_ns).

Every finding has a code; the code fixes the severity:

error (the file is skipped by training, or training cannot run)
    empty, truncated, corrupt, not-an-image (text, HTML, PDF... under an image
    extension), unsupported-format (an image Pillow cannot decode: HEIC, SVG, a
    missing codec), too-many-pixels (above `max_pixels`: refused undecoded, a
    decompression bomb), broken-symlink, unreadable, too-few-classes, empty-class
    (no usable image left), class-mismatch (a validation/test folder's classes differ)
warning (used, but look at it)
    extension-mismatch, animated (first frame used), too-small (under `min_size` px),
    oversized (over half of `max_pixels`), unsupported-extension (a real image under an
    extension training does not read: ignored), outside-class (an image directly in
    DATA_DIR: ignored), symlink-loop (not followed again), imbalance, duplicate,
    duplicate-across-classes, near-duplicate-across-classes, duplicate-across-splits,
    near-duplicate-across-splits, name-series (files named as series of one subject: a split
    file by file leaks them; --group-by auto), series-across-splits (such a series in two splits)
info (handled automatically, said so)
    cmyk, high-bit-depth, palette, transparency, exif-rotated, nested-folder (its images
    are included), symlink (followed), near-duplicate (within a class), non-image-file
    (e.g. notes.txt: ignored)

Hidden files and OS litter (`.DS_Store`, `._*`, `Thumbs.db`, `desktop.ini`,
`__MACOSX/`) are skipped silently, exactly as `find_images` skips them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import PIL
from PIL import Image

from transferkit.data.files import (
    DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, LabelledFiles, is_visible, is_image_file,
)
from transferkit.data.duplicates import duplicate_finding, duplicate_groups
from transferkit.data.files import walk_files
from transferkit.data.findings import ClassSummary, DEFAULT_MIN_SIZE, ERROR, Finding, IMBALANCE_WARNING, ImageRecord, NEAR_DISTANCE, PHASH_BITS, SEVERITIES, SPLITS, ScanResult
from transferkit.data.inspect import file_findings, gather_facts, read_head, sniff, strict_pillow
from transferkit.errors import ConfigError, DataError

logger = logging.getLogger("transferkit")

CACHE_FORMAT, CACHE_VERSION = "transferkit-scan-cache", 1

def usable_files(result: ScanResult, split: str | None = None) -> list[str]:
    """The paths training can use (all splits, or one), in `list_class_folders` order."""
    return [r.path for r in result.images if r.usable and (split is None or r.split == split)]


def usable_labelled(result: ScanResult, split: str | None = None) -> LabelledFiles:
    """`usable_files` with labels, ready for the split and the `tf.data` pipeline."""
    index = {name: i for i, name in enumerate(result.classes)}
    records = [r for r in result.images if r.usable and (split is None or r.split == split)]
    return LabelledFiles(tuple(r.path for r in records), tuple(index[r.class_name] for r in records), result.classes)


def skipped_rows(result: ScanResult) -> list[dict]:
    """One row per candidate file training skips, with the reason: for a run folder's CSV."""
    reasons = {f.path: f for f in result.findings if f.severity == ERROR}
    return [
        {"path": r.path, "class": r.class_name, "split": r.split, "code": r.error, "reason": reasons[r.path].reason}
        for r in result.images if not r.usable
    ]


def scan_dataset(
    data_dir: str | os.PathLike,
    *,
    val_dir: str | os.PathLike | None = None,
    test_dir: str | os.PathLike | None = None,
    val_files: Iterable[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = DEFAULT_MIN_SIZE,
    near_distance: int = NEAR_DISTANCE,
    cache_path: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Decode every file under `data_dir` (and `val_dir`, `test_dir`) and report what is wrong.

    Files of `data_dir` are the "train" split, except those listed in `val_files`
    (paths as `find_images` writes them), which are "validation"; `val_dir` and
    `test_dir` are separate folders with the same classes. Duplicates are looked for
    across all of them. `cache_path` (a JSON file outside the scanned folders) lets a
    re-run decode only files whose size or mtime changed. `progress(done, total)` is
    called as files finish.
    """
    started = time.perf_counter()
    roots = _check_arguments(data_dir, val_dir, test_dir, val_files, max_pixels, min_size, near_distance,
                             cache_path, workers)
    val_files = list(val_files) if val_files is not None else None
    data_root = roots["train"]
    findings: list[Finding] = []
    classes, candidates, notes = _collect(data_root, "train", None)
    findings += notes
    for split in ("validation", "test"):
        if split in roots:
            _, more, notes = _collect(roots[split], split, classes)
            candidates += more
            findings += notes
    candidates = _assign_val_files(candidates, val_files, data_root)

    cache = _load_cache(cache_path, data_root) if cache_path is not None else {}
    with strict_pillow():
        facts, fresh, cached = gather_facts(candidates, cache, data_root, max_pixels, workers, progress)
    if cache_path is not None:
        _save_cache(cache_path, data_root, fresh)

    records = []
    for (path, class_name, split), file_facts in zip(candidates, facts):
        error, notes = file_findings(path, file_facts, max_pixels, min_size)
        findings += notes
        records.append(ImageRecord(
            path, class_name, split, error, file_facts.get("width"), file_facts.get("height"),
            file_facts.get("format"), file_facts.get("mode"), file_facts.get("sha256"),
            int(file_facts["phash"], 16) if error is None and file_facts.get("phash") else None,
        ))
    order = {name: i for i, name in enumerate(classes)}
    records.sort(key=lambda r: (SPLITS.index(r.split), order[r.class_name], r.path))

    groups = duplicate_groups(records, near_distance)
    findings += [duplicate_finding(group, data_root) for group in groups]
    findings += _series_findings(records, data_root)
    summaries = _summaries(records, classes, _splits_present(roots, val_files))
    ratio, dataset_findings = _dataset_findings(data_root, classes, summaries, roots)
    findings += dataset_findings

    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.path, f.code))
    settings = {
        "max_pixels": max_pixels, "min_size": min_size, "near_distance": near_distance,
        **{f"{split}_dir": str(root) for split, root in roots.items()},
        "val_files": len(set(val_files)) if val_files is not None else None,
    }
    return ScanResult(
        str(data_root), tuple(classes), tuple(records), tuple(findings), tuple(summaries), tuple(groups), ratio,
        settings, len(candidates) - cached, cached, time.perf_counter() - started,
    )


# --- arguments ---------------------------------------------------------------------------


def _check_arguments(data_dir, val_dir, test_dir, val_files, max_pixels, min_size, near_distance, cache_path,
                     workers) -> dict[str, Path]:
    """Every argument checked before any file is read; returns {split: folder}."""
    roots = {}
    for split, folder in (("train", data_dir), ("validation", val_dir), ("test", test_dir)):
        if folder is None:
            continue
        folder = Path(folder)
        if not folder.exists():
            raise DataError(f"Folder '{folder}' does not exist. Pass a folder holding one sub-folder of "
                            "images per class, e.g. data/cat/*.jpg and data/dog/*.jpg.")
        if not folder.is_dir():
            raise DataError(f"'{folder}' is a file, not a folder. Pass a folder holding one sub-folder of "
                            "images per class, e.g. data/cat/*.jpg and data/dog/*.jpg.")
        roots[split] = folder
    if val_dir is not None and val_files is not None:
        raise ConfigError("Pass either val_dir (a separate validation folder) or val_files (validation files "
                          "inside data_dir), not both.")
    if isinstance(val_files, (str, bytes, os.PathLike)):
        raise ConfigError(f"val_files must be a list of paths, got the single path {val_files!r}.")
    for name, value, low, high in (("max_pixels", max_pixels, 1, None), ("min_size", min_size, 1, None),
                                   ("near_distance", near_distance, 0, PHASH_BITS), ("workers", workers, 1, 256)):
        if name == "workers" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (high and value > high):
            allowed = f"an integer from {low} to {high}" if high else f"an integer of at least {low}"
            raise ConfigError(f"{name} must be {allowed}, got {value!r}.")
    if cache_path is not None:
        cache = Path(cache_path)
        if cache.is_dir():
            raise ConfigError(f"cache_path '{cache}' is a folder; pass a file name, e.g. cache/scan.json.")
        real = os.path.realpath(cache)
        for folder in roots.values():
            top = os.path.realpath(folder)
            if real == top or real.startswith(top + os.sep):
                raise ConfigError(f"cache_path '{cache}' is inside the scanned folder '{folder}', which transferkit "
                                  "never writes to. Put the cache somewhere else, e.g. in the run folder.")
    return roots


def _assign_val_files(candidates, val_files, data_root) -> list[tuple[str, str, str]]:
    if val_files is None:
        return candidates
    wanted = {os.path.abspath(p) for p in val_files}
    own = {os.path.abspath(path) for path, _, split in candidates if split == "train"}
    unknown = sorted(wanted - own)
    if unknown:
        raise ConfigError(f"val_files has {len(unknown)} path(s) that are not image files of '{data_root}', "
                          f"e.g. '{unknown[0]}'. Pass paths as usable_files() or find_images() list them.")
    return [(path, name, "validation" if split == "train" and os.path.abspath(path) in wanted else split)
            for path, name, split in candidates]


# --- finding the files -------------------------------------------------------------------


def _collect(root: Path, split: str, expected: Sequence[str] | None):
    """Class folders of `root`, their candidate files (path, class, split) and the notes on the way."""
    findings = []
    try:
        entries = sorted(os.listdir(root))
    except OSError as error:
        raise DataError(f"Folder '{root}' cannot be listed ({error.strerror}).") from error
    class_names = [name for name in entries if is_visible(name) and os.path.isdir(root / name)]
    for name in entries:
        if is_visible(name) and name not in class_names:
            findings.append(_loose_finding(str(root / name)))
    if expected is not None and set(class_names) != set(expected):
        missing, extra = sorted(set(expected) - set(class_names)), sorted(set(class_names) - set(expected))
        findings.append(Finding(str(root), "class-mismatch",
                                f"its class folders differ from the training folder's: missing {missing}, "
                                f"unexpected {extra}; give it the same class sub-folders"))
        class_names = [name for name in expected if name in class_names]
    elif expected is not None:
        class_names = list(expected)
    candidates = []
    for name in class_names:
        class_dir = str(root / name)
        if os.path.islink(class_dir):
            findings.append(Finding(class_dir, "symlink", f"symbolic link to the folder '{os.path.realpath(class_dir)}': "
                                                          "followed"))
        files, notes = _walk_class(class_dir, name)
        findings += notes
        for path in files:
            if is_image_file(path):
                candidates.append((path, name, split))
            else:
                findings.append(_foreign_finding(path))
    return class_names, candidates, findings


def _walk_class(class_dir: str, name: str) -> tuple[list[str], list[Finding]]:
    """Files under a class folder (the walk training uses), with what the walk noticed as findings."""
    nested, notes = [], []

    def notify(event: str, path: str, detail: str) -> None:
        if event == "nested-folder":
            nested.append(path)
        elif event == "unreadable":
            notes.append(Finding(path, "unreadable", f"folder cannot be listed ({detail})"))
        elif event == "symlink-loop":
            notes.append(Finding(path, "symlink-loop", f"leads back to '{detail}', already scanned for class "
                                                       f"'{name}': not followed again"))
        else:
            notes.append(Finding(path, "symlink", f"symbolic link to the folder '{detail}': followed"))

    files = walk_files(class_dir, notify)
    for folder in nested:
        count = sum(1 for f in files if f.startswith(folder + os.sep) and is_image_file(f))
        notes.append(Finding(folder, "nested-folder",
                             f"a sub-folder of class '{name}': its {count} image file(s) are included in '{name}'"))
    return files, notes


def _loose_finding(path: str) -> Finding:
    if is_image_file(path):
        return Finding(path, "outside-class", "an image directly in the data folder, outside any class folder: "
                                              "ignored by training; move it into its class's folder")
    if os.path.islink(path) and not os.path.exists(path):
        return Finding(path, "non-image-file", f"a broken symbolic link (to '{os.readlink(path)}'): ignored")
    return Finding(path, "non-image-file", "not in a class folder and not an image: ignored")


def _foreign_finding(path: str) -> Finding:
    """A file inside a class folder whose extension training does not read."""
    ext = os.path.splitext(path)[1].lower()
    shown = f"'{ext}'" if ext else "no extension"
    what = _foreign_image(path)
    if what:
        return Finding(path, "unsupported-extension",
                       f"{what}, but {shown} is not an extension training reads ({' '.join(IMAGE_EXTENSIONS)}): "
                       "ignored; convert it to JPEG or PNG to use it")
    return Finding(path, "non-image-file", f"not an image ({shown}): ignored by training")


def _foreign_image(path: str) -> str | None:
    """'a PPM image' when a file with a foreign extension holds an image, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                return f"a {image.format} image"
    except Image.DecompressionBombError:
        return "an image"
    except Exception:  # noqa: BLE001 - not an image Pillow knows; look at the bytes
        code, what = sniff(read_head(path))
        return what if code == "unsupported-format" else None


# --- the whole set -------------------------------------------------------------------------


def _splits_present(roots: dict, val_files) -> list[str]:
    return ["train"] + (["validation"] if "validation" in roots or val_files is not None else []) + (
        ["test"] if "test" in roots else [])


def _summaries(records, classes, splits) -> list[ClassSummary]:
    counts = defaultdict(lambda: [0, 0])
    for record in records:
        counts[record.split, record.class_name][0] += 1
        counts[record.split, record.class_name][1] += record.usable
    return [ClassSummary(split, name, *counts[split, name]) for split in splits for name in classes]


def _series_findings(records, data_root) -> list[Finding]:
    """Files named as series (a shared prefix and a counter, e.g. rock01-004.png: one subject, many shots):
    a file-by-file split puts each series on both sides, and series already found in two splits leak."""
    from transferkit.data.split import name_groups, name_key

    usable = [r for r in records if r.error is None]
    findings = []
    train = [r for r in usable if r.split == "train"]
    series = name_groups([r.path for r in train], [r.class_name for r in train], "auto")
    if series and not any(r.split == "validation" for r in usable):  # validation is to be split off DATA_DIR
        sizes = sorted(len(members) for members in series)
        findings.append(Finding(str(data_root), "name-series", (
            f"{len(series)} series of files by name ({sizes[0]}-{sizes[-1]} files each, e.g. "
            f"'{name_key(series[0][0], 'auto')}'): a file-by-file validation split puts files of one series on "
            "both sides, so validation accuracy overstates accuracy on new series; train with --group-by auto "
            "(or a regular expression whose first group names the subject)")))
    split_of = {r.path: r.split for r in usable}
    if len(set(split_of.values())) < 2:  # one split: nothing can straddle two
        return findings
    across = [members for members in name_groups(list(split_of), [r.class_name for r in usable], "auto")
              if len({split_of[path] for path in members}) > 1]
    for members in across:
        splits = sorted({split_of[path] for path in members}, key=SPLITS.index)
        findings.append(Finding(members[0], "series-across-splits", (
            f"series '{name_key(members[0], 'auto')}' ({len(members)} files) has files in {' and '.join(splits)}: "
            "validation or test images of a subject the model was trained on overstate accuracy on new ones; "
            "move the whole series to one split"), related=tuple(members[1:])))
    return findings


def _dataset_findings(data_root, classes, summaries, roots) -> tuple[float | None, list[Finding]]:
    """Problems of the set as a whole: too few classes, empty classes, imbalance."""
    findings = []
    if len(classes) < 2:
        findings.append(Finding(str(data_root), "too-few-classes",
                                f"found {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); a classifier "
                                "needs at least 2: put each class's images in its own sub-folder"))
    for summary in summaries:
        if summary.usable == 0:
            folder = roots.get(summary.split, data_root) / summary.name
            what = (f"all {summary.images} image file(s) are unusable" if summary.images
                    else "it holds no image files")
            where = "" if summary.split == "train" else f" in the {summary.split} split"
            findings.append(Finding(str(folder), "empty-class",
                                    f"class '{summary.name}' has no usable image{where}: {what}"))
    train = [s for s in summaries if s.split == "train"]
    if len(train) < 2 or min(s.usable for s in train) == 0:
        return None, findings
    largest = max(train, key=lambda s: s.usable)
    smallest = min(train, key=lambda s: s.usable)
    ratio = largest.usable / smallest.usable
    if ratio >= IMBALANCE_WARNING:
        findings.append(Finding(str(data_root), "imbalance",
                                f"classes are imbalanced: '{largest.name}' has {largest.usable} usable images, "
                                f"'{smallest.name}' {smallest.usable} (ratio {ratio:.1f}); weight the classes or "
                                f"add images of '{smallest.name}'"))
    return round(ratio, 3), findings


# --- cache ---------------------------------------------------------------------------------


def _cache_header(data_root: Path) -> dict:
    # A new Pillow may decode what an old one could not, so its version is part of the key.
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "pillow": PIL.__version__, "phash_bits": PHASH_BITS,
            "data_dir": os.path.abspath(data_root)}


def _load_cache(cache_path, data_root: Path) -> dict[str, dict]:
    try:
        data = json.loads(Path(cache_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("Ignoring the unreadable scan cache %s (%s); rescanning.", cache_path, error)
        return {}
    header = _cache_header(data_root)
    if not isinstance(data, dict) or any(data.get(key) != value for key, value in header.items()):
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache(cache_path, data_root: Path, files: dict[str, dict]) -> None:
    from transferkit.atomic import write_text

    write_text(cache_path, json.dumps({**_cache_header(data_root), "files": files}, separators=(",", ":")))
