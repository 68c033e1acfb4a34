"""Where a DATA_DIR comes from: a local folder, a TensorFlow Datasets name, or an archive URL.

Every source is turned into an ordinary local class-folder directory once (written
atomically, reused on the next call), so everything downstream (scan, split manifest,
fingerprint, caches, evaluate's rebuilt split) sees plain files and works unchanged.

    resolve_source("data/flowers")                       -> data/flowers
    resolve_source("tfds:rock_paper_scissors")           -> <cache>/tfds/rock_paper_scissors/3.0.0  (train/, test/)
    resolve_source("tfds:beans:validation")              -> <cache>/tfds/beans/<version>/val
    resolve_source("https://host/set.zip#sha256=HEX")    -> <cache>/urls/<key>/<top folder>

Nothing here downloads a TFDS dataset (`download=False`): one that is not prepared in
the TFDS data dir fails before any work, saying how to get it. A URL's archive may come from
a local copy instead (`archive=`, or the file a Keras tutorial left in ~/.keras/datasets),
checked against the checksum like a download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from transferkit.data.files import is_visible
from transferkit.errors import DataError, DownloadError
from transferkit.progress import progress_bar

logger = logging.getLogger("transferkit")

TFDS_PREFIX = "tfds:"
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# TFDS split name -> the pre-split folder name `resolve_layout` reads.
TFDS_SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test"}
MARKER = ".transferkit-source.json"  # hidden: the folder walker never sees it


def is_tfds(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(TFDS_PREFIX)


def is_url(spec) -> bool:
    return isinstance(spec, str) and spec.lower().startswith(("http://", "https://"))


def is_remote(spec) -> bool:
    """True for a spec that names a dataset rather than a local folder."""
    return is_tfds(spec) or is_url(spec)


def source_name(spec) -> str:
    """A short name for run folders: the folder name, the TFDS name or the archive's stem."""
    if is_tfds(spec):
        return spec[len(TFDS_PREFIX):].split(":")[0]
    if is_url(spec):
        name = os.path.basename(urlsplit(spec).path)
        for suffix in ARCHIVE_SUFFIXES:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)] or "data"
        return name or "data"
    return Path(spec).resolve().name or "data"


def default_cache_dir(cache_dir=None) -> Path:
    return Path(cache_dir) if cache_dir else Path(os.environ.get("TRANSFERKIT_DATA_CACHE")
                                                  or Path.home() / ".cache" / "transferkit")


def resolve_source(spec, *, tfds_data_dir=None, cache_dir=None, archive=None) -> Path:
    """A local class-folder directory for `spec` (a path, `tfds:NAME[:SPLIT]` or an http(s) archive URL).

    `archive`: a local copy of a URL spec's file, used instead of downloading it (checked against
    its #sha256 like a download), for machines without network.
    """
    if archive is not None and not is_url(spec):
        raise DataError(f"A local archive ('{archive}') stands in for a URL source only, not for '{spec}'.")
    if is_tfds(spec):
        return _resolve_tfds(spec, tfds_data_dir, default_cache_dir(cache_dir))
    if is_url(spec):
        return _resolve_url(spec, default_cache_dir(cache_dir), archive)
    return Path(spec)


# -- TensorFlow Datasets ---------------------------------------------------------------


def tfds_data_dir_of(tfds_data_dir=None) -> Path:
    return Path(tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _how_to_get(name: str, data_dir: Path) -> str:
    return (f"On a machine with internet, run `tfds build {name} --data_dir {data_dir}` (or "
            f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{data_dir}')"
            ".download_and_prepare()\"`) and copy the folder here; or point --tfds-data-dir / TFDS_DATA_DIR at "
            f"a folder that holds {name}/<version>/; or pass a local folder of class sub-folders instead.")


def _tfds_builder(name: str, data_dir: Path):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(f"'tfds:{name}' needs tensorflow-datasets: pip install 'transferkit[tfds]' ({error}).") from None
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except Exception as error:  # DatasetNotFoundError and friends: unknown, or not in data_dir
        raise DataError(f"TFDS dataset '{name}' was not found in the TFDS data dir '{data_dir}' "
                        f"({type(error).__name__}). {_how_to_get(name, data_dir)}") from None
    if not builder.is_prepared():
        raise DataError(f"TFDS dataset '{name}' is known but not prepared in the TFDS data dir '{data_dir}', and "
                        f"transferkit does not download it (offline). {_how_to_get(name, data_dir)}")
    return builder


def _feature_keys(builder) -> tuple[str, str]:
    """(image key, label key): the supervised keys, else the one Image and the one ClassLabel feature."""
    import tensorflow_datasets as tfds

    keys = builder.info.supervised_keys
    if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    features = builder.info.features
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if len(images) != 1 or len(labels) != 1:
        raise DataError(f"TFDS dataset '{builder.name}' has image features {images} and label features {labels}; "
                        "transferkit needs exactly one of each (an image classification dataset).")
    return images[0], labels[0]


def _resolve_tfds(spec: str, tfds_data_dir, cache_root: Path) -> Path:
    parts = spec[len(TFDS_PREFIX):].split(":")
    if len(parts) > 2 or not parts[0]:
        raise DataError(f"'{spec}' is not a TFDS source; write tfds:NAME or tfds:NAME:SPLIT, "
                        "e.g. tfds:rock_paper_scissors or tfds:beans:validation.")
    name, only = parts[0], (parts[1] if len(parts) == 2 else None)
    data_dir = tfds_data_dir_of(tfds_data_dir)
    builder = _tfds_builder(name, data_dir)
    splits = [s for s in builder.info.splits if s in TFDS_SPLIT_FOLDERS]
    if only is not None and only not in builder.info.splits:
        raise DataError(f"TFDS dataset '{name}' has splits {sorted(builder.info.splits)}; '{only}' is not one.")
    if "train" not in splits and only is None:
        raise DataError(f"TFDS dataset '{name}' has no 'train' split (it has {sorted(builder.info.splits)}); "
                        f"name one: tfds:{name}:SPLIT.")
    target = cache_root / "tfds" / name / str(builder.info.version)
    wanted = [only] if only is not None else splits
    for split in wanted:
        folder = target / TFDS_SPLIT_FOLDERS.get(split, split)
        if not folder.is_dir():
            _materialise_split(builder, split, folder)
    if only is not None:
        return target / TFDS_SPLIT_FOLDERS.get(only, only)
    return target


def _materialise_split(builder, split: str, folder: Path) -> None:
    """Write one TFDS split as `folder/<class>/<index>.png`, into a temporary folder renamed at the end."""
    import tensorflow_datasets as tfds
    from PIL import Image

    image_key, label_key = _feature_keys(builder)
    names = builder.info.features[label_key].names
    total = builder.info.splits[split].num_examples
    logger.warning("Writing TFDS %s:%s (%d images) as class folders in %s (once).", builder.name, split, total, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name in names:
            (tmp / _safe(name)).mkdir()
        width = max(5, len(str(total)))
        examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        with progress_bar(total, f"writing {builder.name}:{split}", enabled=sys.stderr.isatty()) as advance:
            for index, example in enumerate(examples):
                image = example[image_key]
                if image.ndim == 3 and image.shape[-1] == 1:
                    image = image[..., 0]
                Image.fromarray(image).save(tmp / _safe(names[int(example[label_key])]) / f"{index:0{width}d}.png")
                advance(1)
        _write_marker(tmp, {"source": f"tfds:{builder.name}:{split}", "version": str(builder.info.version),
                            "images": total, "classes": list(names)})
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe(name: str) -> str:
    """A label name usable as a folder name (TFDS names are usually already)."""
    cleaned = str(name).replace(os.sep, "_").replace("\0", "_").strip() or "_"
    return cleaned if is_visible(cleaned) else "_" + cleaned


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place; another process that got there first wins."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise


def _write_marker(folder: Path, info: dict) -> None:
    (folder / MARKER).write_text(json.dumps(info, indent=1))


# -- archive URLs ------------------------------------------------------------------------


def parse_url(spec: str) -> tuple[str, str | None]:
    """(url, sha256 or None) from `URL[#sha256=HEX]`."""
    url, _, fragment = spec.partition("#")
    if not fragment:
        return url, None
    key, _, value = fragment.partition("=")
    value = value.strip().lower()
    if key.lower() != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise DataError(f"'#{fragment}' in '{spec}' is not a checksum; write URL#sha256=<64 hex digits> "
                        "(sha256sum FILE prints it) or leave the fragment out.")
    return url, value


def _archive_name(url: str) -> str:
    name = os.path.basename(urlsplit(url).path)
    if not name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"'{url}' does not end in {', '.join(ARCHIVE_SUFFIXES)}; transferkit downloads archives "
                        "of class folders. Pass a local folder for anything else.")
    return name


def keras_datasets_dir() -> Path:
    """Where `keras.utils.get_file` keeps downloads ($KERAS_HOME/datasets, else ~/.keras/datasets)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "datasets"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_archive(path: Path, url: str, sha256: str | None) -> None:
    if not path.is_file():
        raise DataError(f"The local copy '{path}' of '{url}' is not a file.")
    if sha256 is not None and (found := file_sha256(path)) != sha256:
        raise DataError(f"'{path}' has sha256={found}, but '{url}' should have sha256={sha256}: it is another file "
                        "or an incomplete download. Nothing was extracted; replace it with a good copy.")


def _local_copy(name: str, url: str, sha256: str | None, archive) -> Path | None:
    """The given archive, else the file a Keras tutorial's get_file left in the Keras cache, else None."""
    if archive is not None:
        _check_archive(Path(archive), url, sha256)
        return Path(archive)
    cached = keras_datasets_dir() / name
    if not cached.is_file():
        return None
    if sha256 is not None and file_sha256(cached) != sha256:  # as Keras does: ignore it, download again
        logger.warning("Ignoring %s (the Keras download cache): its sha256 is not %s.", cached, sha256)
        return None
    logger.warning("Using %s (the Keras download cache) for %s.", cached, url)  # unchecked: Keras reuses it by name too
    return cached


def _resolve_url(spec: str, cache_root: Path, archive=None) -> Path:
    url, sha256 = parse_url(spec)
    name = _archive_name(url)
    key = hashlib.sha256(f"{url}\0{sha256}".encode()).hexdigest()[:16]
    extracted = cache_root / "urls" / key
    if not extracted.is_dir():
        local = _local_copy(name, url, sha256, archive)
        if local is not None:
            _extract(local, extracted)
        else:
            _download_and_extract(url, name, sha256, cache_root / "downloads" / key, extracted)
    return _descend(extracted)


def _download_and_extract(url: str, name: str, sha256: str | None, downloads: Path, extracted: Path) -> None:
    import keras

    downloads.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras's progress bar: stdout stays clean for --json
            archive = keras.utils.get_file(name, origin=url, file_hash=sha256, hash_algorithm="sha256",
                                           cache_dir=str(downloads), cache_subdir=".")
    except ValueError as error:  # Keras's "Incomplete or corrupted file": the checksum did not match
        shutil.rmtree(downloads, ignore_errors=True)
        raise DataError(f"The file downloaded from '{url}' does not match sha256={sha256} ({error}). Nothing "
                        "was kept. Check the URL and the checksum (sha256sum FILE on a good copy).") from None
    except Exception as error:  # no network, 404, refused connection
        shutil.rmtree(downloads, ignore_errors=True)
        reason = f"Could not download '{url}' ({type(error).__name__}: {error})."
        raise DownloadError(f"{reason} Without network, put a copy of {name} in {keras_datasets_dir()} (checked "
                            "against the sha256), or download the archive elsewhere, extract it and pass the local "
                            "folder.", reason) from None
    try:
        _extract(Path(archive), extracted)
    finally:
        shutil.rmtree(downloads, ignore_errors=True)  # the extracted folder is what is reused


def _extract(archive: Path, final: Path) -> None:
    """Extract into a temporary folder renamed into place, refusing members that escape it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    target = (tmp / member).resolve()
                    if not str(target).startswith(str(tmp.resolve()) + os.sep) and target != tmp.resolve():
                        raise DataError(f"Archive '{archive.name}' has a member '{member}' outside its folder; "
                                        "refusing to extract it.")
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
        else:
            raise DataError(f"'{archive.name}' is neither a zip nor a tar archive.")
        _write_marker(tmp, {"archive": archive.name})
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _descend(folder: Path) -> Path:
    """Into a lone top folder (an archive of `flowers/`): the class folders or train/val/test are below it."""
    while True:
        children = [p for p in folder.iterdir() if is_visible(p.name)]
        if len(children) == 1 and children[0].is_dir():
            folder = children[0]
        else:
            return folder
