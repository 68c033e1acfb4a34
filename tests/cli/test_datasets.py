"""`transferkit datasets` and URL sources end to end, from a loopback server: no internet needed.

The server holds a .tar.gz of class folders (under one top folder) and a .zip of train/ + validation/
built from the tiny alpaca set; an extra catalog file ($TRANSFERKIT_DATASETS_CATALOG) describes them
with their real checksums, and $TRANSFERKIT_DATASETS_MIRROR points the published URLs (port 9 of
127.0.0.1, which refuses: "offline") at the server.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import checksums, serve_folder
from transferkit.cli import app
from transferkit.data.catalog import CATALOG_ENV, MIRROR_ENV

OFFLINE = "http://127.0.0.1:9/published/"
SMALL = ["--weights", "none", "--image-size", "32", "--epochs", "2", "--fine-tune-epochs", "1", "--patience", "0",
         "--cached-views", "2", "--no-report", "--json"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    with tarfile.open(root / "alpaca-small.tar.gz", "w:gz") as t:
        t.add(tiny_dir, arcname="alpaca-small")
    with zipfile.ZipFile(root / "alpaca-split.zip", "w") as z:
        for path in sorted(tiny_dir.rglob("*.jpg")):
            split = "validation" if sorted(path.parent.iterdir()).index(path) % 3 == 0 else "train"
            z.write(path, Path(split) / path.relative_to(tiny_dir))
    with zipfile.ZipFile(root / "alpaca-test.zip", "w") as z:
        for path in sorted(tiny_dir.rglob("*.jpg"))[::4]:
            z.write(path, path.relative_to(tiny_dir))

    def archive(name, split=None, sha=None):
        return {"url": OFFLINE + name, "size": (root / name).stat().st_size, "sha256": sha or sha256(root / name),
                "split": split}

    entries = [
        {"name": "alpaca_tgz", "classes": ["alpaca", "not alpaca"], "images": {"train": 24},
         "archives": [archive("alpaca-small.tar.gz")]},
        {"name": "alpaca_split", "classes": ["alpaca", "not alpaca"], "images": {"train": 16, "validation": 8},
         "archives": [archive("alpaca-split.zip")]},
        {"name": "alpaca_two", "classes": ["alpaca", "not alpaca"], "images": {"train": 24, "test": 6},
         "archives": [archive("alpaca-small.tar.gz", "train"), archive("alpaca-test.zip", "test")]},
        {"name": "alpaca_bad", "classes": ["alpaca", "not alpaca"], "images": {"train": 24},
         "archives": [archive("alpaca-small.tar.gz", sha="0" * 64)]},
    ]
    catalog_file = root.parent / f"{root.name}-catalog.json"
    catalog_file.write_text(json.dumps(entries))
    with serve_folder(root) as (base, requests):
        yield {"base": base, "root": root, "catalog": catalog_file, "requests": requests, "tiny": tiny_dir}


@pytest.fixture
def mirrored(server, monkeypatch, tmp_path):
    monkeypatch.setenv(CATALOG_ENV, str(server["catalog"]))
    monkeypatch.setenv(MIRROR_ENV, server["base"])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # an empty Keras cache
    monkeypatch.setenv("TRANSFERKIT_DATA_CACHE", str(tmp_path / "cache"))
    return server


def left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_datasets_lists_the_catalog(mirrored):
    result = runner.invoke(app, ["datasets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("rock_paper_scissors", "cats_and_dogs_filtered", "tf_flowers", "horses_or_humans", "beans",
                 "alpaca_tgz", "c2403444", "no checksum", "CC BY 2.0"):
        assert name in result.output
    listed = {d["name"]: d for d in json.loads(invoke("datasets", "--json").stdout)}
    assert listed["tf_flowers"]["sources"][0] == "tfds:tf_flowers"
    assert listed["alpaca_tgz"]["sources"] == [
        f"{mirrored['base']}alpaca-small.tar.gz#sha256={sha256(mirrored['root'] / 'alpaca-small.tar.gz')}"]


def test_get_a_tar_gz_via_the_mirror(mirrored, tmp_path):
    dest = tmp_path / "sets" / "alpaca"
    result = invoke("datasets", "get", "alpaca_tgz", dest, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["image_count"] == 24 and summary["images"] == {"all": {"alpaca": 12, "not alpaca": 12}}
    assert checksums(dest) == checksums(mirrored["tiny"])  # the very files, no marker, nothing else
    assert left_over(dest.parent) == ["alpaca"]  # no temporary folder left beside it


def test_get_split_sets_keep_their_splits(mirrored, tmp_path):
    (tmp_path / "split").mkdir()  # an empty DEST is fine
    assert invoke("datasets", "get", "alpaca_split", tmp_path / "split").exit_code == 0
    assert left_over(tmp_path / "split") == ["train", "validation"]
    assert sum(1 for _ in (tmp_path / "split" / "validation").rglob("*.jpg")) == 8
    result = invoke("datasets", "get", "alpaca_two", tmp_path / "two", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == {"test": {"alpaca": 3, "not alpaca": 3},
                                                   "train": {"alpaca": 12, "not alpaca": 12}}
    assert left_over(tmp_path / "two") == ["test", "train"]


def test_a_wrong_checksum_leaves_nothing(mirrored, tmp_path):
    result = invoke("datasets", "get", "alpaca_bad", tmp_path / "bad")
    assert result.exit_code == 2 and "does not match sha256=" + "0" * 64 in result.output
    (tmp_path / "empty").mkdir()
    assert invoke("datasets", "get", "alpaca_bad", tmp_path / "empty").exit_code == 2
    assert left_over(tmp_path / "empty") == []
    assert "bad" not in left_over(tmp_path) and not [n for n in left_over(tmp_path) if n.startswith(".")]
    # a real catalog entry served a file that is not the published archive
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "flower_photos.tgz").write_bytes((mirrored["root"] / "alpaca-small.tar.gz").read_bytes())
    result = invoke("datasets", "get", "tf_flowers", tmp_path / "flowers", "--from-file", tmp_path / "www")
    assert result.exit_code == 2 and "should have sha256=4c54ace7911aaffe" in result.output
    assert not (tmp_path / "flowers").exists()


def test_refusals_name_the_fix(mirrored, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    result = invoke("datasets", "get", "alpaca_tgz", tmp_path / "full")
    assert result.exit_code == 2 and "is not empty" in result.output
    assert left_over(tmp_path / "full") == ["notes.txt"]
    result = invoke("datasets", "get", "alpaca_tgz", tmp_path / "full" / "notes.txt")
    assert result.exit_code == 2 and "is a file" in result.output
    result = invoke("datasets", "get", "alpaca_tgs", tmp_path / "x")
    assert result.exit_code == 2 and "Did you mean 'alpaca_tgz'" in result.output and "rock_paper_scissors" in result.output
    result = invoke("datasets", "get", "alpaca_tgz", tmp_path / "x", "--source", "tfds")
    assert result.exit_code == 2 and "has no tfds source" in result.output
    result = invoke("datasets", "get", "alpaca_tgz", tmp_path / "x", "--from-file", tmp_path / "full" / "notes.txt")
    assert result.exit_code == 2 and "none of the archives" in result.output


def requests_made(server) -> int:
    return len(server["requests"])


def test_offline_fails_at_once_naming_the_local_copy_fix(server, tmp_path, monkeypatch):
    monkeypatch.setenv(CATALOG_ENV, str(server["catalog"]))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    started = time.monotonic()
    result = invoke("datasets", "get", "alpaca_two", tmp_path / "two")
    assert time.monotonic() - started < 20
    assert result.exit_code == 2
    for part in ("Could not download 'http://127.0.0.1:9/published/alpaca-small.tar.gz'", "alpaca-test.zip",
                 "--from-file alpaca-small.tar.gz --from-file alpaca-test.zip", str(tmp_path / "keras" / "datasets"),
                 MIRROR_ENV):
        assert part in " ".join(result.output.split()), part
    assert left_over(tmp_path) == ["keras"] or left_over(tmp_path) == []
    # a real entry: the archive's name, size and checksum, and the TFDS way
    monkeypatch.setenv(MIRROR_ENV, OFFLINE)
    result = invoke("datasets", "get", "tf_flowers", tmp_path / "flowers")
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "flower_photos.tgz (228.8 MB, sha256 4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b4" \
        "64e5a7183e3e595d9c)" in message and "tfds build tf_flowers" in message and "TFDS_DATA_DIR" in message
    result = invoke("datasets", "get", "tf_flowers", tmp_path / "flowers", "--source", "tfds",
                    "--tfds-data-dir", tmp_path / "no-tfds")
    assert result.exit_code == 2 and "tfds build tf_flowers" in result.output
    assert not (tmp_path / "flowers").exists()


def test_local_copies_work_offline(server, tmp_path, monkeypatch):
    monkeypatch.setenv(CATALOG_ENV, str(server["catalog"]))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    before = requests_made(server)
    result = invoke("datasets", "get", "alpaca_two", tmp_path / "two", "--from-file", server["root"] / "alpaca-test.zip",
                    "--from-file", server["root"] / "alpaca-small.tar.gz")
    assert result.exit_code == 0, result.output
    assert left_over(tmp_path / "two") == ["test", "train"]
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    (tmp_path / "keras" / "datasets" / "alpaca-split.zip").write_bytes((server["root"] / "alpaca-split.zip").read_bytes())
    result = invoke("datasets", "get", "alpaca_split", tmp_path / "split")  # found in the Keras cache
    assert result.exit_code == 0, result.output
    assert left_over(tmp_path / "split") == ["train", "validation"]
    assert requests_made(server) == before


# -- every command that takes DATA_DIR takes a URL source -------------------------------------


def spec(server, name: str) -> str:
    return f"{server['base']}{name}#sha256={sha256(server['root'] / name)}"


def test_doctor_and_preview_on_a_url(mirrored, tmp_path):
    result = invoke("doctor", spec(mirrored, "alpaca-small.tar.gz"), "--json")
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    counts = {s["class"]: s["usable"] for s in report["class_counts"]}
    assert counts == {"alpaca": 12, "not alpaca": 12}
    result = invoke("preview", spec(mirrored, "alpaca-split.zip"), "--out", tmp_path / "preview", "--draws", "2")
    assert result.exit_code == 0, result.output
    assert "2 classes, 16 images" in result.output  # the train/ folder of the split set
    assert (tmp_path / "preview" / "samples.png").stat().st_size > 1000


def test_train_and_evaluate_on_urls(mirrored, tmp_path):
    split = spec(mirrored, "alpaca-split.zip")
    result = invoke("train", split, "--out", tmp_path / "run", *SMALL)
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert (results["train_images"], results["val_images"]) == (16, 8)  # the archive's own validation/
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["source"] == split
    result = invoke("evaluate", tmp_path / "run", spec(mirrored, "alpaca-small.tar.gz"), "--json",
                    "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 24
    result = invoke("evaluate", tmp_path / "run", split, "--json", "--out", tmp_path / "eval-split")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 8  # a split set is scored on its validation/ (test/ if any)
