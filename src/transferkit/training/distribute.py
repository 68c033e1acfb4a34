"""Training on several machines: `tf.distribute.MultiWorkerMirroredStrategy` with workers from TF_CONFIG.

Every worker runs the same program on the same files (the split is a hash of the paths, so all
agree on it); each step's batch is divided among them and the gradients are all-reduced, so
two workers train like one with the same global batch, and metrics (hence early stopping and
the best epoch) are the same on all. Because every collective needs every worker, all of them
train in step; only the chief (task index 0) writes the run folder, the others write into a
temporary folder that is removed when they exit. After training each worker continues with a
local copy of the model (calibration, report), so nothing after training waits for the others.

The strategy must exist before TensorFlow runs its first operation, so `worker_out_dir` (called
first thing by `fit`) creates it.

`check_ray` / `init_ray` start or join Ray (dashboard and usage stats off) for everything that
runs on it: batch prediction, Ray Train's workers and the cache's backbone pass.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from transferkit.errors import ConfigError

STRATEGIES = ("default", "multi-worker")
_strategy = None  # one per process: TensorFlow allows configuring collectives only once


def worker_task() -> tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG, checked."""
    raw = os.environ.get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not raw:
        raise ConfigError(f"strategy 'multi-worker' takes its workers from TF_CONFIG, which is not set; e.g. {example}.")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = task["index"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is not a cluster spec ({error!r}), got {raw!r}; e.g. {example}.") from None
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) for w in workers):
        raise ConfigError(f"TF_CONFIG's cluster.worker must be a list of 'host:port', got {workers!r}.")
    if task.get("type") != "worker" or isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < len(workers):
        raise ConfigError(f"TF_CONFIG's task must be {{'type': 'worker', 'index': 0..{len(workers) - 1}}}, got {task!r}.")
    if "chief" in config["cluster"]:
        raise ConfigError("TF_CONFIG: name every machine a 'worker' (worker 0 is the chief), not 'chief'.")
    return index, len(workers)


def get_strategy(name: str):
    """The strategy for `name`: None for 'default', the process's one MultiWorkerMirroredStrategy otherwise."""
    global _strategy
    if name not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}.")
    if name == "default":
        return None
    if _strategy is None:
        import tensorflow as tf

        worker_task()
        _strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _patch_keras_multi_worker()
    return _strategy


def _patch_keras_multi_worker() -> None:
    """Two fixes for Keras 3's TensorFlow trainer under MultiWorkerMirroredStrategy with more
    than one worker (keras-team/keras#20585; checked with Keras 3.15): before the first step it
    averages the first batch across workers (tuple batches cannot be reduced: build from the
    dataset's element spec instead, shapes are all it needs), and it averages each step's scalar
    logs along axis 0 (scalars have none: average them as they are)."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_transferkit_patched", False):
        return
    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer._transferkit_patched = True


def local_copy(model):
    """The trained model rebuilt outside the strategy (saved and loaded back), so that what comes
    after training (calibration, figures, export) predicts on this worker alone."""
    import keras

    with tempfile.TemporaryDirectory(prefix="transferkit-model-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return keras.saving.load_model(path, compile=False)


def is_chief(name: str) -> bool:
    return name == "default" or worker_task()[0] == 0


def worker_out_dir(out, name: str):
    """`out` for the chief (and without a strategy); a temporary run folder for the other workers."""
    get_strategy(name)
    if out is None or is_chief(name):
        return out
    folder = tempfile.mkdtemp(prefix=f"transferkit-worker{worker_task()[0]}-")
    atexit.register(shutil.rmtree, folder, True)
    return Path(folder) / Path(out).name


def scope(name: str):
    """The strategy's scope (build and compile inside it), or a no-op."""
    strategy = get_strategy(name)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def shard_by_data(dataset, name: str):
    """Under the multi-worker strategy, shard by element (the file list is one tensor, not files)."""
    if name == "default":
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# -- Ray: a local instance or a cluster (prediction, Ray Train, the cache's extraction pass) --------


def check_ray():
    """Import Ray (and pyarrow) with usage stats off, or say how to install them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"--engine ray needs Ray Data and pyarrow, which are not installed ({error}): "
            "pip install 'transferkit[ray]'."
        ) from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Connect to `address` ('auto', 'ray://host:port', 'host:port'), or start a local instance
    (no dashboard); an instance already initialised in this process is used as it is.
    Returns whether this call started or joined one (the caller then shuts it down)."""
    ray = check_ray()
    if ray.is_initialized():
        return False
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(f"address must be 'auto', 'ray://host:port' or 'host:port', got {address!r}.")
    options = dict(include_dashboard=False, log_to_driver=verbose, logging_level=logging.WARNING,
                   configure_logging=True)
    try:
        if address:
            ray.init(address=address, log_to_driver=verbose, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus or max(2, len(os.sched_getaffinity(0))), **options)
    except ConnectionError as error:
        raise ConfigError(f"Cannot reach the Ray cluster at {address!r}: {error}") from None
    return True
