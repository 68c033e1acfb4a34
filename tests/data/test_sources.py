"""Data sources on real files: an archive served from loopback, a real TFDS dataset in a temporary data dir."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import NO_SHARED, RPS, serve_folder
from transferkit.cli import app
from transferkit.data.sources import resolve_source, source_name
from transferkit.errors import DataError, DownloadError

TINY_TRAIN = ["--fine-tune-epochs", "1", "--epochs", "2", "--patience", "0", "--no-report", "--json"]
runner = CliRunner()


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    """A zip of the tiny alpaca set (under one top folder, as archives usually are), served on 127.0.0.1."""
    root = tmp_path_factory.mktemp("www")
    archive = root / "alpaca-small.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(tiny_dir.rglob("*")):
            if path.is_file():
                z.write(path, Path("alpaca-small") / path.relative_to(tiny_dir))
    with serve_folder(root) as (base, requests):
        yield {"url": f"{base}alpaca-small.zip", "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
               "requests": requests, "root": root}


def test_url_with_right_checksum_is_downloaded_once_and_extracted(served, tmp_path):
    spec = f"{served['url']}#sha256={served['sha256']}"
    before = len(served["requests"])
    folder = resolve_source(spec, cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["alpaca", "not alpaca"]  # the lone top folder descended
    assert len(list((folder / "alpaca").glob("*.jpg"))) == 12
    assert not (tmp_path / "downloads").exists() or not any((tmp_path / "downloads").rglob("*.zip"))
    assert resolve_source(spec, cache_dir=tmp_path) == folder
    assert len(served["requests"]) == before + 1  # the second call reused the extracted folder
    assert source_name(spec) == "alpaca-small"


def test_url_with_wrong_checksum_fails_and_leaves_nothing(served, tmp_path):
    with pytest.raises(DataError, match="does not match sha256=0{64}"):
        resolve_source(f"{served['url']}#sha256={'0' * 64}", cache_dir=tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "urls").exists()


def test_bad_specs_fail_with_the_fix(served, tmp_path):
    with pytest.raises(DataError, match="not a checksum"):
        resolve_source(f"{served['url']}#sha256=abc", cache_dir=tmp_path)
    with pytest.raises(DataError, match="does not end in .zip"):
        resolve_source("http://127.0.0.1:9/data.csv", cache_dir=tmp_path)
    with pytest.raises(DataError, match="Could not download 'http://127.0.0.1:9/x.zip'.*local folder"):
        resolve_source("http://127.0.0.1:9/x.zip", cache_dir=tmp_path)  # port 9 (discard): refused
    assert resolve_source(str(tmp_path)) == tmp_path


def test_train_on_a_url(served, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DATA_CACHE", str(tmp_path / "cache"))
    spec = f"{served['url']}#sha256={served['sha256']}"
    result = runner.invoke(app, ["train", spec, "--out", str(tmp_path / "run"), *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["source"] == spec
    assert config["data"]["train_images"] + config["data"]["val_images"] + config["data"]["test_images"] == 24
    assert Path(config["data"]["data_dir"]).is_relative_to(tmp_path / "cache" / "urls")


# -- TensorFlow Datasets -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A real TFDS dataset (train: 15, test: 5 rps images per class) prepared in a temporary TFDS data dir."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    classes = ["paper", "rock", "scissors"]
    rows = {"train": [], "test": []}
    for label, name in enumerate(classes):
        if not RPS.is_dir():
            pytest.skip(NO_SHARED)
        files = sorted((RPS / name).glob("*.png"))[:20]
        for i, path in enumerate(files):
            image = np.asarray(Image.open(path).convert("RGB").resize((96, 96)))
            rows["train" if i < 15 else "test"].append((image, label))

    def dataset(split):
        images = np.stack([r[0] for r in rows[split]])
        labels = np.array([r[1] for r in rows[split]], dtype=np.int64)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    data_dir = tmp_path_factory.mktemp("tfds")
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                           "label": tfds.features.ClassLabel(names=classes)})
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_rps", version="1.0.0", features=features, data_dir=str(data_dir), config=None,
        split_datasets={"train": dataset("train"), "test": dataset("test")}, description="20 rps images per class")
    return data_dir


def test_tfds_is_materialised_once_as_presplit_class_folders(tfds_dir, tmp_path):
    folder = resolve_source("tfds:tiny_rps", tfds_data_dir=tfds_dir, cache_dir=tmp_path)
    assert folder == tmp_path / "tfds" / "tiny_rps" / "1.0.0"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["test", "train"]
    assert {p.name: len(list(p.glob("*.png"))) for p in (folder / "train").iterdir() if p.is_dir()} == {
        "paper": 15, "rock": 15, "scissors": 15}
    assert sum(1 for _ in (folder / "test").rglob("*.png")) == 15
    stamp = (folder / "train" / "rock").stat().st_mtime_ns
    assert resolve_source("tfds:tiny_rps", tfds_data_dir=tfds_dir, cache_dir=tmp_path) == folder
    assert (folder / "train" / "rock").stat().st_mtime_ns == stamp  # reused, not rewritten
    only = resolve_source("tfds:tiny_rps:test", tfds_data_dir=tfds_dir, cache_dir=tmp_path)
    assert only == folder / "test"


def test_train_on_tfds(tfds_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DATA_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["train", "tfds:tiny_rps", "--tfds-data-dir", str(tfds_dir),
                                 "--out", str(tmp_path / "run"), *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    results = json.loads(result.output.strip().splitlines()[-1])
    assert results["classes"] == ["paper", "rock", "scissors"]
    assert results["test_images"] == 15  # the dataset's own test split
    assert results["train_images"] + results["val_images"] == 45  # validation drawn from train
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["source"] == "tfds:tiny_rps"
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "tfds:tiny_rps:test",
                                    "--tfds-data-dir", str(tfds_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["images"] == 15


def test_tfds_offline_failures_name_dataset_dir_and_fix(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as known:
        resolve_source("tfds:rock_paper_scissors", tfds_data_dir=empty, cache_dir=tmp_path)
    message = str(known.value)
    assert "rock_paper_scissors" in message and str(empty) in message and "tfds build" in message
    with pytest.raises(DataError, match="no_such_set.*was not found"):
        resolve_source("tfds:no_such_set", tfds_data_dir=empty, cache_dir=tmp_path)
    result = runner.invoke(app, ["doctor", "tfds:rock_paper_scissors", "--tfds-data-dir", str(empty)])
    assert result.exit_code == 2 and "not prepared" in result.output
    assert not (tmp_path / "tfds").exists()  # failed before any work


def test_a_local_copy_stands_in_for_the_download(served, tmp_path, monkeypatch):
    """Offline (port 9 refuses): the archive given, or the one a Keras tutorial left in $KERAS_HOME/datasets."""
    archive = tmp_path / "copy" / "alpaca-small.zip"
    archive.parent.mkdir()
    archive.write_bytes((served["root"] / "alpaca-small.zip").read_bytes())
    spec = f"http://127.0.0.1:9/files/alpaca-small.zip#sha256={served['sha256']}"
    folder = resolve_source(spec, cache_dir=tmp_path / "a", archive=archive)
    assert sorted(p.name for p in folder.iterdir()) == ["alpaca", "not alpaca"]
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    (tmp_path / "keras" / "datasets" / "alpaca-small.zip").write_bytes(archive.read_bytes())
    assert len(list(resolve_source(spec, cache_dir=tmp_path / "b").rglob("*.jpg"))) == 24
    wrong = f"http://127.0.0.1:9/files/alpaca-small.zip#sha256={'1' * 64}"
    with pytest.raises(DownloadError, match="Could not download"):  # a cached file that does not match is not used
        resolve_source(wrong, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"alpaca-small.zip' has sha256=[0-9a-f]{64}, but .* should have sha256=1{64}"):
        resolve_source(wrong, cache_dir=tmp_path / "c", archive=archive)
    assert not (tmp_path / "c" / "urls").exists() or not any((tmp_path / "c" / "urls").iterdir())
    with pytest.raises(DataError, match="stands in for a URL source only"):
        resolve_source(str(tmp_path), archive=archive)


def test_datasets_get_from_tfds(tfds_dir, tmp_path, monkeypatch):
    """`datasets get --source tfds`: the prepared TFDS set as editable pre-split class folders."""
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps([{"name": "tiny", "classes": ["paper", "rock", "scissors"],
                                         "images": {"train": 45, "test": 15}, "archives": [], "tfds": "tiny_rps"}]))
    monkeypatch.setenv("TRANSFERKIT_DATASETS_CATALOG", str(catalog_file))
    dest = tmp_path / "sets" / "tiny"
    result = runner.invoke(app, ["datasets", "get", "tiny", str(dest), "--tfds-data-dir", str(tfds_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"]["test"] == {"paper": 5, "rock": 5, "scissors": 5}
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"] and not list(dest.rglob(".transferkit*"))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny"]
    assert sum(1 for _ in (dest / "train").rglob("*.png")) == 45
