"""The training job as a pipeline: scan -> split -> build -> stages, each a function of its own.

`train` runs them in order and returns a `TrainedModel`; `ImageClassifier.fit` adds the
finish (test score, save, figures, report). Every setting was validated before the
first step (`Settings.resolve`), and every check on the data runs before training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from transferkit import data
from transferkit.data import doctor
from transferkit.errors import DataError
from transferkit.progress import progress_bar
from transferkit.runs import folder as rundir
from transferkit.runs.trained import TrainedModel
from transferkit.settings import ResolvedSettings, parse_duration
from transferkit.training import distribute, schedules, update
from transferkit.training.budget import FALLBACK_SIZES, BudgetPlan
from transferkit.training.stages import Stage, run_stages

logger = logging.getLogger("transferkit")

# Exact duplicates always share a split; near-duplicate groups only while this small,
# since chained near duplicates (a burst, a render series) can swallow a class.
MAX_NEAR_DUPLICATE_GROUP = 8
PARAMS_FILE = "params.json"  # in the checkpoint folder: what a resume starts again from


@dataclass
class ScannedData:
    """The usable files of each folder after the doctor's decode of every file."""

    data_dir: Path
    val_dir: Path | None
    test_dir: Path | None
    usable: dict[str, data.LabelledFiles | None]  # per split folder; None for a folder not given
    skipped: list[dict] = field(default_factory=list)
    file_hashes: dict[str, str] = field(default_factory=dict)
    duplicate_groups: list = field(default_factory=list)
    name_groups: int = 0  # groups --group-by found in the file names (set by `split`)
    group_of: dict = field(default_factory=dict)  # {path: its group's key} for files of those groups (split.csv)


def writable_or_none(folder: Path) -> Path | None:
    """`folder` if files can be written there, else None (with a warning): caches then stay in memory."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return folder
    except OSError as error:
        logger.warning("Cache folder %s is not writable (%s); keeping caches in memory for this run.", folder, error)
        return None


def check_folders(data_dir, val_dir=None) -> tuple[Path, Path | None, Path | None]:
    """(train, validation, test) folders of the layout, each checked for class folders with images."""
    data_dir, val_dir, test_dir = data.resolve_layout(data_dir, val_dir)
    files = data.list_class_folders(data_dir)
    for folder in (val_dir, test_dir):
        if folder is not None:
            data.list_class_folders(folder, classes=files.classes)
    return data_dir, val_dir, test_dir


def scan(data_dir: Path, val_dir: Path | None, test_dir: Path | None, cache_dir: str | None,
         verbose: int) -> ScannedData:
    """Decode every file once (the `doctor` scan, cached by size and mtime) and keep the usable ones,
    so a bad file can never stop an epoch."""
    cache_root = writable_or_none(Path(cache_dir) if cache_dir else Path.home() / ".cache" / "transferkit")
    folders = (data_dir, val_dir, test_dir)
    identity = hashlib.sha256("|".join(str(f and Path(f).resolve()) for f in folders).encode()).hexdigest()
    with progress_bar(0, "Checking images", enabled=bool(verbose)) as advance:
        result = doctor.scan_dataset(
            data_dir, val_dir=val_dir, test_dir=test_dir,
            cache_path=cache_root / "scans" / f"{identity[:20]}.json" if cache_root else None,
            progress=lambda done, total: advance(done, total),
        )
    skipped = doctor.skipped_rows(result)
    if skipped:
        logger.warning("Skipping %d file(s) that cannot be used, e.g. %s (%s); `transferkit doctor` lists them all.",
                       len(skipped), skipped[0]["path"], skipped[0]["reason"])
    usable = {}
    for split, folder in zip(data.SPLITS, folders):
        usable[split] = None if folder is None else doctor.usable_labelled(result, split)
        empty = [name for name, n in usable[split].class_counts().items() if n == 0] if folder else []
        if empty:
            raise DataError(
                f"Class(es) {empty} have no usable image left in '{folder}' after skipping unreadable "
                "files. Run `transferkit doctor` on the folder to see why each file was refused."
            )
    return ScannedData(
        data_dir, val_dir, test_dir, usable, skipped,
        file_hashes={record.path: record.sha256 for record in result.images},
        duplicate_groups=[group.paths for group in result.duplicates
                          if group.kind == "exact" or len(group.paths) <= MAX_NEAR_DUPLICATE_GROUP],
    )


def split(scanned: ScannedData, val_split: float, test_split: float, seed: int,
          group_by: str | None = None) -> dict[str, data.LabelledFiles]:
    """{train, validation, test}: the given folders, else a stratified split of DATA_DIR that keeps
    duplicates (and, with `group_by`, files of one group) on one side."""
    from transferkit.data.split import name_groups, name_key

    files = scanned.usable[data.TRAIN]
    groups = list(scanned.duplicate_groups)
    if group_by not in (None, "none") and scanned.val_dir is None:
        named = name_groups(files.paths, files.labels, group_by)
        logger.info("--group-by %s: %d group(s) of files kept on one side of the split", group_by, len(named))
        groups += named
        scanned.name_groups = len(named)
        scanned.group_of = {path: name_key(path, group_by) for members in named for path in members}
    empty = data.LabelledFiles((), (), files.classes)
    if scanned.val_dir is not None:
        train, val, test = files, scanned.usable[data.VALIDATION], scanned.usable[data.TEST]
    else:
        train, val, held_out = data.stratified_split(
            files, val_split, seed, root=scanned.data_dir, groups=_merged(groups),
            test_split=0.0 if scanned.test_dir is not None else test_split,
        )
        test = scanned.usable[data.TEST] if scanned.test_dir is not None else held_out
    return {data.TRAIN: train, data.VALIDATION: val, data.TEST: test if test is not None else empty}


def _warn_if_validation_leaks(history: list[dict], n_val: int, name_groups: int) -> None:
    """Perfect validation accuracy from the first epoch on a large split, with no series kept together,
    usually means near copies of training images in it (frames or renders of one subject)."""
    if not name_groups and n_val >= 100 and history and history[0].get("val_accuracy") == 1.0:
        logger.warning(
            "Validation accuracy was 1.000 from the first epoch on %d images: the validation images are probably "
            "near copies of training ones (a series of frames or renders of the same subject), so they cannot tell "
            "epochs apart. Keep each series on one side with --group-by auto (a shared name prefix and a counter) "
            "or a regular expression whose first group names the subject.", n_val)


COARSE_VALIDATION = 0.02  # two standard errors of validation accuracy above this: too coarse to choose epochs by


def epochs_within_noise(history: list[dict], n_val: int, best_epoch: int | None) -> int | None:
    """How many epochs scored within two standard errors (at least one image) of the kept one's validation
    accuracy, where that band is wider than COARSE_VALIDATION and there was a choice; else None. Warns then."""
    best = next((row for row in history if row["epoch"] == best_epoch), None)
    if len(history) < 2 or best is None or not n_val or "val_accuracy" not in best:
        return None
    accuracy = best["val_accuracy"]
    band = max(2 * math.sqrt(accuracy * (1 - accuracy) / n_val), 1 / n_val)
    close = [row["epoch"] for row in history if abs(row.get("val_accuracy", np.nan) - accuracy) <= band + 1e-9
             ] if band > COARSE_VALIDATION else []
    if len(close) < 2:
        return None
    logger.warning(
        "Validation has %d images, too few to tell epochs apart: %d of the %d epochs scored within %.1f points "
        "(two standard errors) of the kept epoch %d (%.3f), so which of them generalises best is chance. A larger "
        "--val-split or a validation folder makes the choice meaningful; the solved head (the default, without "
        "--epochs or --fine-tune-epochs) needs no epoch choice.", n_val, len(close), len(history), 100 * band,
        best_epoch, accuracy)
    return len(close)


def _merged(groups: list) -> list[list[str]]:
    """Overlapping groups (a duplicate pair inside a series) joined, so each file has one group."""
    owner: dict[str, int] = {}
    merged: list[set] = []
    for group in groups:
        hits = {owner[p] for p in group if p in owner}
        target = set(group).union(*(merged[i] for i in hits))
        for i in hits:
            merged[i] = set()
        merged.append(target)
        for p in target:
            owner[p] = len(merged) - 1
    return [sorted(g) for g in merged if g]


def build(resolved: ResolvedSettings, num_classes: int):
    """The end-to-end Keras model, seeded."""
    import keras

    from transferkit.modeling.classifier import build_classifier

    s = resolved.settings
    keras.utils.set_random_seed(s.seed)
    return build_classifier(resolved.spec, num_classes, resolved.image_size, weights=s.weights,
                            weights_dir=s.weights_dir, augmentation=resolved.augmentation, dropout=s.dropout,
                            hidden_units=tuple(s.hidden_units), seed=s.seed)


@dataclass
class StagePlan:
    stages: list[Stage]
    epochs: int
    fine_tune_epochs: int
    cached_views: int | None = None
    backbone_images: int | None = None  # backbone passes the cache made
    cache_runtime: dict | None = None  # which runtime and precision computed the cache
    budget: BudgetPlan | None = None  # what --time-budget chose
    # {split: (pooled features, logits, labels)} of the un-augmented images from the cache, with the final
    # weights; None without a cache (a pass over the files then gives them)
    plain_outputs: Callable[[], dict | None] = lambda: None
    head: dict | None = None  # how stage 1 fitted the head when it was solved (solver, C, folds)


def stage_epochs(resolved: ResolvedSettings, n_train: int) -> tuple[int, int]:
    """(head epochs, fine-tuning epochs): as set, or enough optimiser steps for the data size
    (fewer for a run that starts from a trained one)."""
    s = resolved.settings
    auto_head, auto_fine_tune = schedules.stage_epochs(n_train, s.batch_size, update=s.from_run is not None)
    if solves_head(s):  # on the solved head, fine-tuning cost accuracy on most sets measured (BENCHMARKS.md)
        auto_fine_tune = 0
    return s.epochs or auto_head, s.fine_tune_epochs if s.fine_tune_epochs is not None else auto_fine_tune


def views_per_image(resolved: ResolvedSettings, n_train: int, fine_tune_epochs: int) -> int:
    """Views per training image: as set, else one (un-augmented) where only the solved head uses them,
    else enough augmented draws for the data size."""
    s = resolved.settings
    if s.cached_views:
        return s.cached_views
    if solves_head(s) and not fine_tune_epochs:
        return 1
    return schedules.auto_views(n_train, update=s.from_run is not None)


def view_extractor(model, resolved: ResolvedSettings, fine_tune_epochs: int, passes: int):
    """The cache's extractor, cut at the fine-tuning boundary when there is a stage 2."""
    from transferkit.modeling.classifier import backbone_of, clean_cut, fine_tune_index
    from transferkit.modeling.forward import compute_for
    from transferkit.training import cache

    base = backbone_of(model)
    cut = clean_cut(base, fine_tune_index(base, resolved.fine_tune_at)) if fine_tune_epochs else None
    return cache.ViewExtractor(model, cut, compute_for(resolved.settings.compute, passes))


def plan_stages(model, resolved: ResolvedSettings, splits: dict, data_dir: Path, verbose: int,
                budget: BudgetPlan | None = None) -> StagePlan:
    """Stage 1 (head on the frozen backbone) and stage 2 (fine-tuning the top), with their data."""
    from transferkit.modeling.classifier import unfreeze_from

    s = resolved.settings
    n_train = len(splits[data.TRAIN])
    epochs, fine_tune_epochs = stage_epochs(resolved, n_train)
    plan = StagePlan([], epochs, fine_tune_epochs, budget=budget)
    solve_head = None
    if s.cache:
        head_inputs, top_inputs, solve_head = _cached_inputs(model, resolved, splits, data_dir, fine_tune_epochs, plan,
                                                             verbose)
        solve_head = solve_head if solves_head(s) else None
        plan.epochs = 1 if solve_head else epochs
    else:
        train_ds = distribute.shard_by_data(data.make_dataset(
            *_paths_labels(splits[data.TRAIN]), resolved.image_size, s.batch_size, shuffle=True, seed=s.seed), s.strategy)
        val_ds = distribute.shard_by_data(data.make_dataset(
            *_paths_labels(splits[data.VALIDATION]), resolved.image_size, s.batch_size), s.strategy)
        head_inputs = top_inputs = lambda: (model, train_ds, val_ds)  # noqa: E731 - one model, fitted twice

    def fine_tune_inputs():
        trainable = unfreeze_from(model, resolved.fine_tune_at)
        if verbose:
            print(f"Unfroze the top {trainable} backbone layers from {resolved.fine_tune_at!r}.")
        return top_inputs()

    title = "Stage 1: " + ("the head as a logistic regression on the frozen backbone's features" if solve_head
                           else "training the head on the frozen backbone")
    plan.stages = [
        Stage(1, title, plan.epochs, s.learning_rate, head_inputs, deadline=budget.head_deadline if budget else None,
              solve=solve_head),
        Stage(2, "Stage 2: fine-tuning the top of the backbone", fine_tune_epochs,
              resolved.fine_tune_learning_rate, fine_tune_inputs, warmup=schedules.FINE_TUNE_WARMUP,
              deadline=budget.fine_tune_deadline if budget else None,
              min_seconds=budget.fine_tune_first_epoch if budget else 0.0),
    ]
    return plan


def solves_head(s) -> bool:
    """Whether stage 1 is the closed-form head: one Dense layer on cached features, no --epochs asked for,
    not an update of a run (which starts from its parent's head)."""
    return (s.head_solver == "lbfgs" and s.cache and not s.hidden_units and s.epochs is None
            and s.from_run is None)


def _paths_labels(files: data.LabelledFiles) -> tuple:
    return files.paths, files.labels


def _cached_inputs(model, resolved: ResolvedSettings, splits: dict, data_dir: Path, fine_tune_epochs: int,
                   plan: StagePlan, verbose: int):
    """Stage inputs that train on cached backbone activations (see `training.cache`)."""
    from transferkit.training import cache

    s = resolved.settings
    n_train, n_val = len(splits[data.TRAIN]), len(splits[data.VALIDATION])
    plan.cached_views = plan.budget.views if plan.budget else views_per_image(resolved, n_train, fine_tune_epochs)
    extractor = (plan.budget.extractor if plan.budget and plan.budget.extractor is not None else
                 view_extractor(model, resolved, fine_tune_epochs, n_train * plan.cached_views + n_val))
    base, cut = extractor.base, extractor.cut
    key_settings = {
        "backbone": s.backbone, "weights": _weights_identity(resolved),
        "image_size": resolved.image_size, "augmentation": dataclasses.asdict(resolved.augmentation),
        "cut": base.operations[cut].name if cut is not None else None, "seed": s.seed,
    }
    cache_dir = writable_or_none(Path(s.cache_dir)) if s.cache_dir else None
    arrays = []
    for files, views in ((splits[data.TRAIN], plan.cached_views), (splits[data.VALIDATION], 1)):
        key = cache.cache_key(files, data_dir, {**key_settings, "views": views}) if cache_dir else None
        label = f"Caching backbone activations ({views} view{'s' * (views > 1)})"
        with progress_bar(len(files) * views, label, enabled=bool(verbose)) as advance:
            if s.engine == "ray" and key and not cache.is_complete(cache_dir / key, extractor):
                from transferkit.training.ray_cache import extract_on_ray

                extract_on_ray(build, s, len(files.classes), extractor, cut, files.paths, views, cache_dir / key,
                               advance)
            arrays.append(cache.cached_views(extractor, files, resolved.image_size, views, s.batch_size, cache_dir,
                                             key, advance))
    train, val = arrays
    plan.backbone_images = extractor.images_processed
    plan.cache_runtime = extractor.runtime
    extractor.forward = None  # its compiled model (and the device memory it holds) is not needed again
    plan.plain_outputs = lambda: cache.plain_view_outputs(model, extractor,
                                                          {data.TRAIN: train, data.VALIDATION: val})

    def solve_head():
        from transferkit.modeling.classifier import head_layers
        from transferkit.modeling.linear_head import fit_linear_head

        rows = np.flatnonzero(train.readable)
        weights = schedules.balanced_class_weights(splits[data.TRAIN].class_counts(), s.class_weight)
        head = fit_linear_head(np.asarray(train.pooled[rows, 0]), train.labels[rows], len(splits[data.TRAIN].classes),
                               weights, s.seed)
        head_layers(model)[-1].set_weights([head.kernel, head.bias])
        plan.head = {"solver": "lbfgs", "C": head.C, "cv_folds": head.folds}
        if verbose:
            print(f"The head: {head.describe()}.")

    def batches(kind):
        return (cache.ViewBatches(getattr(train, kind), train, s.batch_size, shuffle=True, seed=s.seed),
                cache.ViewBatches(getattr(val, kind), val, s.batch_size, shuffle=False, seed=s.seed))

    return (lambda: (cache.head_model(model, extractor), *batches("pooled")),
            lambda: (cache.top_model(model, extractor), *batches("boundary")), solve_head)


def _weights_identity(resolved: ResolvedSettings) -> str:
    """What identifies the backbone weights in a cache key: the local file's digest, or the name."""
    from transferkit.modeling.backbones import resolve_weights

    s = resolved.settings
    if s.from_run is not None:  # the parent's fine-tuned backbone is not the ImageNet one
        return "run:" + data.file_digest(Path(s.from_run) / rundir.MODEL_FILE)
    weights = resolve_weights(resolved.spec, s.weights, s.weights_dir)
    return data.file_digest(weights) if weights and os.path.isfile(weights) else str(weights)


def fingerprint(splits: dict, data_dir, file_hashes: dict) -> str:
    """One hash of every used file's relative path, class and contents."""
    digest = hashlib.sha256()
    for files in splits.values():
        for path, label in sorted(zip(files.paths, files.labels)):
            digest.update(f"{os.path.relpath(path, data_dir)}\0{label}\0{file_hashes.get(path)}\n".encode())
    return digest.hexdigest()


def fit_budget(model, resolved: ResolvedSettings, splits: dict, started: float, num_classes: int):
    """--time-budget: time the backbone on a few training images, then choose views, size and deadlines."""
    from transferkit.training.budget import measure_pass, plan_budget

    s = resolved.settings
    n_train, n_val = len(splits[data.TRAIN]), len(splits[data.VALIDATION])
    fine_tune_epochs = stage_epochs(resolved, n_train)[1]
    max_views = views_per_image(resolved, n_train, fine_tune_epochs)
    probe = view_extractor(model, resolved, fine_tune_epochs, n_train * max_views + n_val)
    seconds = measure_pass(probe, splits[data.TRAIN].paths, resolved.image_size, s.batch_size)
    budget = plan_budget(parse_duration(s.time_budget), started, seconds, resolved.image_size, n_train, n_val,
                         max_views, s.write_report, sizes=() if s.from_run is not None else FALLBACK_SIZES)
    if budget.image_size != resolved.image_size:
        resolved = dataclasses.replace(resolved, image_size=budget.image_size)
        model = build(resolved, num_classes)
    else:
        budget.extractor = probe  # the cache pass goes on with the runtime it measured
    if s.verbose:
        print(f"Time budget: {budget.describe()}.")
    return model, resolved, budget


def train(resolved: ResolvedSettings, data_dir, val_dir=None, out_dir: Path | None = None,
          resume: bool = False, loggers: tuple = (), parent=None,
          started: float | None = None) -> tuple[TrainedModel, StagePlan]:
    """scan -> split -> build -> stages. With `out_dir`, every epoch is checkpointed in it.

    With `parent` (a `training.update.Parent`), the model starts from that run's weights.

    `loggers` are Keras callbacks that see every epoch of both stages (TensorBoard, MLflow).
    `started` (a time.perf_counter() value) is when the job began, which --time-budget counts from.
    """
    s = resolved.settings
    data_dir, val_dir, test_dir = check_folders(data_dir, val_dir)
    scanned = scan(data_dir, val_dir, test_dir, s.cache_dir, s.verbose)
    splits = split(scanned, s.val_split, s.test_split, s.seed, s.group_by)
    with distribute.scope(s.strategy):  # multi-worker: the model and its optimisers belong to the strategy
        trained, plan = _build_and_train(resolved, data_dir, val_dir, test_dir, scanned, splits, out_dir, resume,
                                         loggers, parent, started)
    if s.strategy != "default":
        trained.model = distribute.local_copy(trained.model)
    return trained, plan


def _build_and_train(resolved, data_dir, val_dir, test_dir, scanned, splits, out_dir, resume, loggers, parent,
                     started):
    from transferkit.modeling.backbones import find_local_weights
    from transferkit.training.schedules import balanced_class_weights

    s = resolved.settings
    classes = list(splits[data.TRAIN].classes)
    if parent is not None:
        added = update.check_classes(parent, classes)
        if s.verbose:
            print(f"Starting from {parent.trained.run_dir}" + (f", adding class(es) {added}" if added else ""))
    model = update.build_from(parent, resolved, classes) if parent is not None else build(resolved, len(classes))
    steps = math.ceil(len(splits[data.TRAIN]) / s.batch_size)
    if s.verbose:
        counts = ", ".join(f"{k} {v}" for k, v in splits[data.TRAIN].class_counts().items())
        print(f"{len(classes)} classes, {len(splits[data.TRAIN])} training images ({counts}), "
              f"{len(splits[data.VALIDATION])} validation images; {s.backbone} at {resolved.image_size} px, "
              f"{steps} steps per epoch")
    budget = None
    if s.time_budget is not None:
        model, resolved, budget = fit_budget(model, resolved, splits, started or time.perf_counter(), len(classes))
    plan = plan_stages(model, resolved, splits, data_dir, s.verbose, budget)
    checkpoint_dir = None
    if out_dir is not None:
        checkpoint_dir = rundir.prepare_output_dir(out_dir, overwrite=True) / rundir.CHECKPOINT_DIR
        if not resume:
            rundir.write_json(checkpoint_dir / PARAMS_FILE, {
                "params": s.to_json(), "data_dir": str(Path(data_dir).resolve()),
                "val_dir": str(Path(val_dir).resolve()) if val_dir is not None else None,
            })
    class_weights = balanced_class_weights(splits[data.TRAIN].class_counts(), s.class_weight)
    result = run_stages(model, len(classes), plan.stages, patience=s.patience, steps_per_epoch=steps,
                        class_weight=class_weights, checkpoint_dir=checkpoint_dir, resume=resume,
                        verbose=s.verbose, extra_callbacks=tuple(loggers))
    _warn_if_validation_leaks(result.history, len(splits[data.VALIDATION]), scanned.name_groups)
    within_noise = epochs_within_noise(result.history, len(splits[data.VALIDATION]), result.best_epoch)
    resolved_json = {
        "image_size": resolved.image_size,
        "augmentation": dataclasses.asdict(resolved.augmentation),
        "epochs": plan.epochs,
        "fine_tune_epochs": plan.fine_tune_epochs,
        "fine_tune_at": resolved.fine_tune_at,
        "fine_tune_learning_rate": resolved.fine_tune_learning_rate,
        "cached_views": plan.cached_views,
        "head": plan.head or {"solver": "adam"},
        "cache_runtime": plan.cache_runtime,
        "time_budget": {"seconds": parse_duration(s.time_budget), "chose": budget.reasons} if budget else None,
        "class_weight": class_weights,
        "weights_file": str(find_local_weights(resolved.spec, s.weights_dir) or "")
        if s.weights == "imagenet" else s.weights,
    }
    if parent is not None:
        resolved_json["weights_file"] = str(Path(parent.trained.run_dir).resolve() / rundir.MODEL_FILE)
    folder = lambda path: str(Path(path).resolve()) if path is not None else None  # noqa: E731
    summary = {
        "data_dir": folder(data_dir), "val_dir": folder(val_dir), "classes": classes,
        "train_images": len(splits[data.TRAIN]), "val_images": len(splits[data.VALIDATION]),
        "test_images": len(splits[data.TEST]), "test_dir": folder(test_dir),
        "train_class_counts": splits[data.TRAIN].class_counts(),
        "val_class_counts": splits[data.VALIDATION].class_counts(),
        "skipped_files": len(scanned.skipped),
        "fingerprint": fingerprint(splits, data_dir, scanned.file_hashes),
    }
    results = {
        "run_dir": str(out_dir) if out_dir is not None else None, "classes": classes,
        "train_images": len(splits[data.TRAIN]), "val_images": len(splits[data.VALIDATION]),
        "val_accuracy_stage1": result.val_accuracy_stage1, "val_accuracy": result.val_accuracy,
        "val_loss": result.val_loss, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "epochs_within_noise": within_noise,
        "stage_seconds": result.stage_seconds, "interrupted": result.interrupted, "seconds": None,
        "parent_run": parent.record()["run_dir"] if parent is not None else None,
    }
    trained = TrainedModel(
        model=model, classes=classes, image_size=resolved.image_size, backbone=s.backbone, params=s.to_json(),
        resolved=resolved_json, history=result.history, splits=splits, data_summary=summary, results=results,
        file_hashes=scanned.file_hashes, skipped=scanned.skipped, parent=parent.record() if parent else None,
        groups=scanned.group_of,
    )
    return trained, plan
