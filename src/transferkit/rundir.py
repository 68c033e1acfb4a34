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
import csv
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from transferkit.errors import RunDirError

MODEL_FILE = "model.keras"
CLASSES_FILE = "classes.txt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
SPLIT_FILE = "split.csv"
SKIPPED_FILE = "skipped.csv"
CHECKPOINT_DIR = "checkpoint"  # per-epoch weights and state while training; removed when it finishes
REQUIRED_FILES = (MODEL_FILE, CLASSES_FILE, CONFIG_FILE)
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (".weights.h5", ".keras"): savers check it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make shared reports private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path, rows: Sequence[dict], fieldnames: Sequence[str] | None = None) -> None:
    fieldnames = list(fieldnames or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("transferkit", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pillow", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a file, or a non-empty folder unless `overwrite`; creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"Output path '{out}' is a file; pass a folder for the run.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
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
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
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
