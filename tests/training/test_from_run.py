"""Training from a trained run (`fit(..., from_run=...)`, `train --from`): continue, add a class, refuse bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import RPS, SMALL, TINY_RUN, copy_spread, make_images, requires_shared
from transferkit import ImageClassifier
from transferkit.errors import ConfigError, DataError, RunDirError
from transferkit.runs.listing import find_runs

# -- the head carried over: old classes keep their probabilities ------------------------------------


def test_a_third_class_keeps_the_sigmoid_head_s_probabilities(small_run):
    from transferkit.settings import Settings
    from transferkit.training import update

    _, run_dir = small_run
    parent = update.load_parent(run_dir)
    settings = Settings(**{**SMALL, "image_size": None, "from_run": str(run_dir)})
    resolved, _ = update.resolve(settings)
    child = update.build_from(parent, resolved, ["circle", "extra", "square"])
    images = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    old = parent.trained.model.predict_on_batch(images).reshape(-1)  # p(square)
    new = np.asarray(child.predict_on_batch(images))
    assert new.shape == (6, 3)
    # Renormalised over the old classes, the softmax rows [-w/2, +w/2] give the sigmoid's probabilities.
    np.testing.assert_allclose(new[:, 2] / (new[:, 0] + new[:, 2]), old, atol=1e-5)
    same = update.build_from(parent, resolved, ["circle", "square"])  # same classes: the parent's model as it was
    np.testing.assert_allclose(np.asarray(same.predict_on_batch(images)).reshape(-1), old, atol=1e-6)


def test_a_cache_of_the_parent_s_backbone_is_not_one_of_the_fresh_backbone(small_run, synthetic_dir, tmp_path):
    _, run_dir = small_run
    cache = {**SMALL, "cache_dir": str(tmp_path / "cache")}
    ImageClassifier(**cache).fit(synthetic_dir)  # caches the (random) weights the parent started from
    child = ImageClassifier(**cache, from_run=run_dir).fit(synthetic_dir)
    assert child.backbone_images_processed_ > 0  # its fine-tuned backbone: computed, not reused
    again = ImageClassifier(**cache, from_run=run_dir).fit(synthetic_dir)
    assert again.backbone_images_processed_ == 0  # the same parent: reused


# -- bad input: a clear message before any training ----------------------------------------------------


def test_from_a_folder_that_is_not_a_run(synthetic_dir, tmp_path):
    with pytest.raises(RunDirError, match="--from .*is not a transferkit run"):
        ImageClassifier(**SMALL, from_run=str(synthetic_dir)).fit(synthetic_dir, out=tmp_path / "child")
    assert not (tmp_path / "child").exists()


@pytest.mark.parametrize("given, message", [
    ({"backbone": "mobilenet"}, r"backbone 'mobilenet' \(the parent's is 'mobilenet_v2'\)"),
    ({"image_size": 64}, r"image_size 64 \(the parent's is 32\)"),
])
def test_from_with_another_backbone_or_size(small_run, synthetic_dir, tmp_path, given, message):
    _, run_dir = small_run
    with pytest.raises(ConfigError, match=message) as error:
        ImageClassifier(**{**SMALL, **given}, from_run=run_dir).fit(synthetic_dir, out=tmp_path / "child")
    assert "parent's values are used when omitted" in str(error.value)


def test_from_with_a_class_missing(small_run, tmp_path):
    _, run_dir = small_run
    data = make_images(tmp_path / "data", classes=("circle", "zigzag"), per_class=6)
    with pytest.raises(DataError, match=r"class\(es\) \['square'\] that the new data lacks"):
        ImageClassifier(**{**SMALL, "image_size": None}, from_run=run_dir).fit(data, out=tmp_path / "child")
    assert not (tmp_path / "child").exists()


def test_from_a_run_into_itself(small_run, synthetic_dir):
    _, run_dir = small_run
    before = (run_dir / "model.keras").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="is the --from run itself"):
        ImageClassifier(**SMALL, from_run=run_dir).fit(synthetic_dir, out=run_dir, overwrite=True)
    assert (run_dir / "model.keras").stat().st_mtime_ns == before


# -- real images: continue with more images, add a class -----------------------------------------------

UPDATE = {**TINY_RUN, "image_size": 128, "epochs": None}  # head epochs: automatic, nearly free on the cache


@pytest.fixture(scope="module")
def rps_parent(rps_tiny, tmp_path_factory):
    """A two-class run (paper, rock) on 10 real images per class: (run_dir, data_dir)."""
    small = copy_spread(RPS, tmp_path_factory.mktemp("data") / "rps_small", per_class=10, stride=84)
    shutil.rmtree(small / "scissors")
    run_dir = tmp_path_factory.mktemp("runs") / "parent"
    ImageClassifier(**UPDATE).fit(small, out=run_dir)
    return run_dir


@requires_shared
def test_same_classes_with_more_images_continue(rps_parent, rps_tiny, tmp_path):
    data = tmp_path / "data"
    for name in ("paper", "rock"):
        shutil.copytree(rps_tiny / name, data / name)
    child = ImageClassifier(**{**TINY_RUN, "epochs": None}, from_run=rps_parent).fit(data, out=tmp_path / "child")
    assert child.results_["val_accuracy"] > 0.5
    config = json.loads((tmp_path / "child" / "config.json").read_text())
    assert config["parent"]["run_dir"] == str(rps_parent.resolve())
    assert len(config["parent"]["model_sha256"]) == 64
    assert config["params"]["image_size"] == 128 and config["params"]["from_run"] == str(rps_parent)
    rows = {row["name"]: row for row in find_runs(tmp_path)}
    assert rows["child"]["parent"] == str(rps_parent.resolve())


@requires_shared
def test_adding_a_class_grows_the_head(rps_parent, rps_tiny, tmp_path):
    child = ImageClassifier(**{**TINY_RUN, "epochs": None}, from_run=rps_parent).fit(rps_tiny, out=tmp_path / "child")
    assert child.model_.output_shape == (None, 3) and child.classes_ == ["paper", "rock", "scissors"]
    # The old classes, on images neither run trained on (another draw from the same hands).
    for name in ("paper", "rock"):
        unseen = sorted((RPS / name).iterdir())[13::70]  # 12 files, none at the fixtures' multiples of 28
        predictions = child.predict([str(p) for p in unseen])
        accuracy = np.mean([p.label == name for p in predictions])
        assert accuracy >= 0.6, (name, accuracy)  # chance: 1/3
    assert child.results_["val_accuracy"] > 0.5
