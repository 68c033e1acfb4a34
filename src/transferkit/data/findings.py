"""What the dataset doctor reports: finding codes and their severities, and the result types."""

from __future__ import annotations

import logging
from dataclasses import dataclass



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
        "name-series", "series-across-splits",
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
