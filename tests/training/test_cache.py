"""Training on cached backbone activations: same model, less work, never stale."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import FAST
from transferkit import ImageClassifier
from transferkit.modeling.backbones import get_backbone
from transferkit.training.cache import cache_key
from transferkit.modeling.classifier import backbone_of, build_classifier, clean_cut, fine_tune_index, split_at


@pytest.mark.parametrize("backbone, size", [("mobilenet_v2", 96), ("mobilenet", 96), ("resnet50", 64),
                                            ("mobilenet_v3_small", 64), ("efficientnet_b0", 64)])
def test_split_backbone_computes_the_same_function(backbone, size):
    spec = get_backbone(backbone)
    weights = "imagenet" if backbone.startswith("mobilenet") and "v3" not in backbone else "none"
    model = build_classifier(spec, 2, size, weights=weights)
    base = backbone_of(model)
    cut = clean_cut(base, fine_tune_index(base, spec.fine_tune_at))
    lower, upper = split_at(base, cut)
    images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(upper(lower(images)), base(images), atol=1e-4)


def test_cached_training_leaves_its_weights_in_the_full_model(alpaca_run):
    classifier, _, _ = alpaca_run
    assert classifier.cache is True
    val = classifier.val_files_
    recomputed = np.mean(classifier.predict_proba(val.paths).argmax(axis=1) == np.asarray(val.labels))
    assert recomputed == pytest.approx(classifier.results_["val_accuracy"], abs=1e-6)


def test_cached_and_plain_recipes_reach_equivalent_accuracy(alpaca_dir):
    # Without augmentation both recipes see the same pixels, so any gap would be the
    # cache's fault. Short stages: the plain recipe pays a backbone pass per image per epoch.
    short = {**FAST, "augment": "none", "epochs": 8, "fine_tune_epochs": 0, "cached_views": 1}
    cached = ImageClassifier(**short).fit(alpaca_dir)
    plain = ImageClassifier(**{**short, "cache": False}).fit(alpaca_dir)
    accuracies = [run.results_["val_accuracy"] for run in (cached, plain)]
    assert min(accuracies) >= 0.8, accuracies  # majority class: 0.56
    assert abs(accuracies[0] - accuracies[1]) <= 0.05, accuracies  # 73 images: 1 image = 0.014


def test_cache_dir_hit_skips_backbone_work_and_a_changed_file_invalidates(tiny_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_dir, data_dir)
    settings = {**FAST, "image_size": 64, "epochs": 1, "fine_tune_epochs": 1, "cached_views": 2,
                "cache_dir": str(tmp_path / "cache")}
    first = ImageClassifier(**settings).fit(data_dir)
    assert first.backbone_images_processed_ == 2 * len(first.train_files_) + len(first.val_files_)
    assert first.resolved_settings_["cached_views"] == 2
    second = ImageClassifier(**settings).fit(data_dir)
    assert second.backbone_images_processed_ == 0
    np.testing.assert_allclose(
        second.predict_proba(second.val_files_.paths), first.predict_proba(first.val_files_.paths), atol=1e-5
    )
    # Change one training image's contents: its split's cache is recomputed.
    victim = first.train_files_.paths[0]
    with Image.open(victim) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim)
    third = ImageClassifier(**settings).fit(data_dir)
    assert third.backbone_images_processed_ == 2 * len(third.train_files_)
    # Any setting that changes the activations is part of the key.
    base_key = {"backbone": "mobilenet_v2", "image_size": 64, "augmentation": "standard", "views": 2}
    keys = {cache_key(third.train_files_, data_dir, {**base_key, name: value})
            for name, value in [("image_size", 64), ("image_size", 96), ("augmentation", "light"), ("views", 3)]}
    assert len(keys) == 4


def test_an_unwritable_cache_dir_falls_back_to_memory_with_a_warning(tiny_dir, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    settings = {**FAST, "image_size": 64, "epochs": 1, "fine_tune_epochs": 0, "cached_views": 1,
                "cache_dir": str(blocker / "cache")}
    classifier = ImageClassifier(**settings).fit(tiny_dir)
    assert classifier.results_["val_accuracy"] is not None
    assert "is not writable" in caplog.text and "keeping caches in memory" in caplog.text
