"""Adding a class with `--from` vs training from scratch on all classes.

    python bench/update_bench.py ../shared/datasets/rps/train --image-size 128

The rock-paper-scissors images are renders of 7 hand models per class (file names like
rock01-000.png: class, hand, image; scissors has scissors01-04 and testscissors01-03).
Per class, the first 5 hands (in file-name order) are the training folder, the 6th the
validation folder and the 7th the test folder, so every model is scored on the same
held-out images of hands it never saw. Three runs, each `transferkit train` in its own
process, one after the other:

- parent: the first classes but one (paper, rock), from ImageNet weights;
- update: all classes, `--from` the parent (the class added: scissors);
- scratch: all classes, from ImageNet weights.

`--repeat N` runs update and scratch N times, alternately, with seeds 42, 43, ... (split
folders are fixed, so the seed moves initialisation, augmentation and batch order). Seconds are each process's whole wall time (start-up, scan, caching, both stages, the
calibration pass, saving); the comparison the issue asks about is update vs scratch.
`--child-args` runs more update variants (e.g. "--fine-tune-epochs 0").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": slice(0, 5), "val": slice(5, 6), "test": slice(6, 7)}  # hands, in file-name order


def hand(path: Path) -> str:
    return path.name.split("-")[0]


def make_layout(source: Path, dest: Path, classes: list[str], per_hand: int | None) -> Path:
    """dest/{train,val,test}/<class>/: the files of each split's hands (the first `per_hand` of each hand)."""
    for split, hands in SPLITS.items():
        for name in classes:
            folder = dest / split / name
            folder.mkdir(parents=True)
            for h in sorted({hand(p) for p in (source / name).iterdir()})[hands]:
                files = sorted(p for p in (source / name).iterdir() if hand(p) == h)[:per_hand]
                for f in files:
                    try:
                        os.link(f, folder / f.name)
                    except OSError:
                        shutil.copy2(f, folder / f.name)
    return dest


def train(name: str, data_dir: Path, out: Path, args: list[str]) -> dict:
    command = [sys.executable, "-m", "transferkit", "train", str(data_dir), "--out", str(out), "--no-report",
               "--json", *args]
    print("$", " ".join(shlex.quote(c) for c in command[1:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row = {"run": name, "test_accuracy": result.get("test_accuracy"), "val_accuracy": result.get("val_accuracy"),
           "train_images": result["train_images"], "process_seconds": round(wall, 1), "seconds": result["seconds"],
           "stage_seconds": result.get("stage_seconds"), "classes": result["classes"]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="rps/train (class folders of files like rock01-000.png)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--per-hand", type=int, default=None, help="at most this many images per hand and class")
    parser.add_argument("--added", default="scissors", help="the class the update adds")
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferkit-update-bench"))
    parser.add_argument("--child-args", action="append", default=[], help="extra update variant (CLI options)")
    parser.add_argument("--repeat", type=int, default=1, help="run update and scratch this many times, alternately "
                        "(the machine's load moves the seconds)")
    args = parser.parse_args()
    classes = sorted(d.name for d in args.data.iterdir() if d.is_dir())
    shutil.rmtree(args.work, ignore_errors=True)
    old = make_layout(args.data, args.work / "old", [c for c in classes if c != args.added], args.per_hand)
    full = make_layout(args.data, args.work / "all", classes, args.per_hand)
    size = ["--image-size", str(args.image_size)]
    runs = args.work / "runs"
    rows = [train("parent", old, runs / "parent", size)]
    for repeat in range(args.repeat):
        seed = ["--seed", str(42 + repeat)]
        for i, extra in enumerate([""] + args.child_args):
            rows.append(train(f"update{i or ''} {extra}".strip() + f" seed {seed[1]}", full, runs / f"update{i}-{repeat}",
                              ["--from", str(runs / "parent"), *seed, *shlex.split(extra)]))
        rows.append(train(f"scratch seed {seed[1]}", full, runs / f"scratch-{repeat}", [*size, *seed]))
    print(f"\n{'run':28} {'classes':>7} {'train':>6} {'test acc':>9} {'val acc':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['run']:28} {len(r['classes']):7d} {r['train_images']:6d} {r['test_accuracy']:9.4f} "
              f"{r['val_accuracy']:8.4f} {r['process_seconds']:8.1f}")
    for kind in ("update", "scratch"):
        picked = [r for r in rows if r["run"].startswith(kind + " seed")]
        print(f"{kind}: mean test accuracy {sum(r['test_accuracy'] for r in picked) / len(picked):.4f}, "
              f"mean seconds {sum(r['process_seconds'] for r in picked) / len(picked):.1f} over {len(picked)} run(s)")
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
