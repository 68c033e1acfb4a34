"""The activation cache's backbone pass on Ray actors (`train --engine ray`, with the cache).

The pass is split into its batches (view v, batch k: the same files, in the same order, as
the local pass), handed to a pool of actors that each build the model once (same settings,
same seed: the same weights and augmentation layers) and write their results into the cache
folder's arrays; training then reads that folder as a local cache under the same key.

The augmented views equal the local ones: Keras's random layers draw from a seed and a
counter that each call advances by a fixed step, so an actor sets the counter a batch would
have had locally (k x (views - 1) + v - 1 calls: the local pass decodes batch k once and draws its
views 1.. in turn) before drawing for it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data
from transferkit.settings import Settings


class ViewWorker:
    """One actor: the model built once, then batches of (view, batch index, paths)."""

    def __init__(self, build, settings: Settings, num_classes: int, cut: int | None, threads: int):
        """`build(resolved, num_classes)`: the model builder of the local pass (pipeline.build)."""
        import tensorflow as tf

        from transferkit.training.cache import ViewExtractor

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already running in this worker process
            pass
        resolved = settings.resolve()
        self.image_size = resolved.image_size
        self.extractor = ViewExtractor(build(resolved, num_classes), cut, "tensorflow")
        augmenter = self.extractor.augmenter
        self.counters = [v for v in (augmenter.variables if augmenter is not None else [])
                         if "seed_generator_state" in v.path]
        self.start = [np.asarray(v.numpy()) for v in self.counters]
        self.step = [np.zeros_like(s) for s in self.start]
        if self.counters:  # measure each generator's step on one call, then rewind
            self.extractor.run(np.zeros((1, self.image_size, self.image_size, 3), np.float32), True)
            self.step = [np.asarray(v.numpy()) - s for v, s in zip(self.counters, self.start)]
            self._rewind(0)

    def _rewind(self, calls: int) -> None:
        for variable, start, step in zip(self.counters, self.start, self.step):
            variable.assign(start + calls * step)

    def _decode(self, path: str):
        try:
            return data.load_image(path, self.image_size), True
        except Exception:  # noqa: BLE001 - as in the local pass: zeros, flagged unreadable
            return np.zeros((self.image_size, self.image_size, 3), np.uint8), False

    def run(self, view: int, index: int, views: int, paths: Sequence[str]):
        decoded = [self._decode(p) for p in paths]
        images = np.stack([image for image, _ in decoded]).astype(np.float32)
        if view > 0:  # the local pass draws views 1.. of batch 0, then of batch 1, ...
            self._rewind(index * (views - 1) + view - 1)
        boundary, pooled = self.extractor.run(images, view > 0)
        boundary = boundary.astype(np.float16) if boundary is not None else None
        return view, index, boundary, pooled, np.array([ok for _, ok in decoded])


def extract_on_ray(build, settings: Settings, num_classes: int, extractor, cut: int | None, paths: Sequence[str],
                   views: int, folder: Path, progress=None) -> None:
    """Compute and store the cache arrays of `paths` in `folder` (the cache key's folder) on Ray."""
    from transferkit.training.cache import _allocate, _finish
    from transferkit.training.distribute import check_ray, init_ray

    settings = dataclasses.replace(settings, verbose=0, engine="local")
    started = init_ray(settings.ray_address)
    ray = check_ray()
    from ray.util import ActorPool

    try:
        workers = settings.workers
        cpus = float(ray.cluster_resources().get("CPU", 1)) / workers
        actor = ray.remote(num_cpus=cpus)(ViewWorker)
        pool = ActorPool([actor.remote(build, settings, num_classes, cut, max(1, int(cpus)))
                                   for _ in range(workers)])
        n, size = len(paths), settings.batch_size
        batches = math.ceil(n / size)
        pooled = _allocate((n, views, extractor.pooled_dim), np.float32, folder, "pooled")
        boundary = (_allocate((n, views, *extractor.boundary_shape), np.float16, folder, "boundary")
                    if extractor.boundary_shape else None)
        readable = np.ones(n, bool)
        jobs = [(v, k, views, list(paths[k * size:(k + 1) * size])) for k in range(batches) for v in range(views)]
        for view, index, part_boundary, part_pooled, ok in pool.map_unordered(
                lambda a, job: a.run.remote(*job), jobs):
            rows = slice(index * size, index * size + len(ok))
            pooled[rows, view] = part_pooled
            if boundary is not None:
                boundary[rows, view] = part_boundary
            readable[rows] &= ok
            if progress:
                progress(len(ok))
        _finish(pooled, folder, "pooled")
        if boundary is not None:
            _finish(boundary, folder, "boundary")
        _finish(readable, folder, "readable")
    finally:
        if started:
            ray.shutdown()
