"""Validation accuracy of transferkit's defaults over several seeds (= several splits).

    python bench/accuracy_bench.py ../shared/datasets/alpaca --seeds 42 1 2 3 4 --augment standard light

A 65-image validation set moves by about 3 points from one split to the next, so a
single figure says little; this prints each run and the mean and spread per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_WEIGHTS_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "weights"))


def main():
    from transferkit import ImageClassifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--augment", nargs="+", default=["standard"])
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--cache-dir", default="/tmp/transferkit-bench-cache")
    args = parser.parse_args()

    summary = {}
    for augment in args.augment:
        finals, heads = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            classifier = ImageClassifier(augment=augment, seed=seed, image_size=args.image_size, verbose=0,
                                         cache_dir=args.cache_dir).fit(args.data_dir)
            r = classifier.results_
            finals.append(r["val_accuracy"])
            heads.append(r["val_accuracy_stage1"])
            print(json.dumps({"augment": augment, "seed": seed, "val_images": r["val_images"],
                              "val_accuracy_stage1": round(r["val_accuracy_stage1"], 4),
                              "val_accuracy": round(r["val_accuracy"], 4), "best_epoch": r["best_epoch"],
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        summary[augment] = (heads, finals)

    print("\n| augment | head only (mean ± sd) | final (mean ± sd) | runs |")
    print("|---|---|---|---|")
    for augment, (heads, finals) in summary.items():
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"| {augment} | {statistics.mean(heads):.3f} ± {sd(heads):.3f} "
              f"| {statistics.mean(finals):.3f} ± {sd(finals):.3f} | {len(finals)} |")


if __name__ == "__main__":
    main()
