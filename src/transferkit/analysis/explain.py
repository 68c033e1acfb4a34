"""Where the model looks (Grad-CAM) and what its backbone sees (feature maps).

Grad-CAM (Selvaraju et al., 2017) weights each channel of a backbone feature map
by the mean gradient of the class score (the logit, before sigmoid/softmax) with
respect to it, sums, and keeps the positive part. The classifier nests its
backbone as a model inside the model, so rather than rewiring Keras graphs the
forward pass is replayed layer by layer under a `tf.GradientTape`:
preprocess -> backbone (to the feature map and its output) -> head layers.
That replay is checked once against the model's own output.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data
from transferkit.runs import folder as rundir
from transferkit.runs.trained import TrainedModel
from transferkit.errors import ConfigError, DataError
from transferkit.analysis.evaluation import save_figure, thumbnail, wrap_label

logger = logging.getLogger("transferkit")

OVERLAY_ALPHA = 0.45
HEATMAP_CMAP = "turbo"
ACTIVATION_CMAP = "viridis"
MAX_CHANNELS = 32
DEFAULT_LAYER_FRACTIONS = (0.1, 0.5, 0.9)  # early, middle, late


# -- model plumbing ----------------------------------------------------------------


def _parts(model):
    """(layers before the backbone, backbone, head layers) of a transferkit classifier.

    The augmentation block is left out: it is the identity at inference.
    """
    import keras

    from transferkit.modeling.classifier import backbone_of

    base = backbone_of(model)
    layers = list(model.layers)
    at = layers.index(base)
    before = [
        layer for layer in layers[:at]
        if not isinstance(layer, keras.layers.InputLayer) and layer.name != "augmentation"
    ]
    return before, base, layers[at + 1:]


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(text)).strip("_") or "image"


def _unique_path(folder: Path, name: str, taken: set) -> Path:
    stem, suffix = name.rsplit(".", 1)
    candidate, n = f"{stem}.{suffix}", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}.{suffix}"
    taken.add(candidate)
    return folder / candidate


def load_batch(paths: Sequence[str], image_size: int):
    """Model-size float32 pixels and full-size originals of the readable files, plus the unreadable."""
    resized, originals, kept, unreadable = [], [], [], []
    for path in paths:
        try:
            original = data.load_image(path)
        except Exception as error:  # noqa: BLE001 - skip it, say so, go on
            logger.warning("Skipping unreadable image %s: %s", path, error)
            unreadable.append(str(path))
            continue
        resized.append(data.load_image(path, image_size).astype(np.float32))
        originals.append(original)
        kept.append(str(path))
    return kept, (np.stack(resized) if resized else None), originals, unreadable


# -- Grad-CAM ----------------------------------------------------------------------------


@dataclass
class Explanation:
    path: str
    class_name: str  # the class the map explains
    probability: float  # the model's probability for that class
    predicted: str
    confidence: float  # the model's probability for its predicted class
    heatmap: np.ndarray  # (height, width) in [0, 1], the original image's size
    overlay_path: str | None = None


class GradCam:
    """Grad-CAM on a backbone layer (default: the backbone's output, its last feature map)."""

    def __init__(self, model, classes: Sequence[str], layer: str | None = None):
        import keras

        self.model, self.classes = model, list(classes)
        self.before, base, self.head = _parts(model)
        if not self.head or not isinstance(self.head[-1], keras.layers.Dense):
            raise ConfigError(f"Model {model.name!r} does not end in a Dense layer; Grad-CAM needs its logits.")
        if layer is None:
            self.layer = base.layers[-1].name
            self.features = base
        else:
            target = resolve_layers(base, [layer])[0][1]
            self.layer = target.name
            self.features = keras.Model(base.inputs, [target.output, base.output])
        self._checked = False

    def _forward(self, images):
        """(feature map, logits, probabilities) by replaying the model's layers."""
        import keras

        x = images
        for layer in self.before:
            x = layer(x)
        out = self.features(x, training=False)
        feature_map, x = (out, out) if not isinstance(out, (list, tuple)) else out
        for layer in self.head[:-1]:
            x = layer(x, training=False)
        dense = self.head[-1]
        logits = keras.ops.matmul(x, dense.kernel) + dense.bias
        return feature_map, logits, dense.activation(logits)

    def _check_replay(self, images, probabilities) -> None:
        expected = np.asarray(self.model(images, training=False))
        if not np.allclose(np.asarray(probabilities), expected, atol=1e-4):
            raise ConfigError(
                f"Grad-CAM could not replay model {self.model.name!r} layer by layer (its layout is not "
                "input -> preprocessing -> backbone -> head); explanations would be wrong."
            )
        self._checked = True

    def class_index(self, class_name: str | None) -> int | None:
        if class_name is None:
            return None
        if class_name not in self.classes:
            raise ConfigError(f"Unknown class {class_name!r}; the model's classes are {self.classes}.")
        return self.classes.index(class_name)

    def maps(self, images: np.ndarray, class_index: int | None = None):
        """Low-resolution maps in [0, 1] for a batch, with the explained class and all probabilities."""
        import tensorflow as tf

        from transferkit.modeling.openset import to_class_probabilities

        images = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape() as tape:
            feature_map, logits, output = self._forward(images)
            probabilities = to_class_probabilities(output.numpy(), len(self.classes))
            targets = probabilities.argmax(axis=1) if class_index is None else np.full(len(probabilities), class_index)
            if len(self.classes) == 2:  # one sigmoid logit z: class 1 scores z, class 0 scores -z
                signs = tf.constant(np.where(targets == 1, 1.0, -1.0)[:, None], tf.float32)
                score = tf.reduce_sum(logits * signs)
            else:
                score = tf.reduce_sum(logits * tf.one_hot(targets, len(self.classes)))
        if not self._checked:
            self._check_replay(images, output)
        gradients = tape.gradient(score, feature_map)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1)).numpy()
        peaks = cams.max(axis=(1, 2), keepdims=True)
        cams = np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0)
        return cams, targets, probabilities


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A low-resolution map placed over the original image, clipped to [0, 1].

    The model saw the image's centre square (`data.load_image`), so the map is resized
    onto that square; the cropped-off margins get zero.
    """
    from PIL import Image

    side = min(height, width)
    resized = Image.fromarray(cam.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR)
    heatmap = np.zeros((height, width), np.float32)
    top, left = (height - side) // 2, (width - side) // 2
    heatmap[top : top + side, left : left + side] = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return heatmap


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The heatmap in a colormap blended over the RGB image, same size as the image."""
    import matplotlib

    colours = matplotlib.colormaps[HEATMAP_CMAP](heatmap)[..., :3] * 255.0
    return np.clip((1 - alpha) * image + alpha * colours, 0, 255).astype(np.uint8)


def explain_images(
    trained: TrainedModel, paths: Sequence[str], class_name: str | None = None, out=None, layer: str | None = None,
    batch_size: int = 16,
) -> list[Explanation]:
    """Grad-CAM for each readable image (unreadable ones are skipped with a warning).

    Maps are for the predicted class, or `class_name` for every image. With `out`,
    an overlay PNG at each original image's size is written there.
    """
    from PIL import Image

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    cam = GradCam(trained.model, trained.classes, layer)
    class_index = cam.class_index(class_name)
    if not paths:
        raise DataError("No images to explain: pass image files or folders of images.")
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"Output '{out}' is a file; pass a folder for the overlay images.")
    explanations, taken = [], set()
    for start in range(0, len(paths), batch_size):
        kept, images, originals, _ = load_batch(paths[start:start + batch_size], trained.image_size)
        if not kept:
            continue
        cams, targets, probabilities = cam.maps(images, class_index)
        for path, original, low, target, row in zip(kept, originals, cams, targets, probabilities):
            heatmap = upsample(low, *original.shape[:2])
            explanation = Explanation(
                path=path, class_name=cam.classes[target], probability=float(row[target]),
                predicted=cam.classes[int(row.argmax())], confidence=float(row.max()), heatmap=heatmap,
            )
            if out is not None:
                target_path = _unique_path(
                    out, f"{_safe_name(Path(path).stem)}.gradcam.{_safe_name(explanation.class_name)}.png", taken
                )
                with rundir.atomic_path(target_path) as tmp:
                    Image.fromarray(overlay(original, heatmap)).save(tmp, format="PNG")
                explanation.overlay_path = str(target_path)
            explanations.append(explanation)
    return explanations


def plot_gradcam_panel(explanations: Sequence[Explanation], path, true_labels: Sequence[str | None] | None = None,
                       columns: int = 3) -> Path:
    """Image and overlay side by side for each explanation, titled with truth and prediction."""
    import matplotlib.pyplot as plt

    if not explanations:
        raise DataError("No Grad-CAM explanations to plot.")
    true_labels = list(true_labels) if true_labels is not None else [None] * len(explanations)
    columns = max(1, min(columns, len(explanations)))
    rows = math.ceil(len(explanations) / columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(3.7 * columns, 2.4 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (explanation, truth) in enumerate(zip(explanations, true_labels)):
        left, right = axes[k // columns, 2 * (k % columns)], axes[k // columns, 2 * (k % columns) + 1]
        original = data.load_image(explanation.path)
        left.imshow(thumbnail(original))
        right.imshow(thumbnail(overlay(original, explanation.heatmap)))
        wrong = truth is not None and truth != explanation.predicted
        left.set_title(f"true: {wrap_label(truth, 16, 1)}" if truth is not None else Path(explanation.path).name[:24],
                       fontsize=10, loc="left")
        right.set_title(
            f"pred: {wrap_label(explanation.predicted, 16, 1)} ({explanation.confidence:.0%})\n"
            f"map for: {wrap_label(explanation.class_name, 14, 1)}",
            fontsize=10, loc="left", color="#a01818" if wrong else "black",
        )
    fig.suptitle("Grad-CAM: where the evidence for the class lies (warm = more)", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


# -- feature maps ------------------------------------------------------------------------


def _output_shape(layer) -> tuple:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return ()


def feature_layers(base) -> list[tuple[int, object]]:
    """(index, layer) of every backbone layer whose output is a 4-D feature map."""
    return [(i, layer) for i, layer in enumerate(base.layers) if len(_output_shape(layer)) == 4]


def layer_table(base) -> list[dict]:
    """Index, name, type and output shape of every backbone layer (for --list-layers)."""
    return [
        {"index": i, "name": layer.name, "type": type(layer).__name__,
         "output_shape": list(_output_shape(layer)[1:]), "feature_map": len(_output_shape(layer)) == 4}
        for i, layer in enumerate(base.layers)
    ]


def resolve_layers(base, specs: Sequence[str | int]) -> list[tuple[int, object]]:
    """Backbone layers by name or index; anything else is a ConfigError that lists the valid ones."""
    valid = feature_layers(base)
    by_name = {layer.name: (i, layer) for i, layer in valid}
    resolved = []
    for spec in specs:
        text = str(spec).strip()
        if isinstance(spec, bool) or not text:
            raise ConfigError(f"A layer must be a name or an index, got {spec!r}.")
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(base.layers):
                raise ConfigError(
                    f"Layer index {index} is outside {base.name}'s layers 0..{len(base.layers) - 1}; "
                    "see --list-layers."
                )
            if index not in {i for i, _ in valid}:
                layer = base.layers[index]
                raise ConfigError(
                    f"Layer {index} ({layer.name!r}, output {_output_shape(layer)}) is not a feature map. "
                    f"Choose a layer with a (height, width, channels) output, e.g. {valid[-1][1].name!r}; "
                    "see --list-layers."
                )
            resolved.append((index, base.layers[index]))
        elif text in by_name:
            resolved.append(by_name[text])
        else:
            raise ConfigError(
                f"Unknown layer {text!r} in {base.name}. Give a layer name or index from --list-layers "
                f"(0..{len(base.layers) - 1}); valid names: {', '.join(name for name in by_name)}."
            )
    return resolved


def default_layers(base, fractions: Sequence[float] = DEFAULT_LAYER_FRACTIONS) -> list[tuple[int, object]]:
    """A few post-activation feature maps from early, middle and late in the backbone.

    Activations (ReLU and friends) are what the next block sees; raw conv outputs
    are used for backbones without separate activation layers.
    """
    import keras

    valid = feature_layers(base)
    candidates = [(i, l) for i, l in valid if isinstance(l, (keras.layers.ReLU, keras.layers.Activation))]
    candidates = candidates or [(i, l) for i, l in valid if isinstance(l, keras.layers.Conv2D)] or valid
    picks = sorted({round(f * (len(candidates) - 1)) for f in fractions})
    return [candidates[p] for p in picks]


@dataclass
class ActivationGrid:
    layer: str
    index: int
    shape: tuple  # (height, width, channels) of the layer's output
    channels: list  # channel numbers shown, one tile each, most varied first
    maps: np.ndarray  # (len(channels), height, width)
    path: str | None = None


def activation_grids(
    trained: TrainedModel, image_path, layers: Sequence[str | int] | None = None, out=None, max_channels: int = MAX_CHANNELS,
) -> list[ActivationGrid]:
    """Feature maps of backbone layers for one image; one PNG grid per layer with `out`.

    The `max_channels` channels that vary most across the image (highest spatial
    standard deviation, border excluded) are shown: flat channels carry no picture.
    """
    import keras

    if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1:
        raise ConfigError(f"max_channels must be a positive integer, got {max_channels!r}.")
    before, base, _ = _parts(trained.model)
    chosen = default_layers(base) if not layers else resolve_layers(base, list(layers))
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"Output '{out}' is a file; pass a folder for the activation grids.")
    try:
        image = data.load_image(image_path, trained.image_size).astype(np.float32)[None]
    except FileNotFoundError as error:
        raise DataError(f"Image '{image_path}' does not exist.") from error
    except Exception as error:  # noqa: BLE001 - any decoder failure means the same to the user
        raise DataError(f"Cannot read image '{image_path}': {error}") from error
    x = image
    for layer in before:
        x = layer(x)
    probe = keras.Model(base.inputs, [layer.output for _, layer in chosen])
    outputs = probe(x, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    grids, taken = [], set()
    for (index, layer), output in zip(chosen, outputs):
        fmap = np.asarray(output)[0]  # (h, w, c)
        # Rank by spatial spread: a channel that is flat (off, or saturated at ReLU6's cap) shows nothing.
        order = np.argsort(-_interior(fmap).std(axis=(0, 1)), kind="stable")[:max_channels]
        grid = ActivationGrid(layer.name, index, tuple(fmap.shape), [int(c) for c in order],
                              np.moveaxis(fmap[..., order], -1, 0))
        if out is not None:
            target = _unique_path(out, f"{_safe_name(Path(image_path).stem)}.activations."
                                       f"{index:03d}_{_safe_name(layer.name)}.png", taken)
            plot_activation_grid(grid, target, image_name=Path(image_path).name, layer_type=type(layer).__name__)
            grid.path = str(target)
        grids.append(grid)
    return grids


def _interior(fmap: np.ndarray) -> np.ndarray:
    """The map without its one-pixel frame, where zero padding makes spurious edges (maps of 8 px and up)."""
    return fmap[1:-1, 1:-1] if min(fmap.shape[:2]) >= 8 else fmap


def _tile(fmap: np.ndarray, size: int) -> np.ndarray:
    """One channel as RGB, scaled to its own range, enlarged by whole pixels (nearest) to about `size`.

    The top of the scale is the interior's 99th percentile, so one hot border pixel
    does not turn the rest of the tile dark.
    """
    import matplotlib

    low = 0.0 if fmap.min() >= 0 else float(fmap.min())  # ReLU maps: 0 stays dark, a quiet channel looks quiet
    high = float(np.percentile(_interior(fmap), 99))
    scaled = np.clip((fmap - low) / max(high - low, 1e-6), 0.0, 1.0)
    rgb = matplotlib.colormaps[ACTIVATION_CMAP](scaled)[..., :3]
    factor = max(1, size // max(fmap.shape))
    return np.kron(rgb, np.ones((factor, factor, 1)))


def plot_activation_grid(grid: ActivationGrid, path, image_name: str = "", layer_type: str = "",
                         columns: int = 8) -> Path:
    """One tile per channel shown, each at the layer's own resolution (visible as blocks), scaled per tile.

    The tiles are laid into one mosaic image, a single imshow: dozens of subplots
    would cost seconds per grid.
    """
    import matplotlib.pyplot as plt

    count = len(grid.channels)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    tiles = [_tile(fmap, 96) for fmap in grid.maps]
    tile_h, tile_w = tiles[0].shape[:2]
    gap_x, gap_y = max(2, tile_w // 12), max(2, tile_h // 12) + max(14, tile_h // 5)  # room for the label
    mosaic = np.ones((rows * (tile_h + gap_y), columns * (tile_w + gap_x) - gap_x, 3))
    for k, tile in enumerate(tiles):
        top, left = (k // columns) * (tile_h + gap_y) + gap_y, (k % columns) * (tile_w + gap_x)
        mosaic[top:top + tile_h, left:left + tile_w] = tile
    fig, ax = plt.subplots(figsize=(1.45 * columns, 1.45 * rows * (tile_h + gap_y) / (tile_w + gap_x) + 0.8))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for k, channel in enumerate(grid.channels):
        top, left = (k // columns) * (tile_h + gap_y) + gap_y, (k % columns) * (tile_w + gap_x)
        ax.text(left + tile_w / 2, top - 3, f"ch {channel}", ha="center", va="bottom", fontsize=9)
    height, width, channels = grid.shape
    shown = f"all {channels} channels" if count == channels else f"the {count} most varied of {channels} channels"
    kind = f" {layer_type}" if layer_type else ""
    source = f" of {image_name}" if image_name else ""
    ax.set_title(
        f"Layer {grid.index} '{grid.layer}'{kind}{source}\n{height}x{width} feature maps; showing {shown}; "
        "bright = strong activation (each tile scaled to its own range)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path)
