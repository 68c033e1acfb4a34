"""report.html: one self-contained file that embeds every figure; the dataset preview."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import checksums
from transferkit.cli import app
from transferkit.errors import ConfigError
from transferkit.analysis.report import REPORT_FILE, write_report

runner = CliRunner()

SECTIONS = ["config", "data", "samples", "augmentation", "curves", "metrics", "calibration", "confusion", "misclassified",
            "gradcam", "activations"]
FIGURE_SECTIONS = [s for s in SECTIONS if s not in ("config", "data", "metrics")]


class Page(HTMLParser):
    """Sections, images (per section) and any reference to outside resources."""

    def __init__(self):
        super().__init__()
        self.section, self.sections, self.images, self.external, self.text = None, [], {}, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs["id"]
            self.sections.append(self.section)
        if tag == "img":
            self.images.setdefault(self.section, []).append(attrs["src"])
        for key in ("src", "href"):
            value = attrs.get(key, "")
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def decode(src: str) -> Image.Image:
    header, payload = src.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


def test_report_rebuilt_from_a_reloaded_run_embeds_every_figure(alpaca_run, tmp_path):
    classifier, run_dir, _ = alpaca_run
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    (run_copy / REPORT_FILE).unlink(missing_ok=True)
    before = checksums(run_copy)

    result = runner.invoke(app, ["report", str(run_copy)])
    assert result.exit_code == 0, result.output

    page = parse(run_copy / REPORT_FILE)
    assert page.sections == SECTIONS
    assert not page.external, f"the report must open offline: {page.external}"
    for section in FIGURE_SECTIONS:
        assert page.images.get(section), f"section {section} has no figure"
    assert "Not available" not in "".join(page.text)
    for sources in page.images.values():
        for src in sources:
            assert decode(src).size[0] > 100
    assert len(page.images["activations"]) == 4, "the input and three layers"
    text = " ".join(" ".join(page.text).split())
    assert "alpaca" in text and "not alpaca" in text and "ROC-AUC" in text and "macro average" in text
    n = len(classifier.val_files_)
    misclassified = round(n * (1 - classifier.results_["val_accuracy"]))  # training's own count, same weights
    assert f"{misclassified} of {n} validation images misclassified" in text
    # the fixture's ~70 validation images choose among its 4 epochs: the curves say whether they can
    close = classifier.results_["epochs_within_noise"]
    assert (f"{close} epochs scored within two standard errors" in text) == bool(close)
    after = checksums(run_copy)
    assert set(after) - set(before) == {REPORT_FILE}
    assert {k: after[k] for k in before} == before, "only report.html is written"
    assert not list(run_copy.glob(".*.tmp*"))


def test_report_survives_a_moved_data_folder(alpaca_run, alpaca_dir, tmp_path):
    """Validation images gone: the sections that need them say why, the rest is still written."""
    from transferkit import ImageClassifier

    _, run_dir, _ = alpaca_run
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    split = (run_copy / "split.csv").read_text().replace(str(alpaca_dir), "/nowhere")
    (run_copy / "split.csv").write_text(split)
    path = ImageClassifier.load(run_copy).report(run_copy)
    page = parse(path)
    text = " ".join(" ".join(page.text).split())
    assert page.sections == SECTIONS
    assert text.count("Not available: None of the") == 6  # augmentation, metrics, matrix, gallery, Grad-CAM, activations
    assert page.images.get("samples") and page.images.get("curves")
    with pytest.raises(ConfigError, match="gradcam_images must be a positive integer, got 0"):
        write_report(alpaca_run[0].trained_, run_copy, gradcam_images=0)


def test_preview_shows_samples_and_augmentation_draws(tiny_dir, tmp_path):
    before = checksums(tiny_dir)
    out = tmp_path / "preview"
    result = runner.invoke(app, ["preview", str(tiny_dir), "--out", str(out), "--image-size", "96", "--draws", "4",
                                 "--augment", "strong"])
    assert result.exit_code == 0, result.output
    assert "2 classes, 24 images (alpaca 12, not alpaca 12)" in " ".join(result.output.split())
    with Image.open(out / "samples.png") as samples, Image.open(out / "augmentation.png") as augmented:
        assert samples.size[0] > 600 and augmented.size[0] > 500
    assert checksums(tiny_dir) == before

    none = runner.invoke(app, ["preview", str(tiny_dir), "--out", str(tmp_path / "plain"), "--augment", "none"])
    assert none.exit_code == 0 and (tmp_path / "plain" / "samples.png").is_file()
    assert not (tmp_path / "plain" / "augmentation.png").exists()

    inside = runner.invoke(app, ["preview", str(tiny_dir), "--out", str(tiny_dir / "p")])
    assert inside.exit_code == 2 and "inside the data folder" in " ".join(inside.output.split())
    assert checksums(tiny_dir) == before


def test_augmentation_draws_differ(alpaca_run):
    classifier, _, _ = alpaca_run
    augmenter = classifier.model_.get_layer("augmentation")
    from transferkit.data import load_image

    image = load_image(classifier.val_files_.paths[0], classifier.image_size_).astype("float32")[None]
    draws = [np.asarray(augmenter(image, training=True)) for _ in range(3)]
    assert all(d.shape == image.shape for d in draws)
    assert not np.allclose(draws[0], image) and not np.allclose(draws[0], draws[1])
    np.testing.assert_array_equal(np.asarray(augmenter(image, training=False)), image)
