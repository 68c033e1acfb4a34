"""Open-world figures: unknown rejection (far and near unknowns) and the label audit, in one run.

    python bench/openworld_bench.py --shared ../shared

Far unknowns: a model trained on a subset of rock-paper-scissors sees alpaca photos.
Near unknowns: a model trained on paper and rock sees scissors. For every candidate
unknown score: AUROC (in-distribution = held-out rps images of the trained classes,
never trained on) and FPR@95TPR (share of unknowns accepted at the threshold that
accepts 95 % of in-distribution images), plus the share of unknowns the run's own stored
threshold (fitted on its validation split) accepts. Audit: an rps copy with 5 % of its
files moved to a wrong class folder; precision and recall of the top N = moved files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def copy_spread(source: Path, dest: Path, classes, per_class: int, offset: int, stride: int) -> Path:
    for name in classes:
        (dest / name).mkdir(parents=True)
        for f in sorted((source / name).iterdir())[offset::stride][:per_class]:
            shutil.copy2(f, dest / name / f.name)
    return dest


def auroc_fpr(id_scores, ood_scores) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    auroc = roc_auc_score(y, np.r_[id_scores, ood_scores])
    threshold = np.quantile(id_scores, 0.95, method="higher")
    return float(auroc), float(np.mean(np.asarray(ood_scores) <= threshold))


def open_set(train_dir: Path, id_paths, ood_paths, out: Path, settings: dict) -> dict:
    from transferkit import ImageClassifier
    from transferkit.analysis.ood import FeatureSet, features_of, fit_detector
    from transferkit.runs.trained import TrainedModel

    started = time.perf_counter()
    classifier = ImageClassifier(**settings).fit(train_dir, out=out)
    trained = TrainedModel.load(out)
    train = features_of(trained, trained.split("train"))
    id_f, id_z = trained.predict_features(id_paths)
    ood_f, ood_z = trained.predict_features(ood_paths)
    rows = {}
    stored = trained.ood
    for method, k in (("knn", 1), ("knn", 5), ("mahalanobis", 1), ("energy", 1), ("msp", 1)):
        trained.ood = {**stored, **fit_detector(FeatureSet(train.features, train.logits, train.labels), method, k)}
        auroc, fpr = auroc_fpr(trained.unknown_scores(id_f, id_z), trained.unknown_scores(ood_f, ood_z))
        rows[f"{method}" + (f" k={k}" if method == "knn" else "")] = {"auroc": round(auroc, 4), "fpr95": round(fpr, 4)}
    trained.ood = stored
    threshold = trained.unknown_threshold()
    return {
        "train_images": classifier.results_["train_images"], "val_accuracy": classifier.results_["val_accuracy"],
        "in_distribution_images": len(id_paths), "unknown_images": len(ood_paths),
        "temperature": trained.temperature, "scores": rows,
        "run_threshold": {"method": stored["method"],
                          "unknowns_accepted": float(np.mean(trained.unknown_scores(ood_f, ood_z) <= threshold)),
                          "in_distribution_accepted": float(np.mean(trained.unknown_scores(id_f, id_z) <= threshold))},
        "seconds": round(time.perf_counter() - started, 1),
    }


def audit_bench(rps: Path, root: Path, per_class: int, noise: float, seed: int) -> dict:
    from transferkit.analysis.audit import audit_folder

    classes = ["paper", "rock", "scissors"]
    data_dir = copy_spread(rps, root / "audit", classes, per_class, 3, 840 // per_class)
    rng = np.random.default_rng(seed)
    files = sorted(p for c in classes for p in (data_dir / c).iterdir())
    moved = set()
    for i in rng.choice(len(files), int(round(noise * len(files))), replace=False):
        f = files[i]
        wrong = rng.choice([c for c in classes if c != f.parent.name])
        shutil.move(f, data_dir / wrong / f.name)
        moved.add(str(data_dir / wrong / f.name))
    started = time.perf_counter()
    result = audit_folder(data_dir, folds=5)
    n = len(moved)
    top = {s.path for s in result.suspects[:n]}
    flagged = {s.path for s in result.suspects}
    return {"images": len(files), "moved": n, "flagged": len(flagged),
            f"precision_at_{n}": len(top & moved) / n, f"recall_at_{n}": len(top & moved) / n,
            "precision_flagged": len(flagged & moved) / max(1, len(flagged)), "recall_flagged": len(flagged & moved) / n,
            "out_of_fold_accuracy": result.to_dict()["out_of_fold_accuracy"],
            "seconds": round(time.perf_counter() - started, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--per-class", type=int, default=40, help="rps training images per class")
    parser.add_argument("--audit-per-class", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFERKIT_WEIGHTS_DIR", str(args.shared / "weights"))
    rps, alpaca = args.shared / "datasets" / "rps" / "train", args.shared / "datasets" / "alpaca"
    settings = dict(fine_tune_epochs=2, epochs=8, patience=None, verbose=0, write_report=False)
    root = Path(tempfile.mkdtemp(prefix="openworld-bench-"))
    try:
        classes = ["paper", "rock", "scissors"]
        train = copy_spread(rps, root / "train3", classes, args.per_class, 0, 840 // args.per_class)
        held_out = [str(p) for c in classes for p in sorted((rps / c).iterdir())[11::42][:20]]  # never trained on
        photos = [str(p) for d in sorted(alpaca.iterdir()) if d.is_dir() for p in sorted(d.iterdir())][::3][:100]
        results = {"far (rps -> alpaca photos)": open_set(train, held_out, photos, root / "run3", settings)}
        near_train = copy_spread(rps, root / "train2", ["paper", "rock"], args.per_class, 0, 840 // args.per_class)
        near_id = [p for p in held_out if "/scissors/" not in p]
        scissors = [str(p) for p in sorted((rps / "scissors").iterdir())[5::14][:60]]
        results["near (paper+rock -> scissors)"] = open_set(near_train, near_id, scissors, root / "run2", settings)
        results["audit (rps, 5 % moved)"] = audit_bench(rps, root, args.audit_per_class, 0.05, 0)
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
