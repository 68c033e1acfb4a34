"""Head variants on frozen features: what the solved head could still change, against the probe.

    python bench/head_bench.py --shared ../shared
    python bench/head_bench.py --shared ../shared --sets rps-hands --draws 10

On the sets of bench/accuracy_bench.py (made there), pooled 224 px MobileNetV2 features of every
train and test image are computed once (with their left-right mirror images); each variant is then
fitted on them several times, each time with a different stratified 20 % of the train folder held
out as transferkit's validation split, and scored on the test folder. Mean test accuracy per set
(alpaca: mean of its splits). Variants:
- probe: accuracy_bench.py's probe (no validation held out, L2 strength by 5-fold CV on the whole train folder);
- default: transferkit's solved head (`modeling.linear_head`) on the 80 % kept for training;
- refit: the default's C, fitted again on training + validation images;
- mirror-tta: the default head, probabilities averaged over each test image and its mirror image;
- mirror-views: trained on each image and its mirror image (the two kept in one CV fold);
- series-cv: CV folds by file-name series (`--group-by auto`'s series; sets without series: skipped);
- sqrt: the signed square root of the features (power normalisation), then the default head.
Any gap to the probe smaller than the spread between draws is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import warnings
from pathlib import Path

import numpy as np

from accuracy_bench import SHARED, _class_files, _features, make_sets, probe_model


def _fit(x, y, seed: int, C: float | None = None, groups=None):
    """`fit_linear_head`'s recipe (standardised, L2 strength by CV over its grid) with what the product does not
    take: a fixed C, or CV folds by groups. Returns (probabilities function, C)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from transferkit.modeling.linear_head import C_GRID, CV_FOLDS, MAX_ITER

    scaler = StandardScaler().fit(x)
    folds = (StratifiedGroupKFold(CV_FOLDS, shuffle=True, random_state=seed).split(x, y, groups) if groups is not None
             else StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(x, y))
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", FutureWarning)
        model = (LogisticRegression(C=C, max_iter=MAX_ITER) if C is not None else
                 LogisticRegressionCV(Cs=list(C_GRID), cv=list(folds), scoring="neg_log_loss", max_iter=MAX_ITER))
        model.fit(scaler.transform(x), y)
    return lambda z: model.predict_proba(scaler.transform(z)), float(np.ravel(getattr(model, "C_", [C]))[0])


def _series(train_dir: Path, classes: list[str], labels: np.ndarray) -> np.ndarray | None:
    """A group id per train image: its file-name series where `--group-by auto` finds them, else None."""
    from transferkit.data.split import name_groups

    files = _class_files(train_dir)
    paths = [str(p) for label in classes for p in files[label]]
    groups = name_groups(paths, labels, "auto")
    if not groups:
        return None
    of = {path: i for i, members in enumerate(groups) for path in members}
    return np.array([of.get(path, len(groups) + i) for i, path in enumerate(paths)])


def run_set(train_dir: Path, test_dir: Path, draws: int) -> tuple[dict[str, list[float]], list[float]]:
    """({variant: test accuracy per draw}, the default head's C per draw)."""
    from sklearn.model_selection import train_test_split

    from transferkit.modeling.linear_head import fit_linear_head
    from transferkit.modeling.openset import softmax, two_class_logits

    classes = sorted(_class_files(train_dir))
    (x, mx, y), (xt, mxt, yt) = _features([train_dir, test_dir], 224, classes, mirrored=True)
    series = _series(train_dir, classes, y)
    score = lambda p: float((p.argmax(1) == yt).mean())  # noqa: E731
    signed_sqrt = lambda a: np.sign(a) * np.sqrt(np.abs(a))  # noqa: E731
    rows: dict[str, list[float]] = {"probe": [score(probe_model().fit(x, y).predict_proba(xt))]}
    chosen: list[float] = []  # the default head's C per draw
    for draw in range(draws):
        kept, _ = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=draw)
        head = fit_linear_head(x[kept], y[kept], len(classes), seed=draw)
        chosen.append(head.C)
        probabilities = lambda z, h=head: softmax(two_class_logits(z @ h.kernel + h.bias))  # noqa: E731
        sqrt_head = lambda: fit_linear_head(signed_sqrt(x[kept]), y[kept], len(classes), seed=draw)  # noqa: E731
        variants = {
            "default": lambda: probabilities(xt),
            "refit": lambda: _fit(x, y, draw, C=head.C)[0](xt),
            "mirror-tta": lambda: probabilities(xt) + probabilities(mxt),
            "mirror-views": lambda: _fit(np.concatenate([x[kept], mx[kept]]), np.tile(y[kept], 2), draw,
                                         groups=np.tile(kept if series is None else series[kept], 2))[0](xt),
            "series-cv": (lambda: _fit(x[kept], y[kept], draw, groups=series[kept])[0](xt)) if series is not None
            else None,
            "sqrt": lambda: probabilities(signed_sqrt(xt), sqrt_head()),
        }
        for name, predict in variants.items():
            if predict is not None:
                rows.setdefault(name, []).append(score(predict()))
    return rows, chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--sets", nargs="+", default=["rps-hands", "alpaca", "imagenette"])
    parser.add_argument("--alpaca-splits", type=int, default=5)
    parser.add_argument("--draws", type=int, default=5, help="held-out validation draws per set")
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferkit-accuracy"))
    args = parser.parse_args()
    os.environ.setdefault("TRANSFERKIT_WEIGHTS_DIR", str(args.shared / "weights"))
    groups: dict[str, list[dict]] = {}
    for name, train_dir, test_dir in make_sets(args.sets, args.shared, args.work, args.alpaca_splits):
        rows, chosen = run_set(train_dir, test_dir, args.draws)
        print(json.dumps({"set": name, **rows, "default C": chosen}), flush=True)
        groups.setdefault(name.split("-")[0] if name.startswith("alpaca") else name, []).append(rows)
    variants = list(dict.fromkeys(v for rows in groups.values() for r in rows for v in r))
    print(f"\nMean test accuracy ({args.draws} validation draws; in brackets: lowest-highest draw)\n")
    print("| set | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for group, sets in groups.items():
        cells = []
        for variant in variants:
            if any(variant not in rows for rows in sets):
                cells.append("")
                continue
            per_draw = [statistics.mean(draws) for draws in zip(*(rows[variant] for rows in sets))]
            spread = f" ({min(per_draw):.3f}-{max(per_draw):.3f})" if len(per_draw) > 1 else ""
            cells.append(f"{statistics.mean(per_draw):.3f}{spread}")
        print(f"| {group}{f' x{len(sets)}' if len(sets) > 1 else ''} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
