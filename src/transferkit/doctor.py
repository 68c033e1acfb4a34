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
    near-duplicate-across-splits
info (handled automatically, said so)
    cmyk, high-bit-depth, palette, transparency, exif-rotated, nested-folder (its images
    are included), symlink (followed), near-duplicate (within a class), non-image-file
    (e.g. notes.txt: ignored)

Hidden files and OS litter (`.DS_Store`, `._*`, `Thumbs.db`, `desktop.ini`,
`__MACOSX/`) are skipped silently, exactly as `find_images` skips them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import PIL
from PIL import Image, ImageFile, UnidentifiedImageError

from transferkit.data import (
    DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, LabelledFiles, _visible, file_digest, is_image_file, load_image,
)
from transferkit.errors import ConfigError, DataError

logger = logging.getLogger("transferkit")

# Pillow's own default Image.MAX_IMAGE_PIXELS (~0.25 GiB as 8-bit RGB), fixed here so a
# global changed elsewhere does not move the doctor's limit.
DEFAULT_MIN_SIZE = 32
# Hamming distance (of the 256 pHash bits) up to which two images count as near duplicates.
# Resized or re-encoded copies land at 0-24, a burst shot of the same scene near 28;
# unrelated photos stay above 90, even different hands on the same white background
# (the rps renders) above 50.
PHASH_BITS = 256
NEAR_DISTANCE = 32
IMBALANCE_WARNING = 3.0  # largest class / smallest class
SPLITS = ("train", "validation", "test")
CACHE_FORMAT, CACHE_VERSION = "transferkit-scan-cache", 1

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)
CODES = {
    **dict.fromkeys((
        "empty", "truncated", "corrupt", "not-an-image", "unsupported-format", "too-many-pixels",
        "broken-symlink", "unreadable", "too-few-classes", "empty-class", "class-mismatch",
    ), ERROR),
    **dict.fromkeys((
        "extension-mismatch", "animated", "too-small", "oversized", "unsupported-extension",
        "outside-class", "symlink-loop", "imbalance", "duplicate", "duplicate-across-classes",
        "near-duplicate-across-classes", "duplicate-across-splits", "near-duplicate-across-splits",
    ), WARNING),
    **dict.fromkeys((
        "cmyk", "high-bit-depth", "palette", "transparency", "exif-rotated", "nested-folder",
        "symlink", "near-duplicate", "non-image-file",
    ), INFO),
}
# Formats Pillow may report for each extension training reads; anything else is a lie.
EXTENSION_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".bmp": ("BMP", "DIB"),
    ".gif": ("GIF",), ".webp": ("WEBP",), ".tif": ("TIFF",), ".tiff": ("TIFF",),
}
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "DIB": ".bmp", "GIF": ".gif",
                     "WEBP": ".webp", "TIFF": ".tif"}
ORIENTATIONS = {
    2: "mirrored", 3: "rotated 180 degrees", 4: "flipped upside down", 5: "mirrored and rotated 90 degrees",
    6: "rotated 90 degrees", 7: "mirrored and rotated 270 degrees", 8: "rotated 270 degrees",
}
HIGH_BIT_MODES = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I;16N": "16-bit",
                  "I": "32-bit integer", "F": "32-bit float"}
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class Finding:
    """One problem or note: a path, a code (which fixes the severity) and a reason for people."""

    path: str
    code: str
    reason: str
    related: tuple[str, ...] = ()  # the other files of a duplicate group

    @property
    def severity(self) -> str:
        return CODES[self.code]

    def to_dict(self) -> dict:
        return {"path": self.path, "severity": self.severity, "code": self.code, "reason": self.reason,
                "related": list(self.related)}


@dataclass(frozen=True)
class ImageRecord:
    """A candidate training file: where it is, how it decoded, and its hashes."""

    path: str
    class_name: str
    split: str
    error: str | None  # the error code when training would skip it
    width: int | None
    height: int | None
    format: str | None
    mode: str | None
    sha256: str | None
    phash: int | None

    @property
    def usable(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ClassSummary:
    split: str
    name: str
    images: int  # candidate files (image extensions)
    usable: int

    @property
    def skipped(self) -> int:
        return self.images - self.usable


@dataclass(frozen=True)
class DuplicateGroup:
    """Files with the same content ('exact') or near-identical pixels ('near': one file per content)."""

    kind: str
    paths: tuple[str, ...]
    classes: tuple[str, ...]  # per path
    splits: tuple[str, ...]  # per path
    distance: int  # largest pHash distance that links the group; 0 for exact

    def to_dict(self) -> dict:
        return {"kind": self.kind, "paths": list(self.paths), "classes": list(self.classes),
                "splits": list(self.splits), "distance": self.distance}


@dataclass(frozen=True)
class ScanResult:
    data_dir: str
    classes: tuple[str, ...]
    images: tuple[ImageRecord, ...]
    findings: tuple[Finding, ...]
    class_summaries: tuple[ClassSummary, ...]
    duplicates: tuple[DuplicateGroup, ...]
    imbalance_ratio: float | None  # largest / smallest usable training class; None if one is empty
    settings: dict
    decoded: int  # candidate files read by this scan
    cached: int  # candidate files whose facts came from the cache
    seconds: float

    def of(self, severity: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == severity)

    @property
    def exit_code(self) -> int:
        """0 clean (notes allowed), 1 warnings only, 2 at least one error."""
        severities = {f.severity for f in self.findings}
        return 2 if ERROR in severities else 1 if WARNING in severities else 0

    def class_counts(self, split: str = "train") -> dict[str, int]:
        """Usable images per class of one split."""
        return {s.name: s.usable for s in self.class_summaries if s.split == split}

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "exit_code": self.exit_code,
            "counts": {severity: len(self.of(severity)) for severity in SEVERITIES},
            "classes": list(self.classes),
            "class_counts": [
                {"split": s.split, "class": s.name, "images": s.images, "usable": s.usable, "skipped": s.skipped}
                for s in self.class_summaries
            ],
            "imbalance_ratio": self.imbalance_ratio,
            "usable_images": sum(r.usable for r in self.images),
            "skipped_images": sum(not r.usable for r in self.images),
            "findings": [f.to_dict() for f in self.findings],
            "duplicates": [g.to_dict() for g in self.duplicates],
            "settings": self.settings,
            "decoded": self.decoded,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
        }


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
    with _strict_pillow():
        facts, fresh, cached = _gather_facts(candidates, cache, data_root, max_pixels, workers, progress)
    if cache_path is not None:
        _save_cache(cache_path, data_root, fresh)

    records = []
    for (path, class_name, split), file_facts in zip(candidates, facts):
        error, file_findings = _file_findings(path, file_facts, max_pixels, min_size)
        findings += file_findings
        records.append(ImageRecord(
            path, class_name, split, error, file_facts.get("width"), file_facts.get("height"),
            file_facts.get("format"), file_facts.get("mode"), file_facts.get("sha256"),
            int(file_facts["phash"], 16) if error is None and file_facts.get("phash") else None,
        ))
    order = {name: i for i, name in enumerate(classes)}
    records.sort(key=lambda r: (SPLITS.index(r.split), order[r.class_name], r.path))

    groups = _duplicate_groups(records, near_distance)
    findings += [_duplicate_finding(group, data_root) for group in groups]
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
    class_names = [name for name in entries if _visible(name) and os.path.isdir(root / name)]
    for name in entries:
        if _visible(name) and name not in class_names:
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
    """Files under a class folder, following symbolic links once: a folder already seen is a loop."""
    files, nested, notes = [], [], []
    start = os.path.realpath(class_dir)
    seen = {start}

    def unlistable(error: OSError) -> None:
        notes.append(Finding(error.filename or class_dir, "unreadable", f"folder cannot be listed ({error.strerror})"))

    for root, dirs, names in os.walk(class_dir, followlinks=True, onerror=unlistable):
        kept = []
        for d in sorted(dirs):
            full = os.path.join(root, d)
            if not _visible(d):
                continue
            real = os.path.realpath(full)
            if real in seen or start.startswith(real + os.sep):
                notes.append(Finding(full, "symlink-loop", f"leads back to '{real}', already scanned for class "
                                                           f"'{name}': not followed again"))
                continue
            seen.add(real)
            kept.append(d)
            nested.append(full)
            if os.path.islink(full):
                notes.append(Finding(full, "symlink", f"symbolic link to the folder '{real}': followed"))
        dirs[:] = kept
        files.extend(os.path.join(root, f) for f in names if _visible(f))
    for folder in nested:
        count = sum(1 for f in files if f.startswith(folder + os.sep) and is_image_file(f))
        notes.append(Finding(folder, "nested-folder",
                             f"a sub-folder of class '{name}': its {count} image file(s) are included in '{name}'"))
    return sorted(files), notes


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
        code, what = _sniff(_head(path))
        return what if code == "unsupported-format" else None


# --- one file ----------------------------------------------------------------------------


@contextlib.contextmanager
def _strict_pillow() -> Iterator[None]:
    """Truncated files must fail, and the size limit is ours, not a Pillow warning."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _gather_facts(candidates, cache, data_root, max_pixels, workers, progress):
    """Facts for every candidate (from the cache when size and mtime match, else by decoding), the
    cache entries to keep, and how many came from the cache."""
    facts: list[dict | None] = []
    fresh: dict[str, dict] = {}
    todo = []
    for index, (path, _, _) in enumerate(candidates):
        key = os.path.relpath(path, data_root)
        try:
            stat = os.stat(path)
        except OSError as error:
            facts.append({"error": _stat_error(path, error)})
            continue
        entry = cache.get(key)
        if _cache_valid(entry, stat, max_pixels):
            facts.append(entry)
            fresh[key] = entry
        else:
            facts.append(None)
            todo.append((index, key, stat))
    total, done = len(candidates), len(candidates) - len(todo)
    if progress:
        progress(done, total)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda item: _inspect(candidates[item[0]][0], item[2], max_pixels), todo)
        for (index, key, _), file_facts in zip(todo, results):
            facts[index] = file_facts
            fresh[key] = file_facts
            done += 1
            if progress:
                progress(done, total)
    return facts, fresh, len(fresh) - len(todo)


def _stat_error(path: str, error: OSError) -> list[str]:
    if os.path.islink(path):
        target = os.readlink(path)
        if error.errno == errno.ELOOP:
            return ["broken-symlink", f"symbolic link loop (via '{target}'): there is no file to read"]
        return ["broken-symlink", f"symbolic link to '{target}', which does not exist"]
    return ["unreadable", f"cannot be read ({error.strerror or error})"]


def _inspect(path: str, stat: os.stat_result, max_pixels: int) -> dict:
    """Everything the findings need about one file, as JSON-ready facts (what the cache stores)."""
    facts = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "error": None, "decoded": False,
             "sha256": None, "phash": None}
    if stat.st_size == 0:
        facts["error"] = ["empty", "zero-byte file: there is nothing to decode"]
        return facts
    try:
        facts["sha256"] = file_digest(path)
        with Image.open(path) as image:
            facts.update(_header_facts(image))
            if facts["width"] * facts["height"] > max_pixels:
                return facts  # refused by _file_findings; decoded stays False so a higher limit re-decodes it
            # Only now: for PNG, reading EXIF decodes the whole image.
            orientation = image.getexif().get(0x0112)
            facts["orientation"] = orientation if isinstance(orientation, int) else None
            if facts["transparency"]:  # an opaque alpha channel changes nothing, so it is not worth a note
                facts["transparency"] = image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    except Image.DecompressionBombError as error:
        facts["error"] = ["too-many-pixels", f"refused without decoding, a possible decompression bomb: {error}"]
        return facts
    except UnidentifiedImageError:
        facts["error"] = _unidentified(path)
        return facts
    except OSError as error:
        if isinstance(error, PermissionError) or facts["sha256"] is None:
            facts["error"] = ["unreadable", f"cannot be read ({error.strerror or error})"]
        else:
            facts["error"] = _decode_error(error, facts.get("format"))
        return facts
    except Exception as error:  # noqa: BLE001 - any parser failure is a damaged file
        facts["error"] = _decode_error(error, facts.get("format"))
        return facts
    try:
        rgb = load_image(path)  # the very decode training does
    except Image.DecompressionBombError as error:
        facts["error"] = ["too-many-pixels", f"refused, a possible decompression bomb: {error}"]
    except Exception as error:  # noqa: BLE001 - whatever stops training's decoder stops this file
        facts["error"] = _decode_error(error, facts["format"])
    else:
        facts["decoded"] = True
        facts["phash"] = f"{phash(rgb):0{PHASH_BITS // 4}x}"
    return facts


def _header_facts(image: Image.Image) -> dict:
    """What the header says, without decoding any pixel (so a bomb is measured, not opened)."""
    try:
        frames = int(getattr(image, "n_frames", 1))
    except Exception:  # noqa: BLE001 - a damaged later frame; the first is all training uses
        frames = 2 if getattr(image, "is_animated", False) else 1
    return {
        "format": image.format, "mode": image.mode, "width": image.width, "height": image.height,
        "frames": frames, "orientation": None,
        "transparency": image.mode in ALPHA_MODES or "transparency" in image.info,
    }


def _decode_error(error: Exception, fmt: str | None) -> list[str]:
    message = str(error) or type(error).__name__
    what = f"{fmt} data" if fmt else "image data"
    if isinstance(error, EOFError) or "truncated" in message.lower():
        return ["truncated", f"the {what} ends early (an interrupted download or copy?): {message}"]
    if "not available" in message:
        return ["unsupported-format", f"this Pillow has no decoder for the {what}: {message}"]
    return ["corrupt", f"decoding the {what} failed, the file is damaged: {message}"]


def _head(path: str, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def _unidentified(path: str) -> list[str]:
    """Why Pillow could not even identify a file with an image extension."""
    code, what = _sniff(_head(path))
    ext = os.path.splitext(path)[1].lower()
    if code == "not-an-image":
        return [code, f"not an image: {what} under a '{ext}' name"]
    if code == "unsupported-format":
        return [code, f"{what}, a format transferkit cannot decode: convert it to JPEG or PNG"]
    return [code, f"not a readable image: {what}"]


_IMAGE_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
_FOREIGN_MAGIC = ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive or Office document"),
                  (b"\x1f\x8b", "a gzip archive"), (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf", "a 7-Zip archive"),
                  (b"\x1aE\xdf\xa3", "a WebM/Matroska video"), (b"ID3", "an MP3 file"), (b"OggS", "an Ogg file"),
                  (b"\x7fELF", "a program"), (b"MZ", "a Windows program"))
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def _sniff(head: bytes) -> tuple[str, str]:
    """(code, description) from a file's first bytes, for files Pillow does not identify."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "unsupported-format", "a HEIC/HEIF image"
        if brand in (b"avif", b"avis"):
            return "unsupported-format", "an AVIF image"
        return "not-an-image", "an MP4/QuickTime video"
    if head[:4] == b"RIFF" and head[8:12] != b"WEBP":
        return "not-an-image", "a RIFF media file (AVI/WAV)"
    for magic, what in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return "not-an-image", what
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        return "unsupported-format", "an SVG (vector) image"
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
        return "not-an-image", "an HTML page (a web page saved under an image name?)"
    if head and _is_text(head):
        return "not-an-image", "a text file"
    for magic, fmt in _IMAGE_MAGIC:
        if head.startswith(magic):
            return "corrupt", f"it starts like a {fmt} file, but its header is damaged"
    return "corrupt", f"unrecognised content (first bytes {head[:8].hex(' ') or 'none'}): damaged, or not an image"


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3  # a character cut by the 512-byte window
    return True


# --- findings from facts -----------------------------------------------------------------


_HEADER_KEYS = {"format", "mode", "width", "height", "frames", "orientation", "transparency", "sha256", "phash"}


def _cache_valid(entry, stat: os.stat_result, max_pixels: int) -> bool:
    """Same size and mtime, and well-formed (a hand-edited cache must not crash the scan)."""
    if not isinstance(entry, dict) or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
        return False
    error = entry.get("error")
    if error is not None:
        return isinstance(error, list) and len(error) == 2 and error[0] in CODES and isinstance(error[1], str)
    if not _HEADER_KEYS <= entry.keys() or not isinstance(entry["width"], int) or not isinstance(entry["height"], int):
        return False
    if not entry.get("decoded"):  # refused earlier: decode it if the limit now allows
        return entry["width"] * entry["height"] > max_pixels
    return isinstance(entry["phash"], str)


def _file_findings(path: str, facts: dict, max_pixels: int, min_size: int) -> tuple[str | None, list[Finding]]:
    """(error code or None, findings) for one candidate; settings apply here, so cached facts stay valid."""
    findings = []
    if os.path.islink(path) and not (facts["error"] or [""])[0] == "broken-symlink":
        findings.append(Finding(path, "symlink", f"symbolic link to '{os.path.realpath(path)}': the target is used"))
    if facts["error"]:
        code, reason = facts["error"]
        return code, findings + [Finding(path, code, reason)]
    width, height, fmt, mode = facts["width"], facts["height"], facts["format"], facts["mode"]
    pixels = width * height
    if pixels > max_pixels:
        return "too-many-pixels", findings + [Finding(
            path, "too-many-pixels",
            f"{width}x{height} = {pixels:,} pixels, above the limit of {max_pixels:,}: refused without decoding "
            "(a decompression bomb, or too large to decode safely); raise --max-pixels if it is genuine")]
    ext = os.path.splitext(path)[1].lower()
    if fmt not in EXTENSION_FORMATS.get(ext, (fmt,)):
        proper = FORMAT_EXTENSIONS.get(fmt, "its format's extension")
        findings.append(Finding(path, "extension-mismatch", f"a {fmt} image under a '{ext}' name: read correctly here, "
                                                            f"but other tools may refuse it; rename it to {proper}"))
    if facts["frames"] > 1 and fmt != "MPO":
        unit = "page" if fmt == "TIFF" else "frame"
        findings.append(Finding(path, "animated", f"{'multi-page' if unit == 'page' else 'animated'} {fmt} with "
                                                  f"{facts['frames']} {unit}s: only the first {unit} is used"))
    if pixels > max_pixels // 2:
        findings.append(Finding(path, "oversized", f"{width}x{height} ({pixels / 1e6:.0f} megapixels, over half the "
                                                   f"limit): slow to decode every epoch; a downscaled copy trains "
                                                   "the same"))
    if min(width, height) < min_size:
        findings.append(Finding(path, "too-small", f"only {width}x{height} pixels (under {min_size}): upscaled for "
                                                   "training, it carries little detail"))
    if mode == "CMYK":
        findings.append(Finding(path, "cmyk", "CMYK image: converted to RGB (without colour management, colours "
                                              "may shift slightly)"))
    if mode in HIGH_BIT_MODES:
        findings.append(Finding(path, "high-bit-depth", f"{HIGH_BIT_MODES[mode]} image (mode {mode}): scaled to "
                                                        "8-bit RGB"))
    if mode == "P" and fmt != "GIF":  # every GIF is a palette image; saying so is noise
        findings.append(Finding(path, "palette", "palette image: expanded to RGB"))
    if facts["transparency"]:
        findings.append(Finding(path, "transparency", "has transparent pixels: composited on white"))
    if facts["orientation"] in ORIENTATIONS:
        findings.append(Finding(path, "exif-rotated", f"EXIF orientation {facts['orientation']} "
                                                      f"({ORIENTATIONS[facts['orientation']]}): applied, so the "
                                                      "model sees it upright"))
    return None, findings


# --- duplicates ----------------------------------------------------------------------------

_DCT = np.sqrt(2 / 64) * np.cos(np.pi * (2 * np.arange(64)[None, :] + 1) * np.arange(64)[:, None] / 128)
_DCT[0] /= np.sqrt(2)


def phash(rgb: np.ndarray) -> int:
    """256-bit perceptual hash: which of the 16x16 lowest frequencies of a 64x64 grey DCT are above median.

    Survives resizing, re-encoding and mild colour changes, so copies that differ
    byte-wise land within a few bits of each other. The common 64-bit (8x8) variant
    is too coarse for objects on plain backgrounds: it calls different hands alike.
    """
    grey = Image.fromarray(np.ascontiguousarray(rgb)).convert("L").resize((64, 64), Image.Resampling.BOX)
    low = (_DCT @ np.asarray(grey, dtype=np.float64) @ _DCT.T)[:16, :16].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values)
    return _POPCOUNT8[values[..., None].view(np.uint8)].sum(-1)


def _close_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j within `max_distance` bits of (n, words) hashes: all pairs, a block at a time."""
    n, pairs = len(hashes), []
    rows = max(1, 1_000_000 // max(n, 1))
    for start in range(0, n, rows):
        block = hashes[start:start + rows]
        distance = _popcount(block[:, None, :] ^ hashes[None, :, :]).sum(-1, dtype=np.int64)
        for i, j in zip(*np.nonzero(distance <= max_distance)):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(distance[i, j])))
    return pairs


def _duplicate_groups(records: Sequence[ImageRecord], near_distance: int) -> list[DuplicateGroup]:
    """Exact groups by sha256; near groups by pHash, linking one representative per content."""
    by_content: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        if record.usable:
            by_content[record.sha256].append(record)
    groups = [_group("exact", members, 0) for members in by_content.values() if len(members) > 1]
    representatives = [members[0] for members in by_content.values()]
    hashes = np.array([_words(r.phash) for r in representatives], dtype=np.uint64).reshape(-1, PHASH_BITS // 64)
    parent = list(range(len(representatives)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    linking: dict[int, int] = defaultdict(int)
    pairs = _close_pairs(hashes, near_distance)
    for i, j, _ in pairs:
        parent[root(i)] = root(j)
    for i, _, distance in pairs:
        linking[root(i)] = max(linking[root(i)], distance)
    components: dict[int, list[ImageRecord]] = defaultdict(list)
    for i, record in enumerate(representatives):
        components[root(i)].append(record)
    groups += [_group("near", members, linking[key]) for key, members in components.items() if len(members) > 1]
    return sorted(groups, key=lambda g: (g.kind, g.paths))


def _words(value: int) -> list[int]:
    """A pHash as 64-bit words, for vectorised XOR and popcount."""
    return [(value >> shift) & 0xFFFF_FFFF_FFFF_FFFF for shift in range(PHASH_BITS - 64, -1, -64)]


def _group(kind: str, members: Sequence[ImageRecord], distance: int) -> DuplicateGroup:
    members = sorted(members, key=lambda r: (SPLITS.index(r.split), r.path))
    return DuplicateGroup(kind, tuple(r.path for r in members), tuple(r.class_name for r in members),
                          tuple(r.split for r in members), distance)


def _duplicate_finding(group: DuplicateGroup, data_root: Path) -> Finding:
    """One finding per group, on its first file; the worst aspect decides the code."""
    near = group.kind == "near"
    prefix = "near-duplicate" if near else "duplicate"
    same = (f"look almost the same (perceptual hashes within {group.distance} of {PHASH_BITS} bits)" if near
            else "are identical")
    shown = [_short(p, data_root) for p in group.paths]
    listing = _listing([f"{path} ({split}, '{name}')" for path, split, name in zip(shown, group.splits, group.classes)])
    if len(set(group.splits)) > 1:
        code = f"{prefix}-across-splits"
        reason = f"{len(shown)} files {same} across splits: {listing}; held-out accuracy is overstated"
    elif len(set(group.classes)) > 1:
        code = f"{prefix}-across-classes"
        reason = (f"{len(shown)} files {same} but are labelled differently: {listing}; a labelling mistake, "
                  "or classes that overlap")
    else:
        code = prefix
        reason = (f"{len(shown)} files in class '{group.classes[0]}' {same}: {_listing(shown)}; "
                  + ("they count as one image several times" if not near else
                     "fine if intended (a burst, video frames), but a random split can put them on both sides"))
    return Finding(group.paths[0], code, reason, group.paths[1:])


def _listing(items: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more (see 'related')" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _short(path: str, data_root: Path) -> str:
    relative = os.path.relpath(path, data_root)
    return path if relative.startswith("..") else relative


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
    from transferkit.rundir import write_text

    write_text(cache_path, json.dumps({**_cache_header(data_root), "files": files}, separators=(",", ":")))
