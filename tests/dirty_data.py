"""A dirty image folder built from real photos: every problem `transferkit doctor` knows, planted.

`build_dirty_dataset(dest)` copies a few clean alpaca photos per class, then plants each
case (most of them twice) and returns what the doctor must report: for each planted
problem its code and the file(s) involved, and nothing else. The source images come
from ../shared, which is only ever read.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import pytest

from conftest import ALPACA, NO_SHARED

CLASSES = ("alpaca", "not alpaca")
BASE_PER_CLASS = 8


@dataclass
class DirtyDataset:
    root: Path
    outside: Path  # targets of the symbolic links, beside root
    expected: set = field(default_factory=set)  # {(code, frozenset of paths relative to root)}

    def plant(self, code: str, *paths: str) -> None:
        self.expected.add((code, frozenset(paths)))


def sources() -> list[Path]:
    """Real photos no base image is derived from: the material for the planted files."""
    if not ALPACA.is_dir():
        pytest.skip(NO_SHARED)
    return sorted((ALPACA / "alpaca").iterdir())[BASE_PER_CLASS:] + sorted((ALPACA / "not alpaca").iterdir())[BASE_PER_CLASS:]


def photo(path: Path, size: int | None = 200) -> Image.Image:
    with Image.open(path) as image:
        image = image.convert("RGB")
        return image.resize((size, size)) if size else image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG that claims width x height: what a decompression bomb looks like to a header reader."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def garble(data: bytes) -> bytes:
    """Overwrite 2 KB in the middle of the compressed data: the header still parses, decoding fails."""
    out = bytearray(data)
    for i in range(len(out) // 3, len(out) // 3 + 2000):
        out[i] = (out[i] * 7 + 13) % 256
    return bytes(out)


def near_copy(image: Image.Image) -> bytes:
    """Smaller and re-compressed: different bytes, the same picture."""
    return encode(image.resize((image.width * 7 // 10, image.height * 7 // 10), Image.Resampling.LANCZOS), "JPEG", quality=60)


def build_dirty_dataset(dest: Path) -> DirtyDataset:
    if not ALPACA.is_dir():
        pytest.skip(NO_SHARED)
    root, outside = dest / "dirty", dest / "outside"
    data = DirtyDataset(root, outside)
    base = {}
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        base[name] = sorted((ALPACA / name).iterdir())[:BASE_PER_CLASS]
        for f in base[name]:
            shutil.copy2(f, root / name / f.name)
    pool = iter(sources())
    a, n = root / "alpaca", root / "not alpaca"

    def write(path: Path, content: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return str(path.relative_to(root))

    # Errors: files training would skip.
    data.plant("empty", write(a / "empty.jpg", b""))
    data.plant("empty", write(n / "empty.png", b""))
    jpeg = next(pool).read_bytes()
    data.plant("truncated", write(a / "truncated.jpg", jpeg[: len(jpeg) // 2]))
    png = encode(photo(next(pool)), "PNG")
    data.plant("truncated", write(n / "truncated.png", png[: len(png) // 2]))
    data.plant("corrupt", write(a / "corrupt.jpg", garble(next(pool).read_bytes())))
    data.plant("corrupt", write(n / "corrupt.png", garble(encode(photo(next(pool)), "PNG"))))
    data.plant("not-an-image", write(a / "page.jpg", b"<!DOCTYPE html>\n<html><head><title>Alpaca</title></head>"
                                                     b"<body><img src='alpaca.jpg'></body></html>\n"))
    data.plant("not-an-image", write(n / "notes.png", b"to do: find more llama photos\n"))
    data.plant("unsupported-format", write(a / "iphone.jpg", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 200))
    data.plant("too-many-pixels", write(a / "bomb.png", png_header_only(100_000, 100_000)))  # Pillow's own refusal
    data.plant("too-many-pixels", write(n / "huge.png", png_header_only(12_000, 12_000)))  # over our limit only
    os.symlink(outside / "gone.jpg", a / "broken-link.jpg")
    data.plant("broken-symlink", "alpaca/broken-link.jpg")

    # Warnings: used, but worth a look.
    data.plant("extension-mismatch", write(a / "png-named.jpg", encode(photo(next(pool)), "PNG")))
    data.plant("extension-mismatch", write(n / "jpeg-named.png", encode(photo(next(pool)), "JPEG", quality=90)))
    frames = [photo(next(pool), 120) for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    data.plant("animated", write(a / "animated.gif", gif.getvalue()))
    data.plant("too-small", write(a / "tiny.jpg", encode(photo(next(pool), 24), "JPEG", quality=95)))
    data.plant("too-small", write(n / "tiny.png", encode(photo(next(pool), 20), "PNG")))
    data.plant("unsupported-extension", write(a / "scan.ppm", encode(photo(next(pool)), "PPM")))
    data.plant("outside-class", write(root / "loose.jpg", next(pool).read_bytes()))
    os.symlink(".", a / "loop")
    data.plant("symlink-loop", "alpaca/loop")
    twin = base["alpaca"][0]
    data.plant("duplicate", f"alpaca/{twin.name}", write(a / "copy.jpg", twin.read_bytes()))
    mislabelled = base["alpaca"][1]
    data.plant("duplicate-across-classes", f"alpaca/{mislabelled.name}", write(n / "mislabelled.jpg", mislabelled.read_bytes()))
    similar = base["alpaca"][2]
    data.plant("near-duplicate-across-classes", f"alpaca/{similar.name}", write(n / "resized-alpaca.jpg", near_copy(photo(similar, None))))

    # Notes: handled automatically, said so.
    resized = base["alpaca"][3]
    data.plant("near-duplicate", f"alpaca/{resized.name}", write(a / "resized.jpg", near_copy(photo(resized, None))))
    data.plant("cmyk", write(a / "cmyk.jpg", encode(photo(next(pool)).convert("CMYK"), "JPEG", quality=90)))
    grey16 = (np.asarray(photo(next(pool)).convert("L"), dtype=np.uint16) * 257)
    data.plant("high-bit-depth", write(a / "grey16.png", encode(Image.fromarray(grey16), "PNG")))
    data.plant("palette", write(a / "palette.png", encode(photo(next(pool)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")))
    rgba = photo(next(pool)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    data.plant("transparency", write(a / "alpha.png", encode(rgba, "PNG")))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter, to be shown rotated 90 degrees
    data.plant("exif-rotated", write(a / "rotated.jpg", encode(photo(next(pool)).rotate(90, expand=True), "JPEG", exif=exif)))
    write(a / "more" / "one.jpg", next(pool).read_bytes())
    write(a / "more" / "two.jpg", next(pool).read_bytes())
    data.plant("nested-folder", "alpaca/more")
    outside.mkdir(parents=True)
    shutil.copy2(next(pool), outside / "elsewhere.jpg")
    os.symlink(outside / "elsewhere.jpg", a / "linked.jpg")
    data.plant("symlink", "alpaca/linked.jpg")
    (outside / "folder").mkdir()
    shutil.copy2(next(pool), outside / "folder" / "inside.jpg")
    os.symlink(outside / "folder", a / "linked-folder")
    data.plant("symlink", "alpaca/linked-folder")
    data.plant("nested-folder", "alpaca/linked-folder")
    data.plant("non-image-file", write(a / "notes.txt", b"shot at the farm, spring\n"))

    # OS litter and hidden files: ignored silently, so nothing is planted in `expected`.
    write(root / ".DS_Store", b"\0\0\0\1Bud1" + b"\0" * 64)
    write(a / ".DS_Store", b"\0\0\0\1Bud1" + b"\0" * 64)
    write(n / "Thumbs.db", b"\xd0\xcf\x11\xe0" + b"\0" * 64)
    write(n / "desktop.ini", b"[.ShellClassInfo]\n")
    write(a / "._apple-double.jpg", b"\0\x05\x16\x07" + b"\0" * 64)
    write(a / ".hidden.jpg", b"not even an image")
    write(root / "__MACOSX" / "alpaca" / "._x.jpg", b"\0\x05\x16\x07")
    write(a / ".thumbnails" / "t.jpg", b"junk")
    return data
