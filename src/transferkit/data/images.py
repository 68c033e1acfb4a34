"""Decoding with Pillow (the one decoder every entry point uses) and the streaming `tf.data` pipeline."""

from __future__ import annotations

import io
import logging
import os
from typing import BinaryIO, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from transferkit.data.files import DEFAULT_MAX_PIXELS
from transferkit.errors import DataError

logger = logging.getLogger("transferkit")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        if image.mode != "F" and array.max() > 255:
            array = array / 257.0  # 16-bit range onto 8-bit
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema() == (255, 255):
        return image.convert("RGB")  # opaque: compositing would change nothing
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class PixelLimitError(DataError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def load_image(path: str | os.PathLike | BinaryIO, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> np.ndarray:
    """Decode one file (a path or a binary file object) to a uint8 RGB array; with `size`,
    its centre size x size square (shorter side resized to `size`, the longer one cropped to it).

    The pixel count is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing. `name` labels the image in errors (default: the path).
    """
    name = name or str(path)
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as error:  # Pillow's own, far higher, limit
        raise PixelLimitError(f"{name}: {error} The limit here is {max_pixels} pixels.") from None
    with opened as image:
        if image.width * image.height > max_pixels:
            raise PixelLimitError(
                f"{name}: {image.width}x{image.height} pixels is above the limit of {max_pixels} "
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


def load_image_bytes(data: bytes, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                     name: str = "upload") -> np.ndarray:
    """`load_image` on an image held in memory (an HTTP upload), so it sees the same pixels as a file would."""
    return load_image(io.BytesIO(data), size, max_pixels, name=name)


def _load_or_flag(path: bytes, size: np.int64) -> tuple[np.ndarray, bool]:
    try:
        return load_image(path.decode(), int(size)), True
    except Exception as error:  # noqa: BLE001 - a bad file must never stop an epoch
        logger.warning("Skipping unreadable image %s: %s", path.decode(), error)
        return np.zeros((int(size), int(size), 3), np.uint8), False


def decoded_batches(paths: Sequence[str], image_size: int, batch_size: int, workers: int | None = None,
                    ahead: int = 4, dtype=np.float32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images (n, size, size, 3) in 0-255 as `dtype`, readable flags (n,)) per batch, in order, without TensorFlow.

    The same decoder as `make_dataset` on a thread pool (Pillow releases the GIL while it
    decodes and resizes), at most `ahead` batches in flight, so memory stays bounded and
    a process that predicts on OpenVINO never imports TensorFlow.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def decode_batch(chunk):
        decoded = [_load_or_flag(str(path).encode(), image_size) for path in chunk]
        return (np.stack([image for image, _ in decoded]).astype(dtype, copy=False),
                np.array([ok for _, ok in decoded], bool))

    workers = workers or max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
    chunks = (paths[i: i + batch_size] for i in range(0, len(paths), batch_size))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(decode_batch, chunk))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
