"""--group-by: files of one series (or one regex key) never straddle the split."""

from __future__ import annotations

import pytest

from transferkit.data import LabelledFiles
from transferkit.data.split import name_groups, stratified_split
from transferkit.errors import DataError


def rps_like(hands: int = 7, poses: int = 20) -> LabelledFiles:
    classes = ("paper", "rock", "scissors")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for hand in range(1, hands + 1):
            for pose in range(poses):
                paths.append(f"/data/{name}/{name}{hand:02d}-{pose:03d}.png")
                labels.append(label)
    return LabelledFiles(tuple(paths), tuple(labels), classes)


def series(path: str) -> str:
    return path.rsplit("/", 1)[1].split("-")[0]


def test_auto_keeps_each_series_on_one_side():
    files = rps_like()
    groups = name_groups(files.paths, files.labels, "auto")
    assert len(groups) == 21 and all(len(g) == 20 for g in groups)
    train, val, _ = stratified_split(files, 0.2, seed=3, groups=groups)
    assert {series(p) for p in train.paths}.isdisjoint({series(p) for p in val.paths})
    assert set(val.labels) == {0, 1, 2}  # every class still has validation images, whole series of them
    plain_train, plain_val, _ = stratified_split(files, 0.2, seed=3)
    assert not {series(p) for p in plain_train.paths}.isdisjoint({series(p) for p in plain_val.paths})


def test_a_regex_key_can_group_across_classes():
    files = rps_like()
    groups = name_groups(files.paths, files.labels, r"^[a-z]+(\d+)-")  # the hand model, whatever the gesture
    assert len(groups) == 7 and all(len(g) == 60 for g in groups)


def test_camera_style_names_are_not_a_series():
    paths = tuple(f"/data/{c}/IMG_{i:04d}.jpg" for c in ("cat", "dog") for i in range(30))
    labels = tuple([0] * 30 + [1] * 30)
    assert name_groups(paths, labels, "auto") == []


def test_a_bad_pattern_says_what_is_allowed():
    with pytest.raises(DataError, match=r"group_by must be 'auto', 'none' or a regular expression, got '\(unclosed'"):
        name_groups(["/a/x1.png"], [0], "(unclosed")

