"""`train --engine ray` with the cache: the backbone pass on Ray actors gives the local cache."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray")


def test_ray_extraction_gives_the_local_cache(synthetic_dir, tmp_path):
    from transferkit import ImageClassifier

    settings = dict(weights="none", image_size=32, epochs=1, fine_tune_epochs=1, patience=None, verbose=0,
                    write_report=False, cached_views=3)
    local = ImageClassifier(**settings, cache_dir=str(tmp_path / "local")).fit(synthetic_dir, out=tmp_path / "a")
    ray = ImageClassifier(**settings, cache_dir=str(tmp_path / "ray"), engine="ray", workers=2).fit(
        synthetic_dir, out=tmp_path / "b")
    keys = sorted(p.name for p in (tmp_path / "local").iterdir() if (p / "pooled.npy").exists())
    assert len(keys) == 2  # training (3 views) and validation (1)
    assert keys == sorted(p.name for p in (tmp_path / "ray").iterdir() if (p / "pooled.npy").exists())
    for key in keys:
        for name, tolerance in (("pooled", 1e-3), ("boundary", 1e-2)):  # boundary: float16
            a, b = (np.load(tmp_path / side / key / f"{name}.npy").astype(np.float32) for side in ("local", "ray"))
            assert a.shape == b.shape and np.abs(a).max() > 0
            np.testing.assert_allclose(b, a, rtol=tolerance, atol=tolerance * np.abs(a).max())
        assert (np.load(tmp_path / "ray" / key / "readable.npy") == np.load(tmp_path / "local" / key / "readable.npy")).all()
    views = max((np.load(tmp_path / "ray" / key / "pooled.npy") for key in keys), key=lambda a: a.shape[1])
    assert views.shape[1] == 3
    for one, other in ((0, 1), (1, 2)):  # plain vs augmented, and two augmented draws, differ
        assert np.abs(views[:, one] - views[:, other]).max() > 1e-2 * np.abs(views).max()
    assert ray.results_["val_loss"] == pytest.approx(local.results_["val_loss"], rel=1e-3)
    assert ray.backbone_images_processed_ == 0 < local.backbone_images_processed_


def test_ray_extraction_needs_a_cache_dir():
    from transferkit import ImageClassifier
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="--cache-dir"):
        ImageClassifier(engine="ray").settings().validate()
