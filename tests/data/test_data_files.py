"""Folder listing, splits and decoding (no TensorFlow needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ALPACA, NO_SHARED
from transferkit import data
from transferkit.errors import DataError


def fake_files(per_class: int, classes=("a", "b", "c"), offset: int = 0) -> data.LabelledFiles:
    paths = [f"/d/{c}/{i:05d}.jpg" for c in classes for i in range(offset, offset + per_class)]
    labels = [k for k in range(len(classes)) for _ in range(per_class)]
    return data.LabelledFiles(tuple(paths), tuple(labels), tuple(classes))


def split_of(train, val, test=None) -> dict[str, str]:
    test_paths = test.paths if test is not None else ()
    return {**{p: "train" for p in train.paths}, **{p: "validation" for p in val.paths},
            **{p: "test" for p in test_paths}}


def test_split_is_stratified_reproducible_and_seeded():
    files = fake_files(500)
    train, val, test = data.stratified_split(files, 0.2, seed=42, root="/d")
    assert len(test) == 0
    assert set(train.paths) | set(val.paths) == set(files.paths) and not set(train.paths) & set(val.paths)
    for count in val.class_counts().values():
        assert 75 <= count <= 125  # about 20 % of 500 per class
    assert split_of(train, val) == split_of(*data.stratified_split(files, 0.2, seed=42, root="/d"))
    assert split_of(train, val) != split_of(*data.stratified_split(files, 0.2, seed=7, root="/d"))


def test_adding_files_never_moves_existing_ones():
    before = split_of(*data.stratified_split(fake_files(100), 0.2, seed=42, root="/d"))
    grown = fake_files(150)
    after = split_of(*data.stratified_split(grown, 0.2, seed=42, root="/d"))
    assert {p: after[p] for p in before} == before


def test_duplicate_groups_stay_in_one_split():
    files = fake_files(100)
    groups = [files.paths[i : i + 4] for i in range(0, 280, 4)]
    where = split_of(*data.stratified_split(files, 0.3, seed=1, root="/d", groups=groups, test_split=0.2))
    assert all(len({where[p] for p in group}) == 1 for group in groups)
    assert {where[p] for g in groups for p in g} == {"train", "validation", "test"}


def test_test_split_is_stratified_and_leaves_validation_alone():
    files = fake_files(500)
    train, val, test = data.stratified_split(files, 0.2, seed=42, root="/d", test_split=0.1)
    assert all(30 <= n <= 75 for n in test.class_counts().values())
    assert not set(test.paths) & set(val.paths) and len(train) + len(val) + len(test) == len(files)
    _, val_without_test, _ = data.stratified_split(files, 0.2, seed=42, root="/d")
    assert val.paths == val_without_test.paths
    with pytest.raises(DataError, match="must leave images for training"):
        data.stratified_split(files, 0.5, seed=42, root="/d", test_split=0.5)


def test_every_class_keeps_a_validation_image():
    train, val, _ = data.stratified_split(fake_files(3), 0.2, seed=0, root="/d")  # 0.6 expected per class
    assert all(n >= 1 for n in val.class_counts().values())
    assert all(n >= 1 for n in train.class_counts().values())
    splits = data.stratified_split(fake_files(4), 0.2, seed=0, root="/d", test_split=0.2)
    assert all(n >= 1 for part in splits for n in part.class_counts().values())
    with pytest.raises(DataError, match=r"leaves class 'a' \(2 image\(s\)\) with no validation image"):
        data.stratified_split(fake_files(2), 0.2, seed=0, root="/d")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    if not ALPACA.is_dir():
        pytest.skip(NO_SHARED)
    with Image.open(sorted((ALPACA / "alpaca").iterdir())[0]) as image:
        return image.convert("RGB")


def test_every_supported_kind_of_file_decodes_to_rgb(photo, tmp_path):
    variants = {
        "gray.jpg": photo.convert("L"),
        "palette.png": photo.convert("P"),
        "cmyk.jpg": photo.convert("CMYK"),
        "plain.bmp": photo,
        "plain.webp": photo,
        "plain.tiff": photo,
        "sixteen.png": Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    for name in [*variants, "animated.gif"]:
        pixels = data.load_image(tmp_path / name, 64)
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8, name
        assert pixels.std() > 10, f"{name} decoded to a flat image"
    # 16-bit values are scaled, not clipped to white
    assert data.load_image(tmp_path / "sixteen.png").mean() == pytest.approx(np.asarray(photo.convert("L")).mean(), abs=2)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (10, 10, 30, 30))  # opaque blue square
    rgba.save(tmp_path / "rgba.png")
    pixels = data.load_image(tmp_path / "rgba.png")
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[20, 20]) == (0, 0, 255)


def test_exif_orientation_is_applied(photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    width, height = photo.size
    assert data.load_image(tmp_path / "rotated.jpg").shape[:2] == (width, height)


def test_decompression_bombs_are_refused(photo, tmp_path):
    photo.save(tmp_path / "big.png")
    with pytest.raises(DataError, match="above the limit"):
        data.load_image(tmp_path / "big.png", max_pixels=1000)


def test_listing_skips_litter_and_follows_symlink_loops_once(photo, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "nested").mkdir(parents=True)
        photo.save(tmp_path / name / "one.jpg")
        photo.save(tmp_path / name / "nested" / "two.png")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / "__MACOSX").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "a" / "nested" / "loop")
    files = data.list_class_folders(tmp_path)
    assert files.classes == ("a", "b")
    assert files.class_counts() == {"a": 2, "b": 2}


def test_pre_split_layouts_are_recognised(tmp_path):
    for split in ("train", "validation", "test"):
        (tmp_path / "split" / split / "cat").mkdir(parents=True)
    (tmp_path / "plain" / "train").mkdir(parents=True)  # a class that happens to be called train
    (tmp_path / "plain" / "dog").mkdir()
    root = tmp_path / "split"
    assert data.resolve_layout(root) == (root / "train", root / "validation", root / "test")
    assert data.resolve_layout(root, val_dir="elsewhere") == (root / "train", Path("elsewhere"), root / "test")
    assert data.resolve_layout(tmp_path / "plain") == (tmp_path / "plain", None, None)
