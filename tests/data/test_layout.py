"""The folder layout and the one walker, on folders made here (no shared data)."""

from __future__ import annotations

import os

import pytest

from conftest import make_images
from transferkit import data
from transferkit.data.doctor import scan_dataset
from transferkit.errors import DataError


def test_walker_skips_litter_and_follows_links_once(tmp_path):
    root = make_images(tmp_path / "d", per_class=2)
    (root / "circle" / ".DS_Store").write_bytes(b"x")
    (root / "circle" / "notes.txt").write_text("x")
    (root / "circle" / "nested").mkdir()
    (root / "circle" / "nested" / "n.png").write_bytes((root / "circle" / "circle-000.png").read_bytes())
    os.symlink(root / "circle", root / "circle" / "nested" / "loop")
    events = []
    files = data.walk_files(root / "circle", lambda event, path, detail: events.append(event))
    assert [os.path.basename(f) for f in files] == ["circle-000.png", "circle-001.png", "n.png", "notes.txt"]
    assert data.find_images(root / "circle") == [f for f in files if f.endswith(".png")]
    assert sorted(events) == ["nested-folder", "symlink-loop"]


def test_class_folders_are_sorted_and_checked(tmp_path):
    root = make_images(tmp_path / "d", classes=("b", "a"), per_class=2)
    files = data.list_class_folders(root)
    assert files.classes == ("a", "b") and files.class_counts() == {"a": 2, "b": 2}
    with pytest.raises(DataError, match=r"missing \['c'\], unexpected \['b'\]"):
        data.list_class_folders(root, classes=("a", "c"))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        data.list_class_folders(root)


def test_pre_split_layout_is_recognised(tmp_path):
    make_images(tmp_path / "d" / "train", per_class=2)
    make_images(tmp_path / "d" / "val", per_class=1)
    make_images(tmp_path / "d" / "test", per_class=1)
    train, val, test = data.resolve_layout(tmp_path / "d")
    assert (train.name, val.name, test.name) == ("train", "val", "test")
    make_images(tmp_path / "e", per_class=1)
    assert data.resolve_layout(tmp_path / "e") == (tmp_path / "e", None, None)


def test_split_is_stable_stratified_and_keeps_groups_together(tmp_path):
    files = data.list_class_folders(make_images(tmp_path / "d", per_class=30))
    train, val, test = data.stratified_split(files, 0.2, seed=1, root=tmp_path / "d", test_split=0.1)
    assert len(train) + len(val) + len(test) == 60
    assert all(n >= 1 for n in val.class_counts().values()) and all(n >= 1 for n in test.class_counts().values())
    again = data.stratified_split(files, 0.2, seed=1, root=tmp_path / "d", test_split=0.1)
    assert again == (train, val, test)
    group = [files.paths[0], files.paths[1], files.paths[2]]
    grouped = data.stratified_split(files, 0.2, seed=1, root=tmp_path / "d", groups=[group])
    sides = {name for name, split in zip(data.SPLITS, grouped) for p in split.paths if p in group}
    assert len(sides) == 1
    with pytest.raises(DataError, match="leaves class 'circle'"):
        data.stratified_split(data.list_class_folders(make_images(tmp_path / "s", per_class=1)), 0.2, seed=1)


def test_load_image_crops_the_centre_square(tmp_path):
    from PIL import Image

    Image.new("RGB", (200, 100), (255, 0, 0)).save(tmp_path / "wide.png")
    Image.new("LA", (50, 50)).save(tmp_path / "grey-alpha.png")
    assert data.load_image(tmp_path / "wide.png", 64).shape == (64, 64, 3)
    assert data.load_image(tmp_path / "grey-alpha.png").shape == (50, 50, 3)


def test_scan_flags_broken_files_and_leaves_the_folder_unchanged(tmp_path):
    root = make_images(tmp_path / "d", per_class=3)
    (root / "circle" / "empty.jpg").write_bytes(b"")
    (root / "square" / "page.jpg").write_text("<html><body>not an image</body></html>")
    before = sorted(p.name for p in root.rglob("*"))
    result = scan_dataset(root)
    codes = {(os.path.basename(f.path), f.code) for f in result.findings}
    assert ("empty.jpg", "empty") in codes and ("page.jpg", "not-an-image") in codes
    assert result.exit_code == 2
    assert sorted(p.name for p in root.rglob("*")) == before
