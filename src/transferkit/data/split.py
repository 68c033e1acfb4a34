"""Reproducible, stratified, duplicate-aware splits of a labelled file list."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from typing import Sequence

import numpy as np

from transferkit.data.files import TEST, TRAIN, VALIDATION, LabelledFiles
from transferkit.errors import DataError


def split_key(path: str, seed: int) -> float:
    """A uniform number in [0, 1) that depends only on the file's identity and the seed."""
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# A file name's series: everything before a trailing counter ("rock01-004.png" -> "rock01").
_SERIES = re.compile(r"^(.*?\D)[-_. ]?\d+$")


def name_key(path: str, group_by: str) -> str | None:
    """The group key `group_by` reads in a file's name, or None: for "auto" the series (everything
    before a trailing counter), for a regular expression its first group (or the whole match)."""
    name = os.path.basename(path)
    if group_by == "auto":
        match = _SERIES.match(os.path.splitext(name)[0])
        return match.group(1).rstrip("-_. ") if match else None
    pattern = _pattern(group_by)
    match = pattern.search(name)
    return (match.group(1) if pattern.groups else match.group(0)) if match else None


@functools.lru_cache(maxsize=8)
def _pattern(group_by: str) -> re.Pattern:
    try:
        return re.compile(group_by)
    except re.error as error:
        raise DataError(f"group_by must be 'auto', 'none' or a regular expression, got {group_by!r} "
                        f"({error}).") from None


def name_groups(paths: Sequence[str], labels: Sequence, group_by: str) -> list[list[str]]:
    """Files that must land on the same side of every split, from their names (`name_key`).

    `group_by` is a regular expression searched in each file name (e.g. r"^[a-z]+(\\d+)-" puts hand 01
    of every class together), or "auto": series of one class, kept only where the class has at least
    three series and none holds half of it (so "IMG_0001.jpg"-style camera names do not swallow a class).
    """
    if group_by == "auto":
        per_class: dict = {}
        for path, label in zip(paths, labels):
            per_class.setdefault(label, {}).setdefault(name_key(path, group_by), []).append(path)
        groups = []
        for series in per_class.values():
            named = {k: v for k, v in series.items() if k is not None}
            total = sum(len(v) for v in series.values())
            if len(named) >= 3 and max(len(v) for v in named.values()) < total / 2:
                groups += [members for members in named.values() if len(members) > 1]
        return groups
    _pattern(group_by)  # a bad pattern is refused even where there are no files
    by_key: dict = {}
    for path in paths:
        key = name_key(path, group_by)
        if key is not None:
            by_key.setdefault(key, []).append(path)
    return [members for members in by_key.values() if len(members) > 1]


def _check_fraction(name: str, value, allow_zero: bool = False) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low_ok and value < 1.0):
        raise DataError(
            f"{name} must be {'in [0, 1)' if allow_zero else 'strictly between 0 and 1'}, got {value!r}. "
            "Use e.g. 0.2 to hold out 20 % of each class, or pass a separate folder."
        )


def stratified_split(
    files: LabelledFiles, val_split: float, seed: int, root: str | os.PathLike | None = None,
    groups: Sequence[Sequence[str]] = (), test_split: float = 0.0,
) -> tuple[LabelledFiles, LabelledFiles, LabelledFiles]:
    """(train, validation, test): about `val_split` and `test_split` of each class held out.

    A file's `split_key` (a hash of the seed and its path relative to `root`) decides:
    below `val_split` it is validation, at or above 1 - `test_split` it is test. So the
    split is reproducible, adding images never moves existing ones between splits, and
    changing one fraction never moves files of the other. Files in one of `groups`
    (e.g. duplicates) all follow the group's first path, so a duplicate never leaks
    across splits. Each class keeps at least one image in every split.
    """
    _check_fraction("val_split", val_split)
    _check_fraction("test_split", test_split, allow_zero=True)
    if val_split + test_split >= 1.0:
        raise DataError(f"val_split + test_split must leave images for training, got {val_split} + {test_split}.")
    keys = np.array([
        split_key(os.path.relpath(p, root) if root is not None else p, seed) for p in files.paths
    ])
    position = {path: i for i, path in enumerate(files.paths)}
    for group in groups:  # the first path's key: a member's own key, so still uniform
        members = sorted(position[p] for p in group if p in position)
        if members:
            keys[members] = keys[members[0]]
    split = np.where(keys < val_split, VALIDATION, np.where(keys >= 1.0 - test_split, TEST, TRAIN))
    labels = np.asarray(files.labels)
    wanted = [(VALIDATION, val_split)] + ([(TEST, test_split)] if test_split else [])
    for index, name in enumerate(files.classes):
        members = np.flatnonzero(labels == index)
        ranked = members[np.argsort(keys[members], kind="stable")]
        for which, fraction in wanted:
            if len(members) * fraction < 0.5 or len(members) < 1 + len(wanted):
                raise DataError(
                    f"{'val' if which == VALIDATION else 'test'}_split={fraction} leaves class '{name}' "
                    f"({len(members)} image(s)) with no {which} image. Add images to that class, use a "
                    "larger fraction, or pass a separate folder."
                )
            if not (split[members] == which).any():  # the nearest training file (and its group) moves over
                candidates = [i for i in (ranked if which == VALIDATION else ranked[::-1]) if split[i] == TRAIN]
                split[members[keys[members] == keys[candidates[0]]]] = which
        if not (split[members] == TRAIN).any():
            split[members[keys[members] == keys[ranked[len(ranked) // 2]]]] = TRAIN
    return tuple(files.subset(np.flatnonzero(split == which)) for which in (TRAIN, VALIDATION, TEST))
