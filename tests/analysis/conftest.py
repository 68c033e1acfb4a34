"""Fixtures of the open-world tests: a tiny rock-paper-scissors copy and one run trained on it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("TRANSFERKIT_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
RPS = SHARED / "datasets" / "rps" / "train"
ALPACA = SHARED / "datasets" / "alpaca"
TINY_RUN = dict(fine_tune_epochs=1, epochs=3, patience=None, verbose=0, write_report=False)


def copy_spread(source: Path, dest: Path, per_class: int, stride: int) -> Path:
    """Every `stride`-th file of each class (so several hand models), `per_class` at most."""
    if not source.is_dir():
        pytest.skip(f"shared data missing: {source}")
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
        pytest.skip(f"shared data missing: {ALPACA}")
    files = sorted(p for d in sorted(ALPACA.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))
    return [str(p) for p in files[::16][:20]]
