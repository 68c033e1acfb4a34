"""How should images be brought to the square input size? A linear probe answers quickly.

    python bench/resize_probe.py ../shared/datasets/alpaca --seeds 42 1 2 3 4

Frozen MobileNetV2 features (160 px, shared ImageNet weights) of every image, resized
three ways: squashed to the square, centre-cropped (shorter side to the size, the
longer cropped: what ImageNet models saw in training) and padded. A logistic
regression trained on each (with horizontal flips) is scored on transferkit's
validation split for several seeds. This is what chose centre-cropping in
`data.load_image`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
WEIGHTS = Path(os.environ.get("TRANSFERKIT_WEIGHTS_DIR", Path(__file__).resolve().parents[2] / "shared" / "weights"))


def load(path, mode: str, size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        if mode == "crop":
            image = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
        elif mode == "pad":
            image = ImageOps.pad(image, (size, size), Image.Resampling.BILINEAR, color=(124, 116, 104))
        else:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, np.float32)


def main():
    import keras
    from sklearn.linear_model import LogisticRegression

    from transferkit import data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()

    files = data.list_class_folders(args.data_dir)
    labels = np.asarray(files.labels)
    base = keras.applications.MobileNetV2(
        include_top=False, pooling="avg", input_shape=(args.size, args.size, 3),
        weights=str(WEIGHTS / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"),
    )
    preprocess = keras.applications.mobilenet_v2.preprocess_input
    print("| resize | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for mode in ("squash", "crop", "pad"):
        images = np.stack([load(p, mode, args.size) for p in files.paths])
        features = base.predict(preprocess(images.copy()), verbose=0)
        flipped = base.predict(preprocess(images[:, :, ::-1].copy()), verbose=0)
        scores = []
        for seed in args.seeds:
            train, val, _ = data.stratified_split(files, 0.2, seed, root=args.data_dir)
            index = {p: i for i, p in enumerate(files.paths)}
            t, v = [index[p] for p in train.paths], [index[p] for p in val.paths]
            probe = LogisticRegression(C=0.3, max_iter=5000).fit(
                np.concatenate([features[t], flipped[t]]), np.concatenate([labels[t], labels[t]]))
            scores.append(probe.score(features[v], labels[v]))
        print(f"| {mode} | " + " | ".join(f"{s:.3f}" for s in scores) + f" | {np.mean(scores):.3f} |")


if __name__ == "__main__":
    main()
