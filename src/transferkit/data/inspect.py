"""One file at a time: decode it strictly, sniff what it really is, and turn the facts into findings."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from PIL import Image, ImageFile, UnidentifiedImageError

from transferkit.data.files import file_digest
from transferkit.data.images import load_image
from transferkit.data.duplicates import phash
from transferkit.data.findings import (
    ALPHA_MODES, CODES, EXTENSION_FORMATS, FORMAT_EXTENSIONS, HIGH_BIT_MODES, ORIENTATIONS, PHASH_BITS, Finding,
)

logger = logging.getLogger("transferkit")

# --- one file ----------------------------------------------------------------------------


@contextlib.contextmanager
def strict_pillow() -> Iterator[None]:
    """Truncated files must fail, and the size limit is ours, not a Pillow warning."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def gather_facts(candidates, cache, data_root, max_pixels, workers, progress):
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
                return facts  # refused by file_findings; decoded stays False so a higher limit re-decodes it
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


def read_head(path: str, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def _unidentified(path: str) -> list[str]:
    """Why Pillow could not even identify a file with an image extension."""
    code, what = sniff(read_head(path))
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


def sniff(head: bytes) -> tuple[str, str]:
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


def file_findings(path: str, facts: dict, max_pixels: int, min_size: int) -> tuple[str | None, list[Finding]]:
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
