"""`predict --engine ray`: the labels of local prediction, one row per file, resumable output."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import RPS, requires_shared

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = requires_shared


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for the module (starting one costs seconds): its GCS address."""
    import ray

    from transferkit.deploy.ray_predict import init_ray

    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def rps_files(n: int) -> list[str]:
    """`n` rps renders, spread over the three classes and the hand models."""
    files = sorted(str(p) for p in RPS.rglob("*.png"))
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, n).round()]


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("broken")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "noise.png").write_bytes(os.urandom(2000))
    good = Path(rps_files(1)[0]).read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 3])
    return [str(folder / name) for name in ("empty.jpg", "noise.png", "cut.png")]


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    return pq.read_table(path).to_pylist()


def test_ray_gives_the_labels_of_local_predict_and_error_rows(ray_address, small_run, broken_files, tmp_path):
    from transferkit.deploy.predictor import Predictor
    from transferkit.deploy.ray_predict import predict_to_file

    _, run_dir = small_run
    files = rps_files(200)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files[100:]) + "\n# a comment\n\n", encoding="utf-8")
    output = tmp_path / "out" / "predictions.parquet"
    stats = predict_to_file(run_dir, files[:100] + [f"@{listing}"] + broken_files, output, workers=2, top_k=2)
    assert stats["files"] == stats["predicted"] == 203 and stats["errors"] == 3 and stats["done_before"] == 0
    rows = {row["path"]: row for row in read_rows(output)}
    assert len(rows) == 203 and not output.with_name(output.name + ".parts").exists()
    local = {p.path: p for p in Predictor(run_dir).predict(files, top_k=2)}
    assert [rows[f]["label"] for f in files] == [local[f].label for f in files]
    np.testing.assert_allclose([rows[f]["confidence"] for f in files], [local[f].confidence for f in files], atol=1e-4)
    np.testing.assert_allclose([rows[f]["score"] for f in files], [local[f].score for f in files], atol=1e-4)
    assert [rows[f]["unknown"] for f in files] == [local[f].unknown for f in files]
    assert all(rows[f]["error"] is None for f in files)
    assert [entry["label"] for entry in json.loads(rows[files[0]]["top_k"])] == [l for l, _ in local[files[0]].top_k]
    for path in broken_files:
        assert rows[path]["label"] is None and rows[path]["error"], rows[path]

    # a second call with more files predicts only the new ones and merges them into the same file
    more = rps_files(230)
    again = predict_to_file(run_dir, more, output, workers=1, flush_rows=8, reject=False)
    new = set(more) - set(files)
    assert again["done_before"] == len(more) - len(new) and again["predicted"] == len(new)
    paths = [row["path"] for row in read_rows(output)]
    assert len(paths) == len(set(paths)) == 203 + len(new)


def test_a_killed_run_continues_without_redoing_done_files(ray_address, small_run, tmp_path):
    from transferkit.deploy.ray_predict import predict_to_file

    _, run_dir = small_run
    files = rps_files(600)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files) + "\n", encoding="utf-8")
    output = tmp_path / "predictions.csv"
    command = [sys.executable, "-m", "transferkit", "predict", str(run_dir), f"@{listing}", "--engine", "ray",
               "--address", ray_address, "--output", str(output), "--batch-size", "8", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.is_file() and output.read_bytes().count(b"\n") > 16:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()[-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = len(read_rows(output)) if output.is_file() else 0
    assert 0 < before < len(files)

    stats = predict_to_file(run_dir, [f"@{listing}"], output, workers=1)
    paths = [row["path"] for row in read_rows(output)]
    assert len(paths) == len(set(paths)), "a file was predicted twice"
    assert set(paths) == set(files)
    assert stats["done_before"] >= before and stats["predicted"] == len(files) - stats["done_before"]
    assert stats["predicted"] <= len(files) - before


def test_bad_engine_options_say_what_is_allowed(small_run, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    _, run_dir = small_run
    image = rps_files(1)[0]
    runner = CliRunner()
    for args, message in ((["--engine", "spark"], "local or ray"),
                          (["--workers", "2"], "need --engine ray"),
                          (["--engine", "ray", "--output", str(tmp_path / "p.txt")], ".parquet or .csv"),
                          (["--engine", "ray", "--workers", "0"], "workers must be a positive integer")):
        result = runner.invoke(app, ["predict", str(run_dir), image, *args])
        assert result.exit_code == 2, result.output
        assert message in result.output, result.output
