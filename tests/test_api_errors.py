"""Bad input fails before any training, with a message that names the problem and the fix."""

from __future__ import annotations

import shutil
import time

import pytest

from conftest import FAST, checksums
from transferkit import ImageClassifier
from transferkit.errors import ConfigError, DataError, RunDirError, WeightsError


def fit_fails(data_dir, error_type, match, **settings):
    """fit() raises quickly, and creates no run folder."""
    start = time.perf_counter()
    with pytest.raises(error_type, match=match):
        ImageClassifier(**{**FAST, **settings}).fit(data_dir, out=data_dir.parent / "never-written")
    assert not (data_dir.parent / "never-written").exists()
    assert time.perf_counter() - start < 30, "the check should run before any training"


def test_missing_data_dir(tmp_path):
    fit_fails(tmp_path / "nope", DataError, r"'.*nope' does not exist.*one sub-folder")


def test_data_dir_is_a_file(tmp_path):
    (tmp_path / "file.jpg").write_bytes(b"x")
    fit_fails(tmp_path / "file.jpg", DataError, "is a file, not a folder")


def test_fewer_than_two_classes(tiny_dir, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(tiny_dir / "alpaca", one / "alpaca")
    fit_fails(one, DataError, r"Found 1 class folder\(s\).*\(alpaca\).*at least 2")


def test_loose_images_are_pointed_out(tiny_dir, tmp_path):
    loose = tmp_path / "loose"
    shutil.copytree(tiny_dir / "alpaca", loose)
    fit_fails(loose, DataError, r"holds 12 image\(s\) directly; move them into one sub-folder per class")


def test_class_folder_without_images(tiny_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_dir, data_dir)
    (data_dir / "empty").mkdir()
    (data_dir / "empty" / "readme.txt").write_text("no images here")
    fit_fails(data_dir, DataError, r"Class folder '.*empty' holds no images")


@pytest.mark.parametrize("val_split", [0.0, 1.0, 1.5, -0.2])
def test_val_split_outside_unit_interval(tiny_dir, val_split):
    fit_fails(tiny_dir, ConfigError, r"val_split must be strictly between 0 and 1, got", val_split=val_split)


def test_val_split_leaving_a_class_without_validation(tiny_dir):
    fit_fails(tiny_dir, DataError, r"val_split=0.01 leaves class 'alpaca' \(12 image\(s\)\) with no validation image", val_split=0.01)


def test_val_dir_with_other_classes(tiny_dir, tmp_path):
    other = tmp_path / "val"
    shutil.copytree(tiny_dir / "alpaca", other / "alpaca")
    shutil.copytree(tiny_dir / "alpaca", other / "llama")
    with pytest.raises(DataError, match=r"missing \['not alpaca'\], unexpected \['llama'\]"):
        ImageClassifier(**FAST).fit(tiny_dir, val_dir=other)


def test_unknown_backbone_lists_known_ones(tiny_dir):
    fit_fails(tiny_dir, ConfigError, r"Unknown backbone 'vgg99'. Known backbones: mobilenet_v2, mobilenet,", backbone="vgg99")


@pytest.mark.parametrize("backbone, size", [("mobilenet_v2", 16), ("inception_v3", 64)])
def test_image_size_the_backbone_cannot_take(tiny_dir, backbone, size):
    fit_fails(tiny_dir, ConfigError, rf"Image size {size} is too small for {backbone}: .*at least", backbone=backbone, image_size=size)


def test_unknown_fine_tune_layer(tiny_dir):
    with pytest.raises(ConfigError, match=r"fine_tune_at layer 'no_such_layer' is not in"):
        ImageClassifier(**{**FAST, "epochs": 1, "fine_tune_at": "no_such_layer"}).fit(tiny_dir)


def test_missing_weights_file(tiny_dir):
    fit_fails(tiny_dir, WeightsError, r"Weights file '/no/such.h5' does not exist", weights="/no/such.h5")


def test_imagenet_weights_neither_local_nor_downloadable(tiny_dir, tmp_path, monkeypatch):
    # No local file for this backbone, and this machine's closed network stops the download.
    monkeypatch.setenv("TRANSFERKIT_WEIGHTS_DIR", str(tmp_path / "empty"))
    fit_fails(
        tiny_dir, WeightsError,
        r"ImageNet weights for mobilenet_v3_small were not found locally.*weights_mobilenet_v3_small.*--weights-dir",
        backbone="mobilenet_v3_small",
    )


def test_refuses_to_overwrite_a_non_empty_out(tiny_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match=r"is not empty.*--overwrite"):
        ImageClassifier(**FAST).fit(tiny_dir, out=out)
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("setting, value, match", [
    ("learning_rate", 0, "learning_rate must be a positive number"),
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("fine_tune_epochs", -1, "fine_tune_epochs must be a whole number >= 0"),
    ("augment", "wild", r"Unknown augmentation preset 'wild'; choose one of \['none', 'light', 'standard', 'strong'\]"),
    ("hidden_units", (0,), "hidden_units must be positive integers"),
])
def test_bad_settings(tiny_dir, setting, value, match):
    fit_fails(tiny_dir, ConfigError, match, **{setting: value})


def test_not_a_run_dir(tmp_path):
    with pytest.raises(RunDirError, match=r"does not exist. Pass the --out folder"):
        ImageClassifier.load(tmp_path / "missing")
    (tmp_path / "some_folder").mkdir()
    (tmp_path / "some_folder" / "config.json").write_text("{}")
    with pytest.raises(RunDirError, match=r"is not a transferkit run: it lacks model.keras, classes.txt"):
        ImageClassifier.load(tmp_path / "some_folder")


def test_errors_leave_the_data_untouched(tiny_dir):
    before = checksums(tiny_dir)
    with pytest.raises(ConfigError):
        ImageClassifier(backbone="nope").fit(tiny_dir)
    assert checksums(tiny_dir) == before
