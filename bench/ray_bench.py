"""Ray prediction throughput: plain `transferkit predict` vs `--engine ray` with 1 and 2 workers.

    python bench/ray_bench.py RUN_DIR [--data ../shared/datasets/rps/train] [--limit 2520] [--no-reject]

Each measurement is a fresh process on the same files (a listing file). "predict img/s" is
images over the prediction phase as the command reports it (plain: decoding + inference;
Ray: from the first batch handed to Ray Data to the last row written, actors starting
included); "end-to-end" is images over the whole process's wall time, so the difference is the
fixed overhead (Python and TensorFlow imports, Ray start, actor start, model loading). The
projection for 1M and 100M images scales the measured one-worker throughput by the number of
machines, one worker per machine like this one, plus the measured overhead once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "rps" / "train"
THROUGHPUT = re.compile(r"(\d+) image\(s\) in ([\d.]+) s: ([\d.]+) images/s \((.*)\)")


def run(command: list[str]) -> tuple[float, str, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout, result.stderr


def plain(run_dir: str, listing: Path, files: list[str], reject: bool) -> dict:
    wall, _, stderr = run([sys.executable, "-m", "transferkit", "predict", run_dir, *files, "--csv",
                           *([] if reject else ["--no-reject"])])
    match = THROUGHPUT.search(stderr)
    images, seconds = int(match.group(1)), float(match.group(2))
    return {"method": "plain `transferkit predict`", "images": images, "seconds": seconds, "wall": wall,
            "note": match.group(4)}


def on_ray(run_dir: str, listing: Path, workers: int, reject: bool, folder: Path) -> dict:
    output = folder / f"ray{workers}.parquet"
    wall, stdout, _ = run([sys.executable, "-m", "transferkit", "predict", run_dir, f"@{listing}", "--engine", "ray",
                           "--workers", str(workers), "--output", str(output), "--json",
                           *([] if reject else ["--no-reject"])])
    stats = json.loads(stdout)
    return {"method": f"`--engine ray --workers {workers}`", "images": stats["predicted"],
            "seconds": stats["seconds"], "wall": wall, "note": f"{stats['runtime']}, local Ray, num_cpus=2"}


def projection(per_worker: float, overhead: float) -> list[str]:
    lines = ["| images | machines | hours |", "|---|---|---|"]
    for images in (1_000_000, 100_000_000):
        for machines in (1, 10, 100):
            hours = (images / (per_worker * machines) + overhead) / 3600
            lines.append(f"| {images:,} | {machines} | {hours:,.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--limit", type=int, default=2520)
    parser.add_argument("--no-reject", dest="reject", action="store_false",
                        help="plain labels (the fastest runtime) instead of labels with unknown scores (Keras)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    files = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    files = files[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        listing = folder / "files.txt"
        listing.write_text("\n".join(files) + "\n", encoding="utf-8")
        rows = [plain(args.run_dir, listing, files, args.reject)]
        rows += [on_ray(args.run_dir, listing, workers, args.reject, folder) for workers in (1, 2)]
    print(f"{len(files)} images, {'with unknown scores' if args.reject else '--no-reject'}, {os.cpu_count()} CPU(s)\n")
    print("| method | predict img/s | end-to-end img/s | overhead s | runtime |")
    print("|---|---|---|---|---|")
    for row in rows:
        overhead = row["wall"] - row["seconds"]
        print(f"| {row['method']} | {row['images'] / row['seconds']:.1f} | {row['images'] / row['wall']:.1f} "
              f"| {overhead:.1f} | {row['note']} |")
    one = rows[1]
    per_worker = one["images"] / one["seconds"]
    print(f"\nProjection with {per_worker:.1f} images/s per worker (one 2-core worker per machine) "
          f"and {one['wall'] - one['seconds']:.0f} s start-up:\n")
    print("\n".join(projection(per_worker, one["wall"] - one["seconds"])))
    print("\n" + json.dumps(rows))


if __name__ == "__main__":
    main()
