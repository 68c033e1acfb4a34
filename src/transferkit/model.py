"""The end-to-end classifier: raw RGB in, class probabilities out.

inputs (0-255) -> augmentation -> backbone preprocess_input -> backbone (training=False)
-> GlobalAveragePooling2D -> Dropout -> [Dense ReLU ...] -> Dense sigmoid/softmax.

Preprocessing lives in the model so a saved or exported model takes plain pixels.
The backbone is always called with training=False: batch norm keeps its ImageNet
statistics in both stages, which is what makes fine-tuning on small sets stable.
"""

from __future__ import annotations

from typing import Sequence

import keras

from transferkit.augment import Augmentation, build_augmentation_layers
from transferkit.backbones import Backbone, build_backbone, get_backbone
from transferkit.errors import ConfigError


@keras.saving.register_keras_serializable(package="transferkit")
class BackbonePreprocessing(keras.layers.Layer):
    """Applies the named backbone's own `preprocess_input` to 0-255 RGB batches."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs):
        return get_backbone(self.backbone).preprocess_input(inputs)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def build_classifier(
    backbone: Backbone,
    num_classes: int,
    image_size: int,
    weights: str = "imagenet",
    weights_dir=None,
    augmentation: Augmentation | None = None,
    dropout: float = 0.2,
    hidden_units: Sequence[int] = (),
    seed: int | None = None,
) -> keras.Model:
    """Stage-1 model: frozen backbone, fresh head."""
    base = build_backbone(backbone, image_size, weights, weights_dir)
    base.trainable = False

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    augmenter = build_augmentation_layers(augmentation, seed) if augmentation else None
    if augmenter is not None:
        x = augmenter(x)
    x = BackbonePreprocessing(backbone.name, name="preprocess")(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
        x = keras.layers.Dropout(dropout, seed=seed, name=f"hidden_dropout_{i}")(x)
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"transferkit_{backbone.name}")


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model inside a transferkit classifier."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name != "augmentation":
            return layer
    raise ValueError(f"Model {model.name!r} has no nested backbone model.")


def fine_tune_index(base: keras.Model, fine_tune_at: int | str) -> int:
    """Layer index where unfreezing starts, from an index or a layer name."""
    names = [layer.name for layer in base.layers]
    if isinstance(fine_tune_at, str) and not fine_tune_at.lstrip("-").isdigit():
        if fine_tune_at not in names:
            raise ConfigError(
                f"fine_tune_at layer {fine_tune_at!r} is not in {base.name}. Use a layer index "
                f"0..{len(names) - 1} or one of its layer names, e.g. {', '.join(names[-40::8])}."
            )
        return names.index(fine_tune_at)
    index = int(fine_tune_at)
    if not 0 <= index < len(names):
        raise ConfigError(
            f"fine_tune_at={index} is outside {base.name}'s layers 0..{len(names) - 1}."
        )
    return index


def unfreeze_from(model: keras.Model, fine_tune_at: int | str) -> int:
    """Make backbone layers from `fine_tune_at` up trainable; returns how many are."""
    base = backbone_of(model)
    start = fine_tune_index(base, fine_tune_at)
    base.trainable = True
    for layer in base.layers[:start]:
        layer.trainable = False
    return len(base.layers) - start


def compile_classifier(model: keras.Model, num_classes: int, learning_rate) -> None:
    """Adam with `learning_rate` (a float or a schedule) and the loss matching the head."""
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])


def to_class_probabilities(model_output, num_classes: int):
    """(n, num_classes) probabilities from either head shape."""
    import numpy as np

    output = np.asarray(model_output, dtype=np.float64)
    if num_classes == 2:
        p = output.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return output
