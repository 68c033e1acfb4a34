"""The end-to-end classifier: raw RGB in, class probabilities out.

inputs (0-255) -> augmentation -> backbone preprocess_input -> backbone (training=False)
-> GlobalAveragePooling2D -> Dropout -> [Dense ReLU ...] -> Dense sigmoid/softmax.

Preprocessing lives in the model so a saved or exported model takes plain pixels.
Batch norm keeps its ImageNet statistics in both stages, which is what makes
fine-tuning on small sets stable. Calling the backbone with training=False is not
enough for that in Keras 3: a functional model passes its own `training` flag down
to every nested layer, overriding the one given at graph-building time. So batch
norm layers are also never unfrozen; a non-trainable BatchNormalization always runs
in inference mode.
"""

from __future__ import annotations

from typing import Sequence

import keras

from transferkit.modeling.augment import Augmentation, build_augmentation_layers
from transferkit.modeling.backbones import Backbone, build_backbone, get_backbone
from transferkit.errors import ConfigError
from transferkit.modeling.openset import to_class_probabilities  # noqa: F401 - numpy only, used by many


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
    base: keras.Model | None = None,
) -> keras.Model:
    """Stage-1 model: frozen backbone (`base`: an already trained one, else loaded with `weights`), fresh head."""
    base = base if base is not None else build_backbone(backbone, image_size, weights, weights_dir)
    base.trainable = False

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    augmenter = build_augmentation_layers(augmentation, seed) if augmentation else None
    if augmenter is not None:
        x = augmenter(x)
    x = BackbonePreprocessing(backbone.name, name="preprocess")(x)
    x = base(x, training=False)  # intent only; see unfreeze_from
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
    """Make backbone layers from `fine_tune_at` up trainable, batch norm excepted.

    Returns how many layers were unfrozen.
    """
    base = backbone_of(model)
    start = fine_tune_index(base, fine_tune_at)
    base.trainable = True
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(layer.trainable for layer in base.layers[start:])


def compile_classifier(model: keras.Model, num_classes: int, learning_rate) -> None:
    """Adam with `learning_rate` (a float or a schedule) and the loss matching the head."""
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])


def _arguments(operation) -> list:
    node = operation._inbound_nodes[0]
    return [t for t in keras.tree.flatten(node.arguments.args) if isinstance(t, keras.KerasTensor)]


def clean_cut(base: keras.Model, layer_index: int) -> int:
    """Position in `base.operations` of the latest cut at or below layer `layer_index`
    where exactly one tensor flows upward.

    Residual connections make most boundaries carry two tensors; caching activations
    needs one. Operations (not only layers) are walked, since some backbones apply
    raw ops such as Add or Multiply between layers.
    """
    operations = base.operations
    position = {id(op): i for i, op in enumerate(operations)}
    start = position[id(base.layers[layer_index])]
    for cut in range(start, 0, -1):
        crossing = {
            id(t)
            for op in operations[cut:]
            for t in _arguments(op)
            if position[id(t._keras_history.operation)] < cut
        }
        if len(crossing) == 1:
            return cut
    return 1


def split_at(base: keras.Model, cut: int) -> tuple[keras.Model, keras.Model]:
    """(lower, upper) models sharing `base`'s weights, with upper(lower(x)) == base(x).

    `cut` is a position in `base.operations` from `clean_cut`. Keras 3 cannot build a
    model from an intermediate tensor, so the upper part is rebuilt by calling the
    operations from `cut` on again, in graph order, on a new input.
    """
    operations = base.operations
    boundary = _arguments(operations[cut])[0]
    lower = keras.Model(base.input, boundary, name=f"{base.name}_lower")
    mapping = {id(boundary): keras.Input(boundary.shape[1:], name="boundary")}
    for op in operations[cut:]:
        node = op._inbound_nodes[0]
        args, kwargs = keras.tree.map_structure(
            lambda t: mapping[id(t)] if isinstance(t, keras.KerasTensor) else t,
            (node.arguments.args, node.arguments.kwargs),
        )
        outputs = op(*args, **kwargs)
        for old, new in zip(keras.tree.flatten(node.outputs), keras.tree.flatten(outputs)):
            mapping[id(old)] = new
    upper = keras.Model(mapping[id(boundary)], mapping[id(base.output)], name=f"{base.name}_upper")
    return lower, upper


def head_layers(model: keras.Model) -> list:
    """The layers after global pooling: dropout, hidden dense layers, classifier."""
    names = [layer.name for layer in model.layers]
    return model.layers[names.index("pool") + 1 :]


def inference_model(model: keras.Model) -> keras.Model:
    """Image -> (probabilities, pooled features, penultimate), the same layers without augmentation.

    Runtimes such as OpenVINO cannot convert Keras's random augmentation ops even where
    inference skips them, so the graph they get leaves those layers out.
    """
    images = keras.Input(model.input_shape[1:], name="image")
    pooled = model.get_layer("pool")(backbone_of(model)(model.get_layer("preprocess")(images), training=False))
    *hidden, final = head_layers(model)
    x = pooled
    for layer in hidden:
        x = layer(x)
    return keras.Model(images, [final(x), pooled, x], name="inference")


def carry_over_head(source: keras.Model, source_classes: Sequence[str], target: keras.Model,
                    target_classes: Sequence[str]) -> list[str]:
    """Copy `source`'s hidden layers and each of its classes' row of the final Dense layer into `target`.

    `target_classes` must include `source_classes`; the rows of the others keep their fresh
    Keras initialisation. A two-class sigmoid unit (logit z for class 1) becomes the softmax rows
    [-z/2, +z/2], which give the same probabilities. Returns the classes `target` adds.
    """
    import numpy as np

    source_head, target_head = head_layers(source), head_layers(target)
    for old, new in zip(source_head[:-1], target_head[:-1]):
        new.set_weights(old.get_weights())
    kernel, bias = (np.asarray(w) for w in source_head[-1].get_weights())
    new_kernel, new_bias = (np.array(w) for w in target_head[-1].get_weights())
    if new_kernel.shape[1] == 1:  # two classes, as before: the sigmoid unit as it was
        target_head[-1].set_weights([kernel, bias])
        return []
    if kernel.shape[1] == 1:
        kernel, bias = np.concatenate([-kernel / 2, kernel / 2], axis=1), np.concatenate([-bias / 2, bias / 2])
    for column, name in enumerate(target_classes):
        if name in source_classes:
            new_kernel[:, column] = kernel[:, list(source_classes).index(name)]
            new_bias[column] = bias[list(source_classes).index(name)]
    target_head[-1].set_weights([new_kernel, new_bias])
    return [name for name in target_classes if name not in source_classes]
