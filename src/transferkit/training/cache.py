"""Cache what the frozen backbone computes, so epochs cost almost nothing.

In stage 1 the backbone is frozen, so its output for an image changes only with the
augmentation draw. Each training image is pushed through the backbone once for each
of K views (view 0 un-augmented, views 1..K-1 drawn from the model's augmentation
layers; validation images once, un-augmented). One pass records two things:

- the activation at the fine-tuning boundary (a single tensor, see `model.clean_cut`),
  on which stage 2 trains only the unfrozen top of the network, and
- the pooled backbone output, on which stage 1 trains the head.

Every epoch draws one random view per image. The layers are shared with the full
model, so training the small models trains the full one; the saved model is the
complete end-to-end model.

Caches are keyed by everything that changes them (file contents, backbone and
weights, image size, augmentation, cut, views, seed) and can live in a cache folder
as memory-mapped .npy files, reused across runs.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from transferkit import data
from transferkit.runs.folder import atomic_path
from transferkit.modeling.classifier import backbone_of, split_at

logger = logging.getLogger("transferkit")

CACHE_FORMAT = 1
IN_MEMORY_LIMIT_BYTES = 1 << 30  # larger caches go to memory-mapped files


@dataclass
class ViewArrays:
    """Cached activations of one split: arrays of shape (images, views, ...)."""

    boundary: np.ndarray | None
    pooled: np.ndarray
    labels: np.ndarray
    readable: np.ndarray  # False for files that could not be decoded: never trained on


def cache_key(files: data.LabelledFiles, root, settings: dict) -> str:
    """Hash of the files' contents (with relative paths and labels) and the settings."""
    digest = hashlib.sha256(json.dumps({**settings, "format": CACHE_FORMAT}, sort_keys=True, default=str).encode())
    for path, label in zip(files.paths, files.labels):
        digest.update(f"{os.path.relpath(path, root)}\0{label}\0{data.file_digest(path)}\n".encode())
    return digest.hexdigest()[:24]


class ViewExtractor:
    """Runs images through augmentation (TensorFlow), then preprocessing and the split backbone
    on the fastest runtime that agrees with Keras (`modeling.forward`)."""

    def __init__(self, model: keras.Model, cut: int | None, compute: str = "auto"):
        import tensorflow as tf

        base = backbone_of(model)
        names = [layer.name for layer in model.layers]
        self.augmenter = augmenter = model.get_layer("augmentation") if "augmentation" in names else None
        self.pool = model.get_layer("pool")
        self.base, self.cut = base, cut
        self.lower, self.upper = split_at(base, cut) if cut is not None else (base, None)
        self.boundary_shape = tuple(self.lower.output.shape[1:]) if cut is not None else None
        self.pooled_dim = int(self.pool.output.shape[-1])
        self.compute = compute
        self._augment = tf.function(lambda images: augmenter(images, training=True)) if augmenter else None
        images = keras.Input(model.input_shape[1:], name="image")
        boundary = self.lower(model.get_layer("preprocess")(images), training=False)
        top = self.upper(boundary, training=False) if self.upper is not None else boundary
        outputs = [boundary, self.pool(top)] if cut is not None else [self.pool(top)]
        self.features = keras.Model(images, outputs, name="cache_features")
        self.forward = None  # chosen on the first batch, checked against Keras on it
        self.images_processed = 0  # backbone forward passes, to show cache hits skip them

    @property
    def runtime(self) -> dict | None:
        """Which runtime and precision computed the cache (None before the first batch)."""
        if self.forward is None:
            return None
        return {"runtime": self.forward.runtime, "precision": self.forward.precision,
                "description": self.forward.description, **getattr(self.forward, "check", {})}

    def _view(self, images, augment: bool) -> np.ndarray:
        """One view of a decoded batch (one augmentation call when augmented); the first one seen
        picks the runtime, checked against Keras on it."""
        from transferkit.modeling.forward import fast_forward

        images = self._augment(images).numpy() if augment and self._augment is not None else np.asarray(images)
        if self.forward is None:
            self.forward = fast_forward(self.features, images, self.compute)
            logger.info("Backbone activations computed with %s", self.forward.description)
        return images

    def run(self, images: np.ndarray, augment: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """(boundary activations or None, pooled features) of one batch, augmented when asked:
        one augmentation call, as each view of a batch is in `extract` (whose order Ray workers replay)."""
        images = self._view(images, augment)  # sets self.forward on the first batch
        outputs = self.forward(images)
        return (outputs[0] if self.boundary_shape else None), outputs[-1]

    def extract(self, paths: Sequence[str], image_size: int, views: int, batch_size: int,
                boundary_out: np.ndarray | None, pooled_out: np.ndarray, progress=None) -> np.ndarray:
        """Fill `pooled_out[i, v]` (and `boundary_out[i, v]`) for every image and view.

        Returns which images could be decoded.
        """
        dataset = data.make_dataset(paths, None, image_size, batch_size, drop_unreadable=False)
        readable = np.ones(len(paths), bool)

        def batches():  # each file decoded once, all its views drawn from that decode
            row = 0
            for decoded, ok in dataset:
                readable[row : row + len(ok)] &= ok.numpy()
                for view in range(views):
                    images = self._view(decoded, view > 0)
                    yield images, (row, len(images), view)
                row += len(ok)

        def store(outputs, tag):
            row, count, view = tag
            pooled_out[row : row + count, view] = outputs[-1]
            if boundary_out is not None:
                boundary_out[row : row + count, view] = outputs[0].astype(boundary_out.dtype)
            self.images_processed += count
            if progress:
                progress(count)

        stream = batches()
        first = next(stream, None)  # the first batch picks the runtime
        if first is not None:
            self.forward.map(itertools.chain([first], stream), store)
        return readable


def _allocate(shape, dtype, directory: Path | None, name: str):
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if directory is None and nbytes <= IN_MEMORY_LIMIT_BYTES:
        return np.zeros(shape, dtype)
    if directory is None:  # too big for memory, and no cache folder: a scratch folder
        directory = Path(tempfile.mkdtemp(prefix="transferkit-cache-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(directory / f"{name}.partial.npy", mode="w+", dtype=dtype, shape=shape)


def _finish(array, directory: Path | None, name: str):
    """Give a filled array its final file name (atomically) when it is kept on disk."""
    if isinstance(array, np.memmap):
        array.flush()
        final = Path(array.filename).with_name(f"{name}.npy")
        os.replace(array.filename, final)
        return np.load(final, mmap_mode="r")
    if directory is not None:
        with atomic_path(directory / f"{name}.npy") as tmp:
            np.save(tmp, array)
    return array


def cache_names(extractor: ViewExtractor) -> list[str]:
    return ["pooled", "readable"] + (["boundary"] if extractor.boundary_shape else [])


def is_complete(folder: Path, extractor: ViewExtractor) -> bool:
    """Whether a cache folder holds every array (each is renamed into place only when written)."""
    return all((Path(folder) / f"{n}.npy").exists() for n in cache_names(extractor))


def cached_views(extractor: ViewExtractor, files: data.LabelledFiles, image_size: int, views: int,
                 batch_size: int, cache_dir: Path | None, key: str | None, progress=None) -> ViewArrays:
    """Load the arrays for `key` from `cache_dir`, or compute (and store) them."""
    labels = np.asarray(files.labels, np.int32)
    folder = Path(cache_dir) / key if cache_dir is not None and key else None
    names = cache_names(extractor)
    if folder is not None and is_complete(folder, extractor):
        logger.info("Reusing cached backbone activations from %s", folder)
        loaded = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
        return ViewArrays(loaded.get("boundary"), loaded["pooled"], labels, np.asarray(loaded["readable"]))
    n = len(files)
    pooled = _allocate((n, views, extractor.pooled_dim), np.float32, folder, "pooled")
    boundary = (
        _allocate((n, views, *extractor.boundary_shape), np.float16, folder, "boundary")
        if extractor.boundary_shape else None
    )
    readable = extractor.extract(files.paths, image_size, views, batch_size, boundary, pooled, progress)
    pooled = _finish(pooled, folder, "pooled")
    if boundary is not None:
        boundary = _finish(boundary, folder, "boundary")
    _finish(readable, folder, "readable")
    return ViewArrays(boundary, pooled, labels, readable)


class ViewBatches(keras.utils.PyDataset):
    """Batches of cached activations, one randomly drawn view per image each epoch."""

    def __init__(self, arrays: np.ndarray, split: ViewArrays, batch_size: int, shuffle: bool, seed: int):
        super().__init__()
        self.arrays, self.labels = arrays, split.labels
        self.rows = np.flatnonzero(split.readable)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def on_epoch_end(self):
        self.order = self.rng.permutation(self.rows) if self.shuffle else self.rows
        views = self.arrays.shape[1]
        self.views = self.rng.integers(0, views, len(self.labels)) if self.shuffle else np.zeros(len(self.labels), int)

    def __getitem__(self, index):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        batch = self.arrays[rows, self.views[rows]].astype(np.float32)
        return batch, self.labels[rows]


def head_model(model: keras.Model, extractor: ViewExtractor) -> keras.Model:
    """Pooled features -> the model's own head layers (shared weights)."""
    from transferkit.modeling.classifier import head_layers

    inputs = keras.Input((extractor.pooled_dim,), name="pooled")
    x = inputs
    for layer in head_layers(model):
        x = layer(x)
    return keras.Model(inputs, x, name="cached_head")


def top_model(model: keras.Model, extractor: ViewExtractor) -> keras.Model:
    """Boundary activations -> unfrozen top of the backbone -> pooling -> head (shared weights)."""
    from transferkit.modeling.classifier import head_layers

    inputs = keras.Input(extractor.boundary_shape, name="boundary")
    x = extractor.pool(extractor.upper(inputs))
    for layer in head_layers(model):
        x = layer(x)
    return keras.Model(inputs, x, name="cached_top")


def plain_view_outputs(model: keras.Model, extractor: ViewExtractor, splits: dict[str, ViewArrays],
                       batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{split: (pooled features, logits, labels)} of each readable image's un-augmented view (view 0), through
    the trained model's top and head: what a pass over the files would give, without decoding them again."""
    from transferkit.modeling.classifier import head_layers
    from transferkit.modeling.forward import KerasForward
    from transferkit.modeling.openset import head_logits

    name = "boundary" if extractor.boundary_shape else "pooled"
    inputs = keras.Input(extractor.boundary_shape or (extractor.pooled_dim,))
    pooled = extractor.pool(extractor.upper(inputs)) if extractor.boundary_shape else inputs
    penultimate = pooled
    *hidden, last = head_layers(model)
    for layer in hidden:
        penultimate = layer(penultimate)
    forward = KerasForward(keras.Model(inputs, [pooled, penultimate]))  # one trace serves every split
    kernel, bias = last.get_weights()
    results = {}
    for split, arrays in splits.items():
        cached, rows = getattr(arrays, name), np.flatnonzero(arrays.readable)
        features = np.zeros((len(rows), extractor.pooled_dim), np.float32)
        inner = np.zeros((len(rows), kernel.shape[0]), np.float32)
        for i in range(0, len(rows), batch_size):
            features[i: i + batch_size], inner[i: i + batch_size] = forward(
                np.asarray(cached[rows[i: i + batch_size], 0], np.float32))
        results[split] = features, head_logits(inner, kernel, bias), np.asarray(arrays.labels)[rows]
    return results
