"""Test accuracy of transferkit against a linear probe (and the plain Keras recipe) on held-out images.

    python bench/accuracy_bench.py --shared ../shared
    python bench/accuracy_bench.py --shared ../shared --sets rps-hands --variant today='{}' \
        --variant size224='{"image_size": 224}' --recipe

Sets (each a train folder and a test folder of symlinks, made under --work):
- rps-hands: the shared renders, hands 01-05 of each class for training, hands 06-07 for testing
  (the shift the official test set measures: new hands);
- alpaca-K: the shared alpaca photos, a stratified 80/20 split drawn with seed K (5 splits);
- imagenette: the shared imagenette, a stratified 80/20 split (in-domain for ImageNet: a check
  that nothing gets worse at scale).
transferkit trains on the train folder only (its own validation split taken from it) and is
scored once on the test folder. The probe is the simplest strong baseline a user could write:
frozen ImageNet MobileNetV2, average-pooled features of the centre square, standardised, and a
logistic regression whose L2 strength is chosen by 5-fold cross-validation on the train folder;
no augmentation, no fine-tuning. The recipe (`--recipe`) is bench/train_bench.py's plain Keras
script, trained on the same train folder and scored on the same test folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERKIT_SHARED", REPO.parent / "shared"))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def _link_folder(root: Path, files: dict[str, list[Path]]) -> Path:
    """root/<class>/<file> symlinks (made once; reused when already there)."""
    if not root.exists():
        tmp = root.with_name(root.name + ".tmp")
        for label, paths in files.items():
            (tmp / label).mkdir(parents=True, exist_ok=True)
            for path in paths:
                (tmp / label / path.name).symlink_to(path.resolve())
        tmp.rename(root)
    return root


def _class_files(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for d in sorted(folder.iterdir()) if d.is_dir()}


def rps_hands(shared: Path, work: Path) -> tuple[Path, Path]:
    """The first 5 hand models of each class to train, the last 2 to test. A file name is the hand's
    series and a pose counter (rock01-000.png; some series are named e.g. rock05ck01 or testscissors01)."""
    train, test = {}, {}
    for label, paths in _class_files(shared / "datasets" / "rps" / "train").items():
        series = lambda p: re.sub(r"-\d+$", "", p.stem)  # noqa: E731
        hands = sorted({series(p) for p in paths})
        train[label] = [p for p in paths if series(p) in hands[:5]]
        test[label] = [p for p in paths if series(p) in hands[5:]]
    return _link_folder(work / "rps-hands" / "train", train), _link_folder(work / "rps-hands" / "test", test)


def stratified(folder: Path, name: str, seed: int, work: Path, test_fraction: float = 0.2) -> tuple[Path, Path]:
    """A stratified split of `folder` drawn with `seed`: test_fraction of each class to test."""
    train, test = {}, {}
    for label, paths in _class_files(folder).items():
        shuffled = list(paths)
        random.Random(seed).shuffle(shuffled)
        cut = round(len(shuffled) * test_fraction)
        test[label], train[label] = shuffled[:cut], shuffled[cut:]
    return _link_folder(work / name / "train", train), _link_folder(work / name / "test", test)


def make_sets(names: list[str], shared: Path, work: Path, alpaca_splits: int) -> list[tuple[str, Path, Path]]:
    sets = []
    for name in names:
        if name == "rps-hands":
            sets.append((name, *rps_hands(shared, work)))
        elif name == "alpaca":
            sets += [(f"alpaca-{k}", *stratified(shared / "datasets" / "alpaca", f"alpaca-{k}", k, work))
                     for k in range(alpaca_splits)]
        elif name == "imagenette":
            sets.append((name, *stratified(shared / "datasets" / "imagenette" / "train", name, 0, work)))
        else:
            raise SystemExit(f"unknown set {name!r}: choose rps-hands, alpaca, imagenette")
    return sets


def _features(folders: list[Path], size: int, classes: list[str], mirrored: bool = False):
    """[(pooled MobileNetV2 features, labels)] of every image under each folder, centre square at `size`;
    one model (and one checked conversion) for all of them. `mirrored`: [(features, features of the
    left-right mirrored images, labels)]."""
    import keras
    import numpy as np

    from transferkit.data.images import decoded_batches
    from transferkit.modeling.forward import fast_forward

    weights = Path(os.environ.get("TRANSFERKIT_WEIGHTS_DIR", SHARED / "weights"))
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, pooling="avg",
                                          weights=str(weights / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"))
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, base(keras.applications.mobilenet_v2.preprocess_input(inputs)))
    forward, results = None, []
    for folder in folders:
        files = _class_files(folder)
        paths = [str(p) for label in classes for p in files[label]]
        labels = np.array([i for i, label in enumerate(classes) for _ in files[label]])
        batches = [np.asarray(images) for images, _ in decoded_batches(paths, size, 32)]
        forward = forward or fast_forward(model, batches[0])
        views = [batches] + ([[images[:, :, ::-1].copy() for images in batches]] if mirrored else [])
        results.append((*(np.concatenate([forward(images)[0] for images in view]) for view in views), labels))
    return results


def probe_model(seed: int = 0):
    """The linear probe, unfitted: standardised features, logistic regression with 5-fold CV over the L2 strength."""
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 0, 5), cv=5, max_iter=2000,
                                                                random_state=seed))


def probe(train_dir: Path, test_dir: Path, size: int, seed: int = 0) -> dict:
    """The probe fitted on the frozen features of the whole train folder, scored on the test folder."""
    start = time.perf_counter()
    classes = sorted(_class_files(train_dir))
    (x_train, y_train), (x_test, y_test) = _features([train_dir, test_dir], size, classes)
    model = probe_model(seed).fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())
    return {"test_accuracy": accuracy, "seconds": round(time.perf_counter() - start, 1)}


def transferkit(train_dir: Path, test_dir: Path, settings: dict, cache_dir: str) -> dict:
    from transferkit import ImageClassifier

    start = time.perf_counter()
    classifier = ImageClassifier(verbose=0, cache_dir=cache_dir, **settings).fit(train_dir)
    fitted = time.perf_counter() - start
    r = classifier.results_
    metrics = classifier.evaluate(test_dir)
    return {"test_accuracy": metrics["accuracy"], "val_accuracy": r["val_accuracy"],
            "val_accuracy_stage1": r["val_accuracy_stage1"], "best_epoch": r["best_epoch"],
            "seconds": round(fitted, 1)}


def recipe(train_dir: Path, test_dir: Path) -> dict:
    import train_bench

    result = train_bench.run(train_bench.REFERENCE, [str(train_dir), str(train_bench.MOBILENET_V2), str(test_dir)])
    return {"test_accuracy": result["test_accuracy"], "seconds": round(result["wall_seconds"], 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--sets", nargs="+", default=["rps-hands", "alpaca", "imagenette"])
    parser.add_argument("--alpaca-splits", type=int, default=5)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=JSON of ImageClassifier settings (default: one 'defaults' = {})")
    parser.add_argument("--probe-sizes", type=int, nargs="*", default=[224])
    parser.add_argument("--recipe", nargs="*", default=[], metavar="SET",
                        help="also run the plain Keras recipe on these sets (slow; e.g. rps-hands)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferkit-accuracy"))
    parser.add_argument("--cache-dir", default=None,
                        help="reuse activation caches across runs (default: none, so every run's seconds include its "
                             "own backbone passes)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFERKIT_WEIGHTS_DIR", str(args.shared / "weights"))
    variants = dict(v.split("=", 1) for v in args.variant) or {"defaults": "{}"}
    variants = {name: json.loads(value) for name, value in variants.items()}

    rows: dict[str, dict[str, dict]] = {}
    for name, train_dir, test_dir in make_sets(args.sets, args.shared, args.work, args.alpaca_splits):
        row = rows.setdefault(name, {})
        for size in args.probe_sizes:
            row[f"probe {size}"] = probe(train_dir, test_dir, size)
        for variant, settings in variants.items():
            row[variant] = transferkit(train_dir, test_dir, settings, args.cache_dir)
        if name in args.recipe or name.split("-")[0] in args.recipe:
            row["recipe"] = recipe(train_dir, test_dir)
        print(json.dumps({"set": name, **row}), flush=True)

    contenders = list(dict.fromkeys(c for row in rows.values() for c in row))
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(name.split("-")[0] if name.startswith("alpaca") else name, []).append(name)
    print("\nTest accuracy (seconds to train); alpaca: mean of its splits\n")
    print("| set | " + " | ".join(contenders) + " |")
    print("|---|" + "---|" * len(contenders))
    for group, names in groups.items():
        cells = []
        for contender in contenders:
            if any(contender not in rows[n] for n in names):
                cells.append("")
                continue
            accuracy = statistics.mean(rows[n][contender]["test_accuracy"] for n in names)
            seconds = statistics.mean(rows[n][contender]["seconds"] for n in names)
            cells.append(f"{accuracy:.3f} ({seconds:.0f} s)")
        print(f"| {group}{f' x{len(names)}' if len(names) > 1 else ''} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
