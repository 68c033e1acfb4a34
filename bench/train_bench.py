"""Side-by-side training benchmark: the plain Keras reference recipe vs `transferkit train`.

    python bench/train_bench.py ../shared/datasets/rps/train ../shared/datasets/alpaca

Each contender runs in its own subprocess, one after the other, on the same data
(20 % validation, seed 42): the wall time is the whole process, start to exit, and
peak memory is that process's maximum resident set. The reference is written
directly against Keras (not through transferkit): image_dataset_from_directory,
augmentation layers in the model, a frozen MobileNetV2 called with training=False,
10 head epochs with Adam 1e-4, then layers from 100 up unfrozen for 10 epochs at
1e-5, 160 px, batch 32. Its validation split is Keras's own (file order shuffled by
the seed); transferkit uses its stratified split, so the two validation sets differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("TRANSFERKIT_WEIGHTS_DIR", REPO.parent / "shared" / "weights"))
MOBILENET_V2 = WEIGHTS / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"

REFERENCE = r'''
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
data_dir, weights = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(42)
train, val = keras.utils.image_dataset_from_directory(
    data_dir, validation_split=0.2, subset="both", seed=42, image_size=(160, 160), batch_size=32)
classes = len(train.class_names)
augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
base = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights=weights)
base.trainable = False
inputs = keras.Input((160, 160, 3))
x = keras.applications.mobilenet_v2.preprocess_input(augment(inputs))
x = base(x, training=False)
x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
outputs = keras.layers.Dense(1 if classes == 2 else classes, activation=None)(x)
model = keras.Model(inputs, outputs)
loss = (keras.losses.BinaryCrossentropy(from_logits=True) if classes == 2
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
metric = keras.metrics.BinaryAccuracy(threshold=0.0) if classes == 2 else keras.metrics.SparseCategoricalAccuracy()
model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=[metric])
first = model.fit(train, validation_data=val, epochs=10, verbose=2)
base.trainable = True
for layer in base.layers[:100]:
    layer.trainable = False
metric = keras.metrics.BinaryAccuracy(threshold=0.0) if classes == 2 else keras.metrics.SparseCategoricalAccuracy()
model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss, metrics=[metric])
second = model.fit(train, validation_data=val, epochs=20, initial_epoch=10, verbose=2)
key = [k for k in second.history if k.startswith("val_") and "acc" in k][0]
if len(sys.argv) > 3:  # a test folder: scored once, after training
    test = keras.utils.image_dataset_from_directory(sys.argv[3], image_size=(160, 160), batch_size=32, shuffle=False)
    print(json.dumps({"test_accuracy": model.evaluate(test, verbose=0, return_dict=True)[key[4:]]}))
print(json.dumps({"val_accuracy_stage1": first.history[key][-1], "val_accuracy": second.history[key][-1],
                  "train_images": sum(len(y) for _, y in train.unbatch().batch(4096)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

TRANSFERKIT = r'''
import json, resource, sys
from transferkit.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def run(code: str, args: list[str]) -> dict:
    """Run a Python child; return its JSON lines merged, plus its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "TRANSFERKIT_WEIGHTS_DIR": str(WEIGHTS)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    merged = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            merged.update(json.loads(line))
    return {**merged, "wall_seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/transferkit-bench"))
    parser.add_argument("--skip-reference", action="store_true", help="time only transferkit")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        out = args.out / dataset.name
        ours = run(TRANSFERKIT, ["train", str(dataset), "--out", str(out), "--overwrite", "--json"])
        reference = None if args.skip_reference else run(REFERENCE, [str(dataset), str(MOBILENET_V2)])
        rows.append((dataset, reference, ours))
        print(json.dumps({"dataset": str(dataset), "reference": reference, "transferkit": ours}), flush=True)

    print("\n| dataset | recipe | wall s | val acc (head) | val acc (final) | peak RSS MB | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for dataset, reference, ours in rows:
        for name, result in (("Keras reference", reference), ("transferkit defaults", ours)):
            if result is None:
                continue
            speedup = f"{reference['wall_seconds'] / ours['wall_seconds']:.1f}x" if reference and result is ours else ""
            print(f"| {dataset.name} | {name} | {result['wall_seconds']:.0f} | {result['val_accuracy_stage1']:.3f} "
                  f"| {result['val_accuracy']:.3f} | {result['peak_rss_mb']:.0f} | {speedup} |")


if __name__ == "__main__":
    main()
