"""`datasets get`: write a catalog dataset as class folders at DEST, through `resolve_source`.

Everything happens in a temporary folder beside DEST (its own source cache included, so the
result is renamed, never copied, into place); DEST appears only complete, and a failure (a wrong
checksum, no network) leaves it as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from transferkit.data import catalog
from transferkit.data.files import is_visible
from transferkit.data.sources import MARKER, keras_datasets_dir, resolve_source
from transferkit.errors import DataError, DownloadError

logger = logging.getLogger("transferkit")
SOURCES = ("url", "tfds")


def check_dest(dest: Path) -> None:
    if dest.is_file() or (dest.exists() and not dest.is_dir()):
        raise DataError(f"'{dest}' is a file; pass a new or empty folder to write the dataset into.")
    if dest.is_dir() and any(dest.iterdir()):
        raise DataError(f"'{dest}' is not empty; pass a new or empty folder (nothing was written).")


def pick_source(entry: catalog.Dataset, source: str | None) -> str:
    """`url` (the archives as published) when the entry has archives, else `tfds`."""
    available = [s for s, ok in (("url", entry.archives), ("tfds", entry.tfds)) if ok]
    if source is None:
        return available[0]
    if source not in SOURCES:
        raise DataError(f"--source is '{source}'; allowed: {', '.join(SOURCES)}.")
    if source not in available:
        raise DataError(f"'{entry.name}' has no {source} source; it has {', '.join(available)}.")
    return source


def match_files(entry: catalog.Dataset, files) -> dict:
    """Local copies of the entry's archives ({Archive: Path}): each file, or each file in a folder, by name."""
    wanted = {a.file_name: a for a in entry.archives}
    found = {}
    for given in map(Path, files):
        candidates = [given / name for name in wanted] if given.is_dir() else [given]
        if not given.exists():
            raise DataError(f"--from-file '{given}' does not exist.")
        hits = [p for p in candidates if p.is_file() and p.name in wanted]
        if not hits:
            raise DataError(f"--from-file '{given}' is none of the archives of '{entry.name}' "
                            f"({', '.join(wanted)}); the file name must be the archive's.")
        found.update({wanted[p.name]: p for p in hits})
    return found


def offline_fix(entry: catalog.Dataset, dest="DEST") -> str:
    """What to download elsewhere and where to put it, for every archive of the entry."""
    files = "; ".join(f"{a.file_name} ({format_size(a.size)}, "
                      f"{'sha256 ' + a.sha256 if a.sha256 else 'no published checksum'}) from {a.url}"
                      for a in entry.archives)
    flags = " ".join(f"--from-file {a.file_name}" for a in entry.archives)
    tfds = (f" Or use TensorFlow Datasets: `tfds build {entry.tfds}` where there is network, copy the folder into "
            f"TFDS_DATA_DIR and add --source tfds." if entry.tfds else "")
    return (f"Without network, download {files}. Then run `transferkit datasets get {entry.name} {dest} {flags}`, "
            f"or put the files in {keras_datasets_dir()} (the Keras download cache, $KERAS_HOME/datasets), "
            f"or serve them over http and set ${catalog.MIRROR_ENV}=http://host/folder/. Checksums are "
            f"verified either way.{tfds}")


def get_dataset(name: str, dest, *, source: str | None = None, files=(), tfds_data_dir=None) -> dict:
    """Write dataset `name` as class folders (train/, validation/, test/ where it is split) at `dest`."""
    entry = catalog.find(name)
    dest = Path(dest)
    check_dest(dest)
    source = pick_source(entry, source)
    if files and source != "url":
        raise DataError("--from-file gives local copies of the archives; it does not go with --source tfds.")
    local = match_files(entry, files)
    parent = dest.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-get-", dir=parent))
    try:
        staged = work / "dataset"
        if source == "tfds":
            os.rename(resolve_source(f"tfds:{entry.tfds}", tfds_data_dir=tfds_data_dir, cache_dir=work), staged)
        else:
            _stage_archives(entry, local, work, staged, dest)
        for marker in staged.rglob(MARKER):
            marker.unlink()
        _publish(staged, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"name": entry.name, "dest": str(dest), "source": source, **_summary(dest)}


def _stage_archives(entry: catalog.Dataset, local: dict, work: Path, staged: Path, dest: Path) -> None:
    for archive in entry.archives:
        if archive.sha256 is None:
            logger.warning("%s has no published checksum: it is used unverified.", archive.file_name)
        try:
            folder = resolve_source(catalog.archive_spec(archive), cache_dir=work, archive=local.get(archive))
        except DownloadError as error:
            raise DownloadError(f"{error.reason} {offline_fix(entry, dest)}") from None
        target = staged / archive.split if archive.split else staged
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, target)


def _publish(staged: Path, dest: Path) -> None:
    if dest.is_dir():
        dest.rmdir()  # empty, checked above; a file written since makes this fail, as it should
    os.rename(staged, dest)


def _summary(dest: Path) -> dict:
    """Images per split and class, as written (the folder walker's view: hidden files left out)."""
    from transferkit.data.files import is_image_file

    splits = [p for p in sorted(dest.iterdir()) if p.is_dir() and p.name in ("train", "val", "validation", "test")]
    counts = {}
    for split in splits or [dest]:
        for folder in sorted(p for p in split.iterdir() if p.is_dir() and is_visible(p.name)):
            n = sum(1 for f in folder.rglob("*") if f.is_file() and is_image_file(f))
            counts.setdefault(split.name if splits else "all", {})[folder.name] = n
    return {"images": counts, "image_count": sum(sum(c.values()) for c in counts.values())}


def format_size(size: int | None) -> str:
    return "size unknown" if size is None else f"{size / 1e6:.1f} MB"

