"""The web app's workspace on disk: projects, their classes and images, nothing outside it.

    WORKSPACE/<project>/data/<class>/*.jpg   the dataset `transferkit train` reads
    WORKSPACE/<project>/runs/<run>/          run folders (`transferkit train --out`)
    WORKSPACE/<project>/logs/<run>.log|json  each training job's output and record
    WORKSPACE/<project>/doctor-cache.json    the dataset doctor's decode cache

Every name that becomes a path (project, class, image, run) is checked against one
pattern first, and every path is resolved and checked to lie inside the workspace,
so a request can never read or write outside it.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from transferkit import data
from transferkit.data.files import IMAGE_EXTENSIONS, is_visible
from transferkit.deploy.server import RequestError, decode_upload

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,62}[A-Za-z0-9_\-]$|^[A-Za-z0-9]$")
NAME_RULE = ("1-64 characters: letters, digits, space, '.', '_' or '-', starting with a letter or digit "
             "and not ending in a space or '.'")
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp",
                 "TIFF": ".tif"}
MAX_PIXELS = 40_000_000
MAX_IMPORT_FILES = 20_000
THUMB_SIDE = 160
DATA, RUNS, LOGS = "data", "runs", "logs"


def check_name(kind: str, name) -> str:
    """`name` if it is a safe single path component, else a 422 naming it and the rule."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise RequestError(422, f"invalid_{kind}_name", f"{kind.capitalize()} name {name!r} is not allowed: use {NAME_RULE}.")
    return name


def inside(root: Path, *parts: str) -> Path:
    """root/parts resolved, refused (403) unless it stays inside `root` (no '..', no symlink out)."""
    root = root.resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise RequestError(403, "outside_workspace", f"{'/'.join(parts)!r} points outside its folder; refused.")
    return target


class Workspace:
    """Projects under one folder; every method checks its names before touching the disk."""

    def __init__(self, root):
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise RequestError(400, "workspace_is_a_file", f"Workspace '{root}' is a file; pass a folder.")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    # -- projects and classes ----------------------------------------------------------

    def project(self, name: str, must_exist: bool = True) -> Path:
        folder = inside(self.root, check_name("project", name))
        if must_exist and not (folder / DATA).is_dir():
            raise RequestError(404, "no_such_project", f"There is no project {name!r}; create it on the Data page.")
        return folder

    def projects(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / DATA).is_dir() and NAME_PATTERN.match(p.name))

    def create_project(self, name: str) -> Path:
        folder = self.project(name, must_exist=False)
        if (folder / DATA).is_dir():
            raise RequestError(409, "project_exists", f"Project {name!r} already exists.")
        for sub in (DATA, RUNS, LOGS):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return folder

    def data_dir(self, project: str) -> Path:
        return self.project(project) / DATA

    def class_dir(self, project: str, name: str, must_exist: bool = True) -> Path:
        folder = inside(self.data_dir(project), check_name("class", name))
        if must_exist and not folder.is_dir():
            raise RequestError(404, "no_such_class", f"Project {project!r} has no class {name!r}; add it first.")
        return folder

    def create_class(self, project: str, name: str) -> Path:
        folder = self.class_dir(project, name, must_exist=False)
        if folder.is_dir():
            raise RequestError(409, "class_exists", f"Project {project!r} already has a class {name!r}.")
        folder.mkdir()
        return folder

    def classes(self, project: str) -> list[dict]:
        """Each class with its image count and file names (newest last)."""
        rows = []
        for folder in sorted(p for p in self.data_dir(project).iterdir() if p.is_dir() and is_visible(p.name)):
            images = sorted((p for p in folder.iterdir() if p.is_file() and data.is_image_file(p)),
                            key=lambda p: (p.stat().st_mtime_ns, p.name))
            rows.append({"name": folder.name, "count": len(images), "images": [p.name for p in images]})
        return rows

    # -- images ------------------------------------------------------------------------

    def image_path(self, project: str, class_name: str, image: str) -> Path:
        path = inside(self.class_dir(project, class_name), image)
        if path.parent != self.class_dir(project, class_name) or not path.is_file():
            raise RequestError(404, "no_such_image", f"Class {class_name!r} has no image {image!r}.")
        return path

    def add_image(self, project: str, class_name: str, filename: str, content: bytes) -> str:
        """Check that `content` decodes (422 naming the file otherwise), then store it under a safe name."""
        folder = self.class_dir(project, class_name)
        if not content:
            raise RequestError(422, "empty_file", f"{filename}: the file is empty (0 bytes).")
        decode_upload(filename, content, 32, MAX_PIXELS)
        from PIL import Image

        with Image.open(io.BytesIO(content)) as image:
            suffix = FORMAT_SUFFIX.get(image.format or "")
        if suffix is None:
            raise RequestError(422, "unsupported_format", f"{filename}: training does not read this image format; "
                               f"send one of {', '.join(IMAGE_EXTENSIONS)}.")
        return _write_new(folder, _safe_stem(filename), suffix, content).name

    def delete_image(self, project: str, class_name: str, image: str) -> None:
        self.image_path(project, class_name, image).unlink()

    def thumbnail(self, project: str, class_name: str, image: str) -> bytes:
        """A small JPEG of the image as training sees it (EXIF-rotated, RGB)."""
        from PIL import Image

        pixels = data.load_image(self.image_path(project, class_name, image), max_pixels=MAX_PIXELS)
        thumb = Image.fromarray(pixels)
        thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        thumb.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def import_folder(self, project: str, source) -> dict:
        """Copy the images of a class-folder dataset on disk into the project (the source is only read)."""
        source = Path(str(source)).expanduser()
        if not source.is_absolute() or not source.is_dir():
            raise RequestError(422, "not_a_folder", f"{str(source)!r} is not an existing folder; give the absolute "
                               "path of a folder with one sub-folder of images per class.")
        if source.resolve() == self.root or self.root in source.resolve().parents:
            raise RequestError(422, "inside_workspace", f"'{source}' is inside the workspace; import from elsewhere.")
        folders = [p for p in sorted(source.iterdir()) if p.is_dir() and is_visible(p.name)]
        found = {p.name: data.find_images(p) for p in folders}
        found = {name: images for name, images in found.items() if images}
        if not found:
            raise RequestError(422, "no_class_folders", f"'{source}' has no sub-folders with images; it needs one "
                               "sub-folder of images per class, e.g. cat/*.jpg and dog/*.jpg.")
        for name in found:
            check_name("class", name)
        total = sum(map(len, found.values()))
        if total > MAX_IMPORT_FILES:
            raise RequestError(413, "too_many_files", f"'{source}' holds {total} images; the import limit is "
                               f"{MAX_IMPORT_FILES}. Train on it with `transferkit train` instead.")
        copied = {}
        for name, images in found.items():
            folder = self.class_dir(project, name, must_exist=False)
            folder.mkdir(exist_ok=True)
            for path in images:
                stem, suffix = Path(path).stem, Path(path).suffix.lower()
                _write_new(folder, _safe_stem(stem), suffix, Path(path).read_bytes())
            copied[name] = len(images)
        return {"source": str(source), "copied": copied, "images": total}

    # -- runs --------------------------------------------------------------------------

    def runs_dir(self, project: str) -> Path:
        folder = self.project(project) / RUNS
        folder.mkdir(exist_ok=True)
        return folder

    def logs_dir(self, project: str) -> Path:
        folder = self.project(project) / LOGS
        folder.mkdir(exist_ok=True)
        return folder

    def run_dir(self, project: str, run: str, must_exist: bool = True) -> Path:
        folder = inside(self.runs_dir(project), check_name("run", run))
        if must_exist and not folder.is_dir():
            raise RequestError(404, "no_such_run", f"Project {project!r} has no run {run!r}.")
        return folder

    def new_run_name(self, project: str) -> str:
        stamp = time.strftime("run-%Y%m%d-%H%M%S")
        name, n = stamp, 1
        while (self.runs_dir(project) / name).exists() or (self.logs_dir(project) / f"{name}.json").exists():
            n += 1
            name = f"{stamp}-{n}"
        return name

    def doctor(self, project: str) -> dict:
        """The dataset doctor's findings on the project's data (decode cache kept beside it)."""
        from transferkit.data.doctor import scan_dataset

        result = scan_dataset(self.data_dir(project), cache_path=self.project(project) / "doctor-cache.json")
        return result.to_dict()


def _safe_stem(name: str) -> str:
    stem = Path(str(name).replace("\\", "/")).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._")[:80] or "image"


def _write_new(folder: Path, stem: str, suffix: str, content: bytes) -> Path:
    """Write `content` to stem.suffix, or stem-2.suffix, ...: the first name not taken (exclusive create,
    so concurrent uploads never overwrite each other)."""
    n = 1
    while True:
        candidate = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            with open(candidate, "xb") as handle:
                handle.write(content)
            return candidate
        except FileExistsError:
            n += 1
