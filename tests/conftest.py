"""Shared fixtures: real images from ../shared, real ImageNet weights, small settings."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERKIT_SHARED", REPO.parent / "shared"))
WEIGHTS_DIR = SHARED / "weights"
ALPACA = SHARED / "datasets" / "alpaca"
RPS = SHARED / "datasets" / "rps" / "train"

if not (WEIGHTS_DIR.is_dir() and ALPACA.is_dir() and RPS.is_dir()):
    raise pytest.UsageError(
        f"The tests need the shared datasets and weights at {SHARED} "
        "(set TRANSFERKIT_SHARED to their folder)."
    )

os.environ["TRANSFERKIT_WEIGHTS_DIR"] = str(WEIGHTS_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The defaults (160 px: smaller sizes cost alpaca 5-10 points; cached views; head epochs,
# which are nearly free on the cache), with stage 2 cut to 3 epochs.
FAST = dict(fine_tune_epochs=3, patience=None, verbose=0)


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def copy_subset(source: Path, dest: Path, per_class: int | None = None) -> Path:
    """Copy (the first `per_class` files of) each class folder, so tests own a writable copy."""
    for class_dir in sorted(d for d in source.iterdir() if d.is_dir()):
        target = dest / class_dir.name
        target.mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(f, target / f.name)
    return dest


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
