"""Grad-CAM and feature maps on real images of every kind: sizes, grayscale, RGBA, broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.errors import ConfigError
from transferkit.analysis.explain import GradCam, default_layers, resolve_layers
from transferkit.modeling.classifier import backbone_of

runner = CliRunner()


@pytest.fixture(scope="module")
def images(alpaca_run, tmp_path_factory):
    """A JPEG as is, a grayscale one of an odd size, a transparent RGBA PNG, a tiny one, and a broken file."""
    classifier, _, _ = alpaca_run
    folder = tmp_path_factory.mktemp("explain_images")
    source = classifier.val_files_.paths[0]
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.save(folder / "photo.jpg")
        image.convert("L").resize((211, 137)).save(folder / "gray.png")
        rgba = image.resize((250, 90)).convert("RGBA")
        alpha = np.full((90, 250), 255, np.uint8)
        alpha[:, :60] = 0
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(folder / "transparent.png")
        image.resize((33, 20)).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def test_gradcam_maps_have_the_image_size_and_are_not_constant(alpaca_run, images, tmp_path, caplog):
    classifier, _, _ = alpaca_run
    explanations = classifier.explain(images, out=tmp_path)
    by_name = {e.path.rsplit("/", 1)[-1]: e for e in explanations}
    assert set(by_name) == {"photo.jpg", "gray.png", "transparent.png", "tiny.png"}
    assert "broken.jpg" in caplog.text, "the unreadable file is reported"
    predicted = {p.path: p.label for p in classifier.predict(images)}
    for name, explanation in by_name.items():
        with Image.open(images / name) as original:
            width, height = original.size
        assert explanation.heatmap.shape == (height, width), name
        assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() <= 1.0
        assert explanation.heatmap.std() > 0.01, f"{name}: a constant map explains nothing"
        assert explanation.class_name == explanation.predicted == predicted[explanation.path]
        with Image.open(explanation.overlay_path) as overlay:
            assert overlay.size == (width, height) and overlay.mode == "RGB"
    assert len(list(tmp_path.iterdir())) == 4


def test_gradcam_for_a_named_class_and_unknown_class(alpaca_run, images):
    classifier, _, _ = alpaca_run
    photo = [str(images / "photo.jpg")]
    for_alpaca = classifier.explain(photo, class_name="alpaca")[0]
    for_other = classifier.explain(photo, class_name="not alpaca")[0]
    assert for_alpaca.class_name == "alpaca" and for_other.class_name == "not alpaca"
    assert for_alpaca.probability + for_other.probability == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(for_alpaca.heatmap, for_other.heatmap), "opposite classes, opposite evidence"
    with pytest.raises(ConfigError, match=r"Unknown class 'llama'.*\['alpaca', 'not alpaca'\]"):
        classifier.explain(photo, class_name="llama")


def test_layer_by_layer_replay_matches_the_model(alpaca_run, images):
    classifier, _, _ = alpaca_run
    from transferkit.analysis.explain import load_batch

    _, batch, _, unreadable = load_batch(sorted(str(p) for p in images.iterdir()), classifier.image_size_)
    assert len(unreadable) == 1
    cam = GradCam(classifier.model_, classifier.classes_)
    _, _, probabilities = cam._forward(batch)
    np.testing.assert_allclose(np.asarray(probabilities), np.asarray(classifier.model_(batch, training=False)), atol=1e-5)
    # An earlier layer gives a finer map.
    base = backbone_of(classifier.model_)
    coarse, _, _ = cam.maps(batch)
    fine, _, _ = GradCam(classifier.model_, classifier.classes_, layer="block_13_expand_relu").maps(batch)
    assert coarse.shape[1:] == tuple(base.output.shape[1:3])
    assert fine.shape[1:] == tuple(base.get_layer("block_13_expand_relu").output.shape[1:3])
    assert fine.shape[1] > coarse.shape[1]


def test_activation_grids_show_one_tile_per_channel_at_the_layers_size(alpaca_run, images, tmp_path):
    classifier, _, _ = alpaca_run
    base = backbone_of(classifier.model_)
    grids = classifier.activations(images / "transparent.png", out=tmp_path)
    assert len(grids) == 3
    assert [g.index for g in grids] == sorted(g.index for g in grids)
    sizes = [g.shape[0] for g in grids]
    assert sizes[0] > sizes[1] > sizes[2], "early, middle, late: ever coarser maps"
    for grid in grids:
        height, width, channels = base.layers[grid.index].output.shape[1:]
        assert grid.shape == (height, width, channels)
        assert grid.maps.shape == (min(32, channels), height, width)
        assert len(set(grid.channels)) == len(grid.channels) and max(grid.channels) < channels
        with Image.open(grid.path) as png:
            assert png.size[0] > 600
    named = classifier.activations(images / "gray.png", layers=["Conv1_relu", "15"], max_channels=64)
    assert [(g.layer, g.index) for g in named] == [("Conv1_relu", 3), ("block_1_depthwise_relu", 15)]
    size = classifier.image_size_
    assert named[0].maps.shape == (32, size // 2, size // 2), "all 32 channels of a 32-channel layer"
    assert named[1].maps.shape == (64, size // 4, size // 4), "capped at 64 of 96"


def test_bad_layers_name_the_valid_ones(alpaca_run):
    base = backbone_of(alpaca_run[0].model_)
    with pytest.raises(ConfigError,
                       match=r"Unknown layer 'conv9' in .*--list-layers.*valid names: .*Conv1_relu.*out_relu"):
        resolve_layers(base, ["conv9"])
    with pytest.raises(ConfigError, match=r"Layer index 999 is outside .*0\.\.153"):
        resolve_layers(base, ["999"])
    assert [layer.name for _, layer in default_layers(base)] == [
        "block_1_depthwise_relu", "block_8_depthwise_relu", "block_15_depthwise_relu"]


def test_cli_explain_activations_and_predict_explain(alpaca_run, images, tmp_path):
    _, run_dir, _ = alpaca_run
    result = runner.invoke(app, ["explain", str(run_dir), str(images / "photo.jpg"), str(images / "tiny.png"),
                                 "--class", "alpaca", "--out", str(tmp_path / "cam"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["explained_class"] for r in rows] == ["alpaca", "alpaca"]
    assert all((tmp_path / "cam" / r["overlay"].rsplit("/", 1)[-1]).is_file() for r in rows)

    listing = runner.invoke(app, ["activations", str(run_dir), "--list-layers"], env={"COLUMNS": "200"})
    last = "x".join(map(str, backbone_of(alpaca_run[0].model_).output.shape[1:]))  # e.g. 5x5x1280 at 160 px
    assert listing.exit_code == 0 and "out_relu" in listing.output and last in listing.output

    grids = runner.invoke(app, ["activations", str(run_dir), str(images / "photo.jpg"), "--layers", "Conv1_relu,40",
                                "--out", str(tmp_path / "act")])
    assert grids.exit_code == 0, grids.output
    assert len(list((tmp_path / "act").glob("photo.activations.*.png"))) == 2

    predicted = runner.invoke(app, ["predict", str(run_dir), str(images), "--explain", str(tmp_path / "p"), "--json"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    assert len(rows) == 4 and all(r["gradcam"] and r["gradcam"].endswith(f".gradcam.{r['label'].replace(' ', '_')}.png")
                                  for r in rows)
    assert len(list((tmp_path / "p").iterdir())) == 4
