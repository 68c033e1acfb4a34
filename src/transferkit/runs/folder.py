"""The run directory: everything a trained classifier needs to be reloaded and audited.

    model.keras          end-to-end Keras model (takes raw 0-255 RGB)
    classes.txt          class names, one per line, in output order
    config.json          every setting, data summary, results, package versions
    history.csv          one row per epoch of both stages
    split.csv            which file went to training or validation
    skipped.csv          files that could not be used, with the reason
    learning_curves.png  samples.png

Files are written to a temporary name and renamed, so a crash never leaves a
half-written file in place of a good one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Sequence

from transferkit.data.files import SPLITS, VALIDATION, LabelledFiles
from transferkit.errors import ConfigError, RunDirError
from transferkit.runs.lock import LOCK_FILE

MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.txt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
SPLIT_FILE = "split.csv"
SKIPPED_FILE = "skipped.csv"
CALIBRATION_FILE = "calibration.json"  # temperature and ECE before/after (runs trained since it existed)
RELIABILITY_FILE = "reliability.png"
OOD_FILE, OOD_ARRAYS_FILE = "ood.json", "ood.npz"  # the unknown detector: settings + feature arrays
# A checked OpenVINO conversion of model.keras (probabilities, pooled features, penultimate) and its head's weights
OPENVINO_DIR, OPENVINO_INFO, OPENVINO_HEAD = "openvino", "openvino.json", "head.npz"
CHECKPOINT_DIR = "checkpoint"  # per-epoch weights and state while training; removed when it finishes
REQUIRED_FILES = (MODEL_FILE, CLASSES_FILE, CONFIG_FILE)


from transferkit.atomic import atomic_path, read_csv, write_csv, write_json, write_text  # noqa: E402,F401


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("transferkit", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pillow", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def has_content(folder: Path) -> bool:
    """Whether `folder` holds anything besides a run-folder lock file."""
    return any(p.name != LOCK_FILE for p in folder.iterdir())


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a file, or a non-empty folder unless `overwrite`; creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"Output path '{out}' is a file; pass a folder for the run.")
    if out.is_dir() and has_content(out) and not overwrite:
        raise RunDirError(
            f"Output folder '{out}' is not empty. Choose another --out, or pass --overwrite "
            "to replace the files transferkit writes there."
        )
    return out


def prepare_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """`check_output_dir`, then create the folder."""
    out = check_output_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    return out


def next_free_dir(base: str | os.PathLike) -> Path:
    """`base`, or `base-2`, `base-3`, ... whichever does not exist or is empty."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists() and (not candidate.is_dir() or has_content(candidate)):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(
            f"Run directory '{run_dir}' does not exist. Pass the --out folder of a "
            "`transferkit train` run."
        )
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunDirError(
            f"'{run_dir}' is not a transferkit run: it lacks {', '.join(missing)}. Pass the "
            "--out folder of a `transferkit train` run."
        )
    return run_dir


def read_config(run_dir: str | os.PathLike) -> dict:
    run_dir = check_run_dir(run_dir)
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunDirError(f"'{run_dir / CONFIG_FILE}' is not valid JSON ({error}); the run is damaged.") from error
    if config.get("format") != "transferkit-run":
        raise RunDirError(f"'{run_dir / CONFIG_FILE}' was not written by transferkit; not a transferkit run.")
    return config


def read_classes(run_dir: str | os.PathLike) -> list[str]:
    return (Path(run_dir) / CLASSES_FILE).read_text(encoding="utf-8").splitlines()


def history_fields(history: list[dict]) -> list[str]:
    fields = ["epoch", "stage"]
    for row in history:
        fields.extend(k for k in row if k not in fields)
    return fields


def parse_history(rows: list[dict]) -> list[dict]:
    return [{k: (int(v) if k in ("epoch", "stage") else float(v)) for k, v in row.items() if v != ""} for row in rows]


def _resolve_split_path(path: str, class_name: str, roots: Sequence[str]) -> str:
    """A split.csv path as written, or re-anchored on the run's data folder.

    Paths are stored as training saw them; a relative one only resolves from the
    folder training ran in, so it is also tried below the recorded data folder,
    from the class folder down.
    """
    if os.path.isabs(path) or os.path.exists(path):
        return path
    parts = Path(path).parts
    for root in roots:
        for start in (i for i, part in enumerate(parts) if part == class_name):
            candidate = Path(root, *parts[start:])
            if candidate.exists():
                return str(candidate)
    return path


def read_split(run_dir, split: str = VALIDATION, classes: Sequence[str] | None = None) -> LabelledFiles:
    """The files of one split recorded in a run's split.csv, in their recorded order."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    run_dir = check_run_dir(run_dir)
    path = run_dir / SPLIT_FILE
    if not path.is_file():
        raise RunDirError(
            f"'{run_dir}' has no {SPLIT_FILE}, so its {split} split cannot be reproduced. "
            "Pass a labelled DATA_DIR to evaluate on instead."
        )
    if classes is None:
        classes = read_classes(run_dir)
    rows = read_csv(path)
    if rows and not {"path", "class", "split"} <= set(rows[0]):
        raise RunDirError(f"'{path}' lacks the columns path, class, split; the run is damaged.")
    config = read_config(run_dir)
    roots = [r for r in (config.get("data", {}).get("val_dir"), config.get("data", {}).get("data_dir")) if r]
    paths, labels = [], []
    for row in rows:
        if row["split"] != split:
            continue
        if row["class"] not in classes:
            raise RunDirError(
                f"'{path}' names class {row['class']!r}, which is not among the run's classes "
                f"{list(classes)}; the run is damaged."
            )
        paths.append(_resolve_split_path(row["path"], row["class"], roots))
        labels.append(list(classes).index(row["class"]))
    if not paths:
        raise RunDirError(f"'{path}' lists no {split} files.")
    return LabelledFiles(tuple(paths), tuple(labels), tuple(classes))


def read_calibration(run_dir) -> dict | None:
    """calibration.json, or None for a run without one (it then predicts uncalibrated, as before)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunDirError(f"'{path}' cannot be read ({error}); delete it to predict uncalibrated.") from error


def write_ood(run_dir, ood: dict) -> None:
    """Scalars to ood.json, arrays to ood.npz (both atomically)."""
    import numpy as np

    arrays = {k: v for k, v in ood.items() if isinstance(v, np.ndarray)}
    write_json(Path(run_dir) / OOD_FILE, {k: v for k, v in ood.items() if k not in arrays})
    with atomic_path(Path(run_dir) / OOD_ARRAYS_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_ood(run_dir) -> dict | None:
    """The unknown detector of a run, or None for a run without one (predictions then say unknown=None)."""
    import numpy as np

    path, arrays = Path(run_dir) / OOD_FILE, Path(run_dir) / OOD_ARRAYS_FILE
    if not path.is_file() or not arrays.is_file():
        return None
    try:
        with np.load(arrays) as loaded:
            return {**json.loads(path.read_text(encoding="utf-8")), **{k: loaded[k] for k in loaded.files}}
    except (OSError, ValueError) as error:
        raise RunDirError(f"'{path}' or '{arrays}' cannot be read ({error}); delete both to predict without "
                          "unknown rejection.") from error
