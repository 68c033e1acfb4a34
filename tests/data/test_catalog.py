"""The dataset catalog: complete entries, checksums that are the ones TensorFlow Datasets records."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from transferkit.data import catalog
from transferkit.errors import DataError

HEX64 = re.compile(r"[0-9a-f]{64}")
TUTORIAL_SETS = {"rock_paper_scissors", "cats_and_dogs_filtered", "tf_flowers", "horses_or_humans", "beans"}


def tfds_recorded() -> dict[str, tuple[int, str]]:
    """url -> (size, sha256) from the installed tensorflow_datasets' own checksum files (no import of it)."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None:
        pytest.skip("tensorflow-datasets is not installed")
    root = Path(spec.submodule_search_locations[0])
    recorded = {}
    for path in [*root.glob("datasets/*/checksums.tsv"), *root.glob("url_checksums/*.txt")]:
        for line in path.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1].isdigit():
                recorded[fields[0]] = (int(fields[1]), fields[2])
    return recorded


def test_every_entry_is_complete_and_checked():
    names = [d.name for d in catalog.CATALOG]
    assert TUTORIAL_SETS <= set(names) and len(names) == len(set(names))
    for d in catalog.CATALOG:
        catalog.check(d)
        assert d.description and d.license and d.homepage.startswith("http") and len(d.classes) >= 2
        assert d.image_count > 0 and all(split in catalog.SPLITS and n > 0 for split, n in d.images)
        assert d.archives, d.name
        for a in d.archives:
            assert a.url.startswith(("http://", "https://")) and a.size > 0
            assert a.sha256 is None or HEX64.fullmatch(a.sha256)
        if any(a.sha256 is None for a in d.archives):
            assert "no published checksum" in d.note  # said honestly, not left blank
        assert d.download_size == sum(a.size for a in d.archives)
        entry = d.to_dict()
        assert entry["image_count"] == d.image_count and entry["sources"][-1].startswith("http")


def test_checksums_and_sizes_are_the_ones_tfds_records():
    recorded = tfds_recorded()
    checked = 0
    for d in catalog.CATALOG:
        for a in d.archives:
            if a.sha256 is None:
                assert a.url not in recorded, f"{a.url} has a recorded checksum: use it"
                continue
            assert recorded[a.url] == (a.size, a.sha256), a.url
            checked += 1
    assert checked >= 9


def test_tfds_names_exist():
    tfds = pytest.importorskip("tensorflow_datasets")
    builders = set(tfds.list_builders())
    assert {d.tfds for d in catalog.CATALOG if d.tfds} <= builders


def test_unknown_name_lists_the_known_ones_and_the_nearest():
    assert catalog.find("beans").tfds == "beans"
    with pytest.raises(DataError, match="Unknown dataset 'rock_paper_scisors'. Did you mean 'rock_paper_scissors'"):
        catalog.find("rock_paper_scisors")
    with pytest.raises(DataError, match="Known: beans, cats_and_dogs_filtered, .*tf_flowers"):
        catalog.find("zzz")
    with pytest.raises(DataError, match="Did you mean 'tf_flowers'"):
        catalog.find("flowers")


def test_mirror_replaces_the_folder_and_keeps_the_checksum(monkeypatch):
    flowers = catalog.find("tf_flowers").archives[0]
    monkeypatch.setenv(catalog.MIRROR_ENV, "http://10.0.0.5:8000/sets")
    assert catalog.archive_spec(flowers) == f"http://10.0.0.5:8000/sets/flower_photos.tgz#sha256={flowers.sha256}"
    monkeypatch.setenv(catalog.MIRROR_ENV, "/srv/sets")
    with pytest.raises(DataError, match="must be an http"):
        catalog.archive_url(flowers)


def test_extra_catalog_file(tmp_path, monkeypatch):
    entry = {"name": "mine", "classes": ["a", "b"], "images": {"train": 4},
             "archives": [{"url": "http://host/mine.zip", "size": 10, "sha256": "ab" * 32}]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([entry]))
    monkeypatch.setenv(catalog.CATALOG_ENV, str(path))
    assert catalog.find("mine").archives[0].file_name == "mine.zip"
    assert len(catalog.datasets()) == len(catalog.CATALOG) + 1
    for bad, message in (({**entry, "name": "beans"}, "redefines"),
                         ({**entry, "archives": [{**entry["archives"][0], "sha256": "abc"}]}, "64 lower-case hex"),
                         ({**entry, "colour": "red"}, "every entry needs"),
                         ({**entry, "archives": [{**entry["archives"][0], "split": "dev"}]}, "archive split")):
        path.write_text(json.dumps([bad]))
        with pytest.raises(DataError, match=message):
            catalog.datasets()
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a readable JSON"):
        catalog.datasets()
