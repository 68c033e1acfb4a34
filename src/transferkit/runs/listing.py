"""Run folders side by side: one row per run found under a folder, and a two-run comparison.

Read from each run's config.json only (no model is loaded), so listing a folder of
many runs is instant and works on runs from older transferkit versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transferkit.errors import ConfigError, RunDirError
from transferkit.runs import folder as rundir

COLUMNS = ("name", "created", "source", "fingerprint", "backbone", "image_size", "images", "val_accuracy",
           "test_accuracy", "seconds", "parent")
METRICS = ("train_images", "val_images", "test_images", "val_accuracy_stage1", "val_accuracy", "val_loss",
           "test_accuracy", "best_epoch", "epochs_run", "seconds")


def _row(run_dir: Path, config: dict) -> dict:
    data, results, params = config.get("data", {}), config.get("results", {}), config.get("params", {})
    parent = config.get("parent") or results.get("parent_run")
    images = sum(int(data.get(k) or 0) for k in ("train_images", "val_images", "test_images"))
    return {
        "name": run_dir.name, "path": str(run_dir), "created": config.get("created"),
        "source": data.get("source") or data.get("data_dir"), "fingerprint": (data.get("fingerprint") or "")[:12],
        "backbone": params.get("backbone"), "image_size": config.get("resolved", {}).get("image_size"),
        "images": images, "val_accuracy": results.get("val_accuracy"), "test_accuracy": results.get("test_accuracy"),
        "seconds": results.get("seconds"), "parent": parent.get("run_dir") if isinstance(parent, dict) else parent,
    }


def find_runs(root, max_depth: int = 3) -> list[dict]:
    """A row per run folder (a folder with config.json) under `root`, at most `max_depth` levels down."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"Runs folder '{root}' does not exist. Pass the folder your runs are in "
                          "(`transferkit train` writes to runs/ by default).")
    rows = []
    for current, dirs, files in os.walk(root):
        depth = len(Path(current).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < max_depth)
        if rundir.CONFIG_FILE in files:
            try:
                config = json.loads((Path(current) / rundir.CONFIG_FILE).read_text())
            except (OSError, ValueError):
                continue  # a half-written or foreign config.json: not a run to list
            if isinstance(config, dict) and "params" in config:
                rows.append(_row(Path(current), config))
                dirs[:] = []  # a run's own sub-folders (evaluation/, tensorboard/) hold no runs
    return rows


def sort_runs(rows: list[dict], key: str) -> list[dict]:
    descending = key.startswith("-")
    key = key.lstrip("-")
    if key not in COLUMNS:
        raise ConfigError(f"--sort {key!r} is not a column; use one of {', '.join(COLUMNS)} (prefix - to reverse).")
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    return sorted(present, key=lambda r: r[key], reverse=descending) + missing


def _flat(value, prefix="") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def compare_runs(a, b) -> dict:
    """Settings (params and resolved values) that differ, and the metrics of both runs."""
    configs = [rundir.read_config(path) for path in (a, b)]
    settings = [{**_flat(c.get("params", {})), **_flat(c.get("resolved", {}), "resolved.")} for c in configs]
    differ = {key: [settings[0].get(key), settings[1].get(key)]
              for key in sorted(set(settings[0]) | set(settings[1])) if settings[0].get(key) != settings[1].get(key)}
    data = [c.get("data", {}) for c in configs]
    for key in ("source", "fingerprint"):
        if data[0].get(key) != data[1].get(key):
            differ[f"data.{key}"] = [data[0].get(key), data[1].get(key)]
    metrics = {key: [c.get("results", {}).get(key) for c in configs] for key in METRICS}
    return {"runs": [str(a), str(b)], "settings": differ, "metrics": metrics}
