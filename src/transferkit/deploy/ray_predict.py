"""Batch prediction on Ray Data: many files, many workers, results streamed to one file.

The driver lists the files (folders expanded like `predict`, or a listing file `@list.txt`),
drops those the output already holds (a killed run continues where it stopped), and hands the
rest to Ray Data. An actor pool of `Predictor`s (each built once per actor: the model is loaded
once, not per batch) decodes with `data.load_image`, so every pixel equals local prediction's,
and predicts; the driver writes each result block as it arrives. Memory stays bounded: Ray
Data's streaming executor holds only a few batches in flight, and the driver keeps paths only.

One row per file: path, label, confidence, top_k (JSON), unknown, score, error (the reason an
unreadable file got no label; such a file is a row, never a crash). Workers on other machines
must see the run folder and the images under the same paths (a shared file system).
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data
from transferkit.deploy.prediction_sinks import open_sink, schema
from transferkit.deploy.runtimes import DEFAULT_BATCH, export_kind
from transferkit.errors import ConfigError, DataError
from transferkit.training.distribute import check_ray, init_ray  # noqa: F401 - init_ray: for callers

logger = logging.getLogger("transferkit")

# Files per Ray batch: enough to keep the per-batch overhead (scheduling, transfer) small
# next to the inference; the model itself runs in chunks of the runtime's own batch size.
RAY_BATCH = 64


def read_inputs(inputs: Sequence) -> list[str]:
    """Image paths from files, folders (searched recursively) and listing files `@list.txt`
    (one path per line, blank lines and '#' comments skipped), each path once, in order."""
    paths: list[str] = []
    for item in inputs:
        text = str(item)
        if text.startswith("@"):
            listing = Path(text[1:])
            if not listing.is_file():
                raise DataError(f"Listing file '{listing}' (from '{text}') does not exist; give one path per line.")
            with open(listing, encoding="utf-8") as handle:
                paths.extend(line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#"))
        else:
            paths.extend(data.expand_image_paths([item]))
    return list(dict.fromkeys(paths))


class BatchPredictor:
    """The callable class of the actor pool: one `Predictor` per actor, built once."""

    def __init__(self, source: str, runtime: str, threads: int, top_k: int, reject: bool,
                 accept_rate: float | None, threshold: float | None):
        import tensorflow as tf

        from transferkit.deploy.predictor import Predictor

        try:  # a worker shares its machine: use only the CPUs Ray gave it
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow already running in this worker process
            pass
        self.predictor = Predictor(source, runtime=runtime, num_threads=threads)
        self.scored = reject and self.predictor.can_reject
        self.top_k, self.accept_rate, self.threshold = top_k, accept_rate, threshold
        self.chunk = DEFAULT_BATCH.get("keras" if self.scored else runtime, 32)
        self.pool = ThreadPoolExecutor(max(1, threads))  # Pillow decodes outside the GIL

    def _decode(self, path: str):
        try:
            return data.load_image(path, self.predictor.image_size), None
        except Exception as error:  # noqa: BLE001 - an unreadable file is a row with its reason
            return None, f"{type(error).__name__}: {error}"

    def __call__(self, batch: dict):
        import pyarrow as pa

        from transferkit.deploy.predictor import rank

        paths = [str(p) for p in batch["path"]]
        decoded = list(self.pool.map(self._decode, paths))
        good = [i for i, (image, _) in enumerate(decoded) if image is not None]
        rows = {i: {"path": paths[i], "error": error} for i, (image, error) in enumerate(decoded) if image is None}
        for start in range(0, len(good), self.chunk):
            index = good[start: start + self.chunk]
            images = np.stack([decoded[i][0] for i in index]).astype(np.float32)
            scores = limit = None
            if self.scored:
                probabilities, scores, limit = self.predictor.predict_images_with_scores(
                    images, accept_rate=self.accept_rate, threshold=self.threshold)
            else:
                probabilities = self.predictor.predict_images(images)
            for i, p in zip(index, rank([paths[i] for i in index], probabilities, self.predictor.classes,
                                        self.top_k, scores, limit)):
                rows[i] = {"path": p.path, "label": p.label, "confidence": p.confidence,
                           "top_k": json.dumps([{"label": label, "probability": prob} for label, prob in p.top_k]),
                           "unknown": p.unknown, "score": p.score, "error": None}
        for i in range(len(paths)):  # a decoded image whose output was not finite
            rows.setdefault(i, {"path": paths[i], "error": "the model's output was not finite"})
        return pa.Table.from_pylist([rows[i] for i in range(len(paths))], schema=schema())


def predict_to_file(source, inputs: Sequence, output, *, address: str | None = None, workers: int = 1,
                    top_k: int = 1, batch_size: int | None = None, runtime: str = "auto", reject: bool = True,
                    accept_rate: float | None = None, threshold: float | None = None, verbose: bool = False,
                    flush_rows: int | None = None) -> dict:
    """Predict every input file on Ray into `output` (.parquet or .csv), skipping files it holds already.

    Returns figures: files, done_before, predicted, errors, seconds, images_per_second, workers, output.
    """
    from transferkit.deploy.predictor import Predictor
    from transferkit.progress import progress_bar

    for name, value in (("workers", workers), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    sink = open_sink(output, flush_rows)
    planner = Predictor(source, runtime=runtime)  # checks the model and the runtime before Ray starts
    paths = read_inputs(inputs)
    done = sink.done_paths()
    todo = [p for p in paths if p not in done]
    stats = {"files": len(paths), "done_before": len(paths) - len(todo), "predicted": 0, "errors": 0,
             "seconds": 0.0, "images_per_second": None, "workers": workers, "output": str(sink.path)}
    if not todo:
        sink.finish()
        return stats
    scored = reject and planner.can_reject
    worker_runtime = "keras" if scored and planner.kind == "run" else planner.runtime_for_workers(len(todo), todo[:64])
    started_here = init_ray(address, verbose=verbose)
    ray = check_ray()
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.WARNING)
        cpus = float(ray.cluster_resources().get("CPU", 1)) / workers
        threads = max(1, int(cpus))
        batch = batch_size or RAY_BATCH
        blocks = max(1, min(10_000, math.ceil(len(todo) / batch)))
        dataset = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=blocks)
        results = dataset.map_batches(
            BatchPredictor, batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
            fn_constructor_kwargs=dict(source=str(Path(source).resolve()), runtime=worker_runtime, threads=threads,
                                       top_k=top_k, reject=reject, accept_rate=accept_rate, threshold=threshold))
        begun = time.perf_counter()
        with progress_bar(len(todo), "Predicting on Ray", verbose) as advance:
            for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                sink.write(table)
                stats["predicted"] += table.num_rows
                stats["errors"] += table.num_rows - table.column("error").null_count
                advance(table.num_rows)
        sink.finish()
        seconds = time.perf_counter() - begun
    finally:
        sink.close()
        if started_here:
            ray.shutdown()
    stats.update(seconds=round(seconds, 3), images_per_second=round(stats["predicted"] / seconds, 1) if seconds else None,
                 runtime=worker_runtime, kind=export_kind(source))
    return stats
