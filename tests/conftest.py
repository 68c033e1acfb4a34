"""Shared fixtures, in tiers.

- Unit tests need nothing: they make their own images with Pillow.
- Small-model tests use `synthetic_dir` and `weights="none"` at a small size: real Keras
  training, no pretrained weights, no shared data.
- End-to-end tests use the real shared datasets and ImageNet weights (`TRANSFERKIT_SHARED`,
  default ../shared); their fixtures skip, with the reason, when that folder is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERKIT_SHARED", REPO.parent / "shared"))
WEIGHTS_DIR = SHARED / "weights"
ALPACA = SHARED / "datasets" / "alpaca"
RPS = SHARED / "datasets" / "rps" / "train"
HAVE_SHARED = WEIGHTS_DIR.is_dir() and ALPACA.is_dir() and RPS.is_dir()
NO_SHARED = f"needs the shared datasets and weights at {SHARED} (set TRANSFERKIT_SHARED to their folder)"
requires_shared = pytest.mark.skipif(not HAVE_SHARED, reason=NO_SHARED)

if HAVE_SHARED:
    os.environ["TRANSFERKIT_WEIGHTS_DIR"] = str(WEIGHTS_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The defaults (160 px: smaller sizes cost alpaca 5-10 points; cached views; head epochs,
# which are nearly free on the cache), with stage 2 cut to 3 epochs.
FAST = dict(fine_tune_epochs=3, patience=None, verbose=0)
# Small-model tier: random weights at 32 px train in seconds and exercise the same code.
SMALL = dict(weights="none", image_size=32, epochs=2, fine_tune_epochs=1, patience=None, verbose=0,
             write_report=False, cached_views=2)


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def copy_subset(source: Path, dest: Path, per_class: int | None = None) -> Path:
    """Copy (the first `per_class` files of) each class folder, so tests own a writable copy."""
    if not source.is_dir():
        pytest.skip(NO_SHARED)
    for class_dir in sorted(d for d in source.iterdir() if d.is_dir()):
        target = dest / class_dir.name
        target.mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(f, target / f.name)
    return dest


def make_images(folder: Path, classes=("circle", "square"), per_class: int = 10, size: int = 48,
                seed: int = 0) -> Path:
    """A tiny, learnable image set made with Pillow: bright circles vs squares on noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            draw = ImageDraw.Draw(image)
            lo, hi = int(rng.integers(4, 12)), int(rng.integers(size - 12, size - 4))
            colour = tuple(int(c) for c in rng.integers(150, 256, 3))
            (draw.ellipse if index % 2 == 0 else draw.rectangle)((lo, lo, hi, hi), fill=colour)
            if index >= 2:
                draw.line((0, 0, size, size), fill=(255, 255, 255), width=4)
            image.save(folder / name / f"{name}-{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "shapes", per_class=12)


@pytest.fixture(scope="session")
def small_run(synthetic_dir, tmp_path_factory):
    """A small-model run (random weights, 32 px) on the synthetic set: (classifier, run_dir)."""
    from transferkit import ImageClassifier

    run_dir = tmp_path_factory.mktemp("runs") / "small"
    classifier = ImageClassifier(**SMALL).fit(synthetic_dir, out=run_dir)
    return classifier, run_dir


@pytest.fixture(scope="session")
def alpaca_dir(tmp_path_factory) -> Path:
    return copy_subset(ALPACA, tmp_path_factory.mktemp("data") / "alpaca")


@pytest.fixture(scope="session")
def alpaca_run(alpaca_dir, tmp_path_factory):
    """One real training run on the alpaca set, shared by the tests that inspect it."""
    from transferkit import ImageClassifier

    before = checksums(alpaca_dir)
    run_dir = tmp_path_factory.mktemp("runs") / "alpaca"
    classifier = ImageClassifier(**FAST).fit(alpaca_dir, out=run_dir)
    return classifier, run_dir, before


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """12 real images per alpaca class: for tests of plumbing rather than accuracy."""
    return copy_subset(ALPACA, tmp_path_factory.mktemp("data") / "tiny", per_class=12)


# -- open-world tests: a tiny rock-paper-scissors copy and one run trained on it --------------

TINY_RUN = dict(fine_tune_epochs=1, epochs=3, patience=None, verbose=0, write_report=False)


def copy_spread(source: Path, dest: Path, per_class: int, stride: int) -> Path:
    """Every `stride`-th file of each class (so several hand models), `per_class` at most."""
    if not source.is_dir():
        pytest.skip(NO_SHARED)
    for class_dir in sorted(d for d in source.iterdir() if d.is_dir()):
        (dest / class_dir.name).mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[::stride][:per_class]:
            shutil.copy2(f, dest / class_dir.name / f.name)
    return dest


@pytest.fixture(scope="session")
def rps_tiny(tmp_path_factory) -> Path:
    """30 real rps images per class, spread over the 7 hand models."""
    return copy_spread(RPS, tmp_path_factory.mktemp("data") / "rps", per_class=30, stride=28)


@pytest.fixture(scope="session")
def rps_run(rps_tiny, tmp_path_factory):
    """(classifier, run_dir) of one tiny real run on `rps_tiny`."""
    from transferkit import ImageClassifier

    run_dir = tmp_path_factory.mktemp("runs") / "rps"
    return ImageClassifier(**TINY_RUN).fit(rps_tiny, out=run_dir), run_dir


@pytest.fixture(scope="session")
def alpaca_photos() -> list[str]:
    """20 real alpaca / not-alpaca photos: far from any hand gesture."""
    if not ALPACA.is_dir():
        pytest.skip(NO_SHARED)
    files = sorted(p for d in sorted(ALPACA.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))
    return [str(p) for p in files[::16][:20]]


# -- a loopback HTTP server, for data sources without internet ---------------------------------


class serve_folder:
    """`with serve_folder(root) as (base_url, requests):` files of `root` over http on 127.0.0.1.

    `requests` lists the paths asked for; the server thread is stopped (bounded wait) on exit.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def __enter__(self):
        import http.server
        import threading

        root, self.requests = str(self.root), []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=root, **kw)

            def log_message(self, *args):
                requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_port}/", requests

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        return False
