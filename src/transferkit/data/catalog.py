"""A small catalog of the image sets the tutorials use, with where to get them and how to check them.

Sizes and sha256 checksums of the archives are those TensorFlow Datasets records for the same
files (its `checksums.tsv`); an archive TFDS does not know has no published checksum, and says so
(`sha256=None`) rather than carrying one nobody verified. Class names are the archives' folder names.

`$TRANSFERKIT_DATASETS_MIRROR` (an http(s) folder URL) replaces every archive URL's folder, e.g. a
local server holding copies; the checksums are still verified. `$TRANSFERKIT_DATASETS_CATALOG` names
a JSON file of extra entries (a list of objects with the fields of `Dataset`, archives as objects).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from transferkit.errors import DataError

MIRROR_ENV = "TRANSFERKIT_DATASETS_MIRROR"
CATALOG_ENV = "TRANSFERKIT_DATASETS_CATALOG"
SPLITS = ("train", "validation", "test")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Archive:
    """One downloadable file; `split` says which sub-folder of the dataset it becomes (None: the whole set)."""

    url: str
    size: int | None
    sha256: str | None
    split: str | None = None

    @property
    def file_name(self) -> str:
        return os.path.basename(urlsplit(self.url).path)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    classes: tuple[str, ...]
    images: tuple[tuple[str, int], ...]  # (split, count) as the archives publish them
    license: str
    homepage: str
    archives: tuple[Archive, ...] = ()
    tfds: str | None = None  # the TensorFlow Datasets name, for `tfds:NAME`
    note: str = ""

    @property
    def image_count(self) -> int:
        return sum(n for _, n in self.images)

    @property
    def download_size(self) -> int | None:
        sizes = [a.size for a in self.archives]
        return sum(sizes) if sizes and None not in sizes else None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["images"] = dict(self.images)
        data["image_count"], data["download_size"] = self.image_count, self.download_size
        data["sources"] = ([f"tfds:{self.tfds}"] if self.tfds else []) + [archive_spec(a) for a in self.archives]
        return data


_GCS = "https://storage.googleapis.com"
_CC_BY = "CC BY 2.0"

CATALOG: tuple[Dataset, ...] = (
    Dataset(
        "rock_paper_scissors", "Computer-generated hands playing rock, paper, scissors (300x300 PNG).",
        ("paper", "rock", "scissors"), (("train", 2520), ("test", 372)), _CC_BY,
        "http://laurencemoroney.com/rock-paper-scissors-dataset",
        (Archive(f"{_GCS}/download.tensorflow.org/data/rps.zip", 200682221,
                 "c2403444395842ad04c53612bad54b574443eae17a0723117a2ff87b9d72194f", "train"),
         Archive(f"{_GCS}/download.tensorflow.org/data/rps-test-set.zip", 29516758,
                 "c27ab9fa43ce40b2e453de711365b477f4424586edf0388116674fd320f07503", "test")),
        tfds="rock_paper_scissors"),
    Dataset(
        "cats_and_dogs_filtered", "The Keras transfer-learning tutorial's 3,000 cats and dogs (JPEG).",
        ("cats", "dogs"), (("train", 2000), ("validation", 1000)),
        "Kaggle Dogs vs. Cats (Microsoft Research Asirra) terms", "https://www.kaggle.com/c/dogs-vs-cats",
        (Archive(f"{_GCS}/mledu-datasets/cats_and_dogs_filtered.zip", 68606236, None),),
        note="Not in TensorFlow Datasets: no published checksum, so the download is not verified; "
             "the size is the one the tutorial's download reports."),
    Dataset(
        "tf_flowers", "Flickr photos of five kinds of flowers (JPEG; per-photo credits in LICENSE.txt).",
        ("daisy", "dandelion", "roses", "sunflowers", "tulips"), (("train", 3670),), _CC_BY,
        "https://www.tensorflow.org/tutorials/load_data/images",
        (Archive("http://download.tensorflow.org/example_images/flower_photos.tgz", 228813984,
                 "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"),),
        tfds="tf_flowers"),
    Dataset(
        "horses_or_humans", "Computer-generated horses and humans (300x300 PNG).",
        ("horses", "humans"), (("train", 1027), ("validation", 256)), _CC_BY,
        "http://laurencemoroney.com/horses-or-humans-dataset",
        (Archive(f"{_GCS}/download.tensorflow.org/data/horse-or-human.zip", 149574867,
                 "e2e6f70d3d549c5dd10a57165e55af253ee66ad750403f95c0fb76bb943633a9", "train"),
         Archive(f"{_GCS}/download.tensorflow.org/data/validation-horse-or-human.zip", 11480187,
                 "ae5fff2f4f5554791f05358108e2e05d9801b191f1896ea101402f0e7f6c32c0", "validation")),
        tfds="horses_or_humans", note="TFDS calls the validation archive its test split."),
    Dataset(
        "beans", "Bean leaves photographed in Ugandan fields: two diseases and healthy (500x500 JPEG).",
        ("angular_leaf_spot", "bean_rust", "healthy"), (("train", 1034), ("validation", 133), ("test", 128)),
        "MIT", "https://github.com/AI-Lab-Makerere/ibean/",
        (Archive(f"{_GCS}/ibeans/train.zip", 143812152,
                 "284fe8456ce20687f4367ae7ad94a64577e7f9fde2c2c6b1c74340ab5dc82715", "train"),
         Archive(f"{_GCS}/ibeans/validation.zip", 18504213,
                 "90b7aa1c26d91d9afff07a30bbc67a5ea34f1f1397f068d8675be09d7d0c602d", "validation"),
         Archive(f"{_GCS}/ibeans/test.zip", 17708541,
                 "ca67b15d960d1e2fd9d23fd8498ce86818ead90755c630a43baf19ec4af09312", "test")),
        tfds="beans"),
    Dataset(
        "cats_vs_dogs", "The full Asirra cats and dogs set (JPEG), as Microsoft publishes it.",
        ("Cat", "Dog"), (("train", 25000),), "Microsoft Research Asirra terms",
        "https://www.microsoft.com/en-us/download/details.aspx?id=54765",
        (Archive("https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
                 "kagglecatsanddogs_5340.zip", 824887076,
                 "b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9"),),
        tfds="cats_vs_dogs",
        note="TFDS drops 1,738 files without a JFIF header (23,262 left); `transferkit doctor` lists "
             "the ones that do not decode."),
)


def archive_url(archive: Archive) -> str:
    """The archive's URL, with its folder replaced by $TRANSFERKIT_DATASETS_MIRROR when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return archive.url
    if not mirror.lower().startswith(("http://", "https://")):
        raise DataError(f"${MIRROR_ENV} is '{mirror}'; it must be an http(s) folder URL such as "
                        "http://host/datasets/ (for files on this machine use `datasets get --from-file`).")
    return mirror.rstrip("/") + "/" + archive.file_name


def archive_spec(archive: Archive) -> str:
    """The source spec `transferkit train` takes: URL#sha256=HEX (just the URL without a checksum)."""
    url = archive_url(archive)
    return f"{url}#sha256={archive.sha256}" if archive.sha256 else url


def datasets() -> tuple[Dataset, ...]:
    """The built-in catalog, plus the entries of $TRANSFERKIT_DATASETS_CATALOG."""
    path = os.environ.get(CATALOG_ENV, "").strip()
    if not path:
        return CATALOG
    extra = _load_extra(Path(path))
    taken = {d.name for d in CATALOG} & {d.name for d in extra}
    if taken:
        raise DataError(f"${CATALOG_ENV} ('{path}') redefines {sorted(taken)}; give its entries other names.")
    return CATALOG + extra


def find(name: str) -> Dataset:
    """The catalog entry `name`; an unknown name fails with the known ones and the nearest."""
    known = {d.name: d for d in datasets()}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5) or sorted(
        n for n in known if name.strip().lower() and name.strip().lower() in n.lower())
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise DataError(f"Unknown dataset '{name}'.{hint} Known: {', '.join(sorted(known))} (`transferkit datasets`).")


def _load_extra(path: Path) -> tuple[Dataset, ...]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"${CATALOG_ENV} names '{path}', which is not a readable JSON file ({error}).") from None
    if not isinstance(rows, list):
        raise DataError(f"'{path}' holds a {type(rows).__name__}; a catalog file is a JSON list of datasets.")
    return tuple(_entry(row, path) for row in rows)


def _entry(row, path: Path) -> Dataset:
    fields = {f.name for f in dataclasses.fields(Dataset)}
    if not isinstance(row, dict) or not {"name", "classes", "images", "archives"} <= set(row) or set(row) - fields:
        raise DataError(f"'{path}': every entry needs name, classes, images and archives (and may have "
                        f"{', '.join(sorted(fields - {'name', 'classes', 'images', 'archives'}))}); got {row!r}.")
    try:
        archives = tuple(Archive(**a) for a in row["archives"])
        entry = Dataset(**{"description": "", "license": "unknown", "homepage": "", **row,
                           "classes": tuple(row["classes"]), "images": tuple(dict(row["images"]).items()),
                           "archives": archives})
    except (TypeError, ValueError) as error:
        raise DataError(f"'{path}': entry {row.get('name')!r} is malformed ({error}).") from None
    check(entry)
    return entry


def check(entry: Dataset) -> None:
    """Refuse an entry that could not be fetched or verified as written."""
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", entry.name):
        problems.append("a name of letters, digits, '_', '.', '-'")
    if len(entry.classes) < 2:
        problems.append("at least two classes")
    if not entry.archives and not entry.tfds:
        problems.append("an archive or a tfds name")
    for a in entry.archives:
        if not a.url.lower().startswith(("http://", "https://")):
            problems.append(f"http(s) URLs (not {a.url!r})")
        if a.sha256 is not None and not _HEX64.fullmatch(a.sha256):
            problems.append(f"sha256 as 64 lower-case hex digits or null (not {a.sha256!r})")
        if a.split not in (None, *SPLITS):
            problems.append(f"an archive split of {', '.join(SPLITS)} or null (not {a.split!r})")
    if len({a.split for a in entry.archives}) != len(entry.archives) or (None in {a.split for a in entry.archives}
                                                                        and len(entry.archives) > 1):
        problems.append("one archive per split (or a single archive for the whole set)")
    if problems:
        raise DataError(f"Catalog entry '{entry.name}' needs {'; '.join(problems)}.")
