"""Looking at a dataset before training: a labelled sample grid and one image under augmentation draws."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from transferkit import data
from transferkit.analysis.evaluation import save_figure, wrap_label
from transferkit.errors import ConfigError, DataError

logger = logging.getLogger("transferkit")

SAMPLES_PER_GRID = 18
AUGMENTATION_DRAWS = 8


def pick_samples(files: data.LabelledFiles, count: int = SAMPLES_PER_GRID, seed: int = 42) -> list[int]:
    """Indices of about `count` files, the same number from each class (at least one each)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(files.labels)
    per_class = max(1, count // max(1, len(files.classes)))
    chosen = []
    for index in range(len(files.classes)):
        members = np.flatnonzero(labels == index)
        chosen.extend(sorted(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()))
    return chosen


def plot_samples(files: data.LabelledFiles, path, image_size: int, count: int = SAMPLES_PER_GRID,
                 seed: int = 42) -> list[str]:
    """A labelled grid of sample images (as the model sees them: square, `image_size`); returns their paths."""
    from transferkit.analysis.figures import plot_image_grid

    images, titles, shown = [], [], []
    for i in pick_samples(files, count, seed):
        try:
            images.append(data.load_image(files.paths[i], image_size))
        except Exception as error:  # noqa: BLE001 - an unreadable sample is reported and not shown
            logger.warning("Skipping unreadable image %s: %s", files.paths[i], error)
            continue
        titles.append(files.classes[files.labels[i]])
        shown.append(files.paths[i])
    if not images:
        raise DataError("None of the sampled images could be read.")
    plot_image_grid(images, titles, path)
    return shown


def describe_augmentation(augmentation: dict | None) -> str:
    """'flip horizontal, rotation up to 72 degrees, zoom 10 %' from an Augmentation's fields."""
    if not augmentation:
        return "none"
    parts = []
    for name, value in augmentation.items():
        if name == "flip":
            if value != "none":
                parts.append(f"flip {value.replace('_', ' ')}")
        elif value:
            parts.append(f"rotation up to {value * 360:.0f} degrees" if name == "rotation" else f"{name} {value:.0%}")
    return ", ".join(parts) or "none"


def plot_augmentation_preview(augmenter, image: np.ndarray, path, draws: int = AUGMENTATION_DRAWS,
                              description: str = "", columns: int = 5) -> Path:
    """The image, then `draws` random augmentations of it, exactly as training applies them."""
    import matplotlib.pyplot as plt

    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws must be a positive integer, got {draws!r}.")
    batch = np.asarray(image, np.float32)[None]
    tiles = [np.asarray(image, np.uint8)]
    for _ in range(draws):
        tiles.append(np.clip(np.asarray(augmenter(batch, training=True))[0], 0, 255).astype(np.uint8))
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.65 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, tile) in enumerate(zip(axes.flat, tiles)):
        ax.imshow(tile)
        ax.set_title("original" if k == 0 else f"draw {k}", fontsize=9)
    fig.suptitle("\n".join(["Augmentation preview: one image under random draws"]
                           + ([wrap_label(description, 90, 2)] if description else [])), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def preview_dataset(data_dir, out, augment="standard", image_size: int = 160, seed: int = 42,
                    draws: int = AUGMENTATION_DRAWS, image=None) -> dict:
    """samples.png and augmentation.png for a data folder, before any training.

    `image` picks the image to augment (default: a seeded pick from the samples).
    Only `out` is written; the data folder is only read.
    """
    from transferkit.modeling.augment import build_augmentation_layers, resolve_augmentation

    augmentation = resolve_augmentation(augment)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ConfigError(f"image_size must be an integer >= 32, got {image_size!r}.")
    files = data.list_class_folders(data.resolve_layout(data_dir)[0])  # a pre-split folder: its train/
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output '{out}' is a file; pass a folder for the preview images.")
    if out.resolve().is_relative_to(Path(data_dir).resolve()):
        raise ConfigError(f"Output '{out}' lies inside the data folder '{data_dir}', which is never written; "
                          "pass another folder.")
    samples = plot_samples(files, out / "samples.png", image_size, seed=seed)
    source = str(image) if image is not None else samples[0]
    result = {
        "classes": list(files.classes),
        "class_counts": files.class_counts(),
        "images": len(files),
        "samples": str(out / "samples.png"),
        "augmented_image": source,
        "augmentation": None,
    }
    augmenter = build_augmentation_layers(augmentation, seed) if augmentation.active else None
    if augmenter is None:
        logger.warning("The augmentation is 'none', so there is no augmentation preview to draw.")
        return result
    try:
        pixels = data.load_image(source, image_size)
    except Exception as error:  # noqa: BLE001
        raise DataError(f"Cannot read image '{source}' for the augmentation preview: {error}") from error
    plot_augmentation_preview(augmenter, pixels, out / "augmentation.png", draws,
                              describe_augmentation(dataclasses.asdict(augmentation)))
    result["augmentation"] = str(out / "augmentation.png")
    return result


# -- the report --------------------------------------------------------------------------


