"""`transferkit audit` on real rps images with a few files moved into the wrong folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _checksums(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def noisy_rps(rps_tiny, tmp_path_factory) -> tuple[Path, set]:
    """The tiny rps copy with 2 files of each class moved to the next class's folder."""
    root = tmp_path_factory.mktemp("noisy") / "rps"
    shutil.copytree(rps_tiny, root)
    classes = sorted(d.name for d in root.iterdir())
    moved = set()
    for i, name in enumerate(classes):
        target = root / classes[(i + 1) % len(classes)]
        for f in sorted((root / name).iterdir())[5:7]:
            shutil.move(f, target / f.name)
            moved.add(str(target / f.name))
    return root, moved


def test_moved_files_rank_near_the_top(noisy_rps, tmp_path):
    from transferkit.analysis.audit import audit_folder, write_audit

    root, moved = noisy_rps
    before = _checksums(root)
    result = audit_folder(root, folds=3)
    top = [s.path for s in result.suspects[: 2 * len(moved)]]
    assert len(moved & set(top)) >= len(moved) - 1, (moved, result.suspects[:10])
    by_path = {s.path: s for s in result.suspects}
    for path in moved & set(by_path):
        assert by_path[path].suggested == Path(path).name.split("0")[0].rstrip("0123456789")  # its real class
    files = write_audit(result, tmp_path / "audit")
    assert Path(files["csv"]).read_text().startswith("path,given,suggested,score")
    assert Path(files["gallery"]).stat().st_size > 1000
    assert _checksums(root) == before  # nothing moved or written


def test_audit_cli_json_and_bad_folds(noisy_rps, tmp_path):
    root, moved = noisy_rps
    command = [sys.executable, "-m", "transferkit", "audit", str(root), "--folds", "3", "--json",
               "--out", str(tmp_path / "a")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    suspects = json.loads(result.stdout)["suspects"]
    assert set(suspects[0]) == {"path", "given", "suggested", "score"}
    assert [s["score"] for s in suspects] == sorted((s["score"] for s in suspects), reverse=True)
    assert suspects[0]["path"] in moved
    bad = subprocess.run([*command[:5], "--folds", "40"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "fewer images than --folds 40" in bad.stdout + bad.stderr
