"""The backbone registry: one entry per pretrained CNN, and how its weights are found.

Each entry names the Keras application constructor, its `preprocess_input`, the
input size transferkit uses by default, the layer where fine-tuning starts by
default and the file names its ImageNet (no-top) weights may have in a local
weights directory. Adding a backbone is adding one entry to `BACKBONES`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transferkit.errors import ConfigError, WeightsError

logger = logging.getLogger("transferkit")

WEIGHTS_DIR_ENV = "TRANSFERKIT_WEIGHTS_DIR"


@dataclass(frozen=True)
class Backbone:
    name: str
    application: str  # attribute of keras.applications, e.g. "MobileNetV2"
    module: str  # keras.applications sub-module holding preprocess_input
    default_size: int
    fine_tune_at: int | str  # layer index or name where stage-2 unfreezing starts
    weight_files: tuple[str, ...]  # no-top ImageNet weight file names, transferkit's first
    min_size: int = 32
    kwargs: dict = field(default_factory=dict)

    @property
    def constructor(self) -> Callable:
        import keras

        return getattr(keras.applications, self.application)

    @property
    def preprocess_input(self) -> Callable:
        import keras

        return getattr(keras.applications, self.module).preprocess_input


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone(
            "mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, 100,
            ("mobilenet_v2_1.0_224_imagenet_no_top.weights.h5",
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
            kwargs={"alpha": 1.0},
        ),
        Backbone(
            "mobilenet", "MobileNet", "mobilenet", 160, "conv_dw_11",
            ("mobilenet_v1_1.0_224_imagenet_no_top.weights.h5", "mobilenet_1_0_224_tf_no_top.h5"),
            kwargs={"alpha": 1.0},
        ),
        Backbone(
            "mobilenet_0.75", "MobileNet", "mobilenet", 160, "conv_dw_11",
            ("mobilenet_v1_0.75_192_imagenet_no_top.weights.h5", "mobilenet_7_5_224_tf_no_top.h5"),
            kwargs={"alpha": 0.75},
        ),
        Backbone(
            "mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, "expanded_conv_7_expand",
            ("mobilenet_v3_small_1.0_224_imagenet_no_top.weights.h5",
             "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
        ),
        Backbone(
            "mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, "expanded_conv_10_expand",
            ("mobilenet_v3_large_1.0_224_imagenet_no_top.weights.h5",
             "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
        ),
        Backbone(
            "efficientnet_b0", "EfficientNetB0", "efficientnet", 224, "block6a_expand_conv",
            ("efficientnet_b0_imagenet_no_top.weights.h5", "efficientnetb0_notop.h5"),
        ),
        Backbone(
            "resnet50", "ResNet50", "resnet50", 224, "conv5_block1_1_conv",
            ("resnet50_imagenet_no_top.weights.h5", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        Backbone(
            "inception_v3", "InceptionV3", "inception_v3", 299, 249,
            ("inception_v3_imagenet_no_top.weights.h5", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
            min_size=75,
        ),
    ]
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}. Known backbones: {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def check_image_size(backbone: Backbone, image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < backbone.min_size:
        raise ConfigError(
            f"Image size {image_size!r} is too small for {backbone.name}: it needs whole-number "
            f"sizes of at least {backbone.min_size} px (its default is {backbone.default_size})."
        )
    if image_size > 1024:
        raise ConfigError(
            f"Image size {image_size} is larger than transferkit supports (1024 px); "
            f"{backbone.name} was trained at {backbone.default_size} px."
        )


def weights_search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where local ImageNet weight files are looked for, in order."""
    dirs = [weights_dir, os.environ.get(WEIGHTS_DIR_ENV)]
    return [Path(d).expanduser() for d in dirs if d]


def absolute_weights_dir(weights_dir: str | os.PathLike | None = None) -> str | None:
    """`weights_dir`, else $TRANSFERKIT_WEIGHTS_DIR, as an absolute path, for a process that runs in another
    folder (a web-app worker, a Ray worker), where a relative one would name something else."""
    folder = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    return str(Path(folder).expanduser().resolve()) if folder else None


def find_local_weights(backbone: Backbone, weights_dir: str | os.PathLike | None = None) -> Path | None:
    for directory in weights_search_dirs(weights_dir):
        for file_name in backbone.weight_files:
            candidate = directory / file_name
            if candidate.is_file():
                return candidate
    return None


def resolve_weights(backbone: Backbone, weights: str, weights_dir: str | os.PathLike | None = None) -> str | None:
    """Turn 'imagenet' | 'none' | a path into what the Keras constructor takes.

    'imagenet' prefers a local file and otherwise leaves it to Keras's own download
    (which uses its cache in ~/.keras/models first).
    """
    if weights == "none" or weights is None:
        logger.warning(
            "weights='none': %s starts from random weights. Expect far lower accuracy "
            "than with ImageNet weights; transfer learning needs pretrained ones.",
            backbone.name,
        )
        return None
    if weights == "imagenet":
        local = find_local_weights(backbone, weights_dir)
        return str(local) if local else "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file '{weights}' does not exist. Pass 'imagenet', 'none' or the path of "
            f"a no-top weights file for {backbone.name} (e.g. {backbone.weight_files[0]})."
        )
    return str(path)


def build_backbone(backbone: Backbone, image_size: int, weights: str, weights_dir=None):
    """The backbone without its classifier, loaded with the requested weights.

    Fails here, before any training, if pretrained weights were asked for and neither
    a local file nor Keras's download can provide them.
    """
    check_image_size(backbone, image_size)
    resolved = resolve_weights(backbone, weights, weights_dir)
    try:
        return backbone.constructor(
            include_top=False, weights=resolved, input_shape=(image_size, image_size, 3), **backbone.kwargs
        )
    except Exception as error:
        if resolved != "imagenet":
            raise
        searched = [str(d) for d in weights_search_dirs(weights_dir)] or ["(no weights directory set)"]
        raise WeightsError(
            f"ImageNet weights for {backbone.name} were not found locally and could not be "
            f"downloaded ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Looked for {' or '.join(backbone.weight_files)} in: {', '.join(searched)}. "
            f"Put that file in a folder and pass --weights-dir FOLDER (or set {WEIGHTS_DIR_ENV}), "
            "pass --weights PATH, or train from scratch with --weights none."
        ) from error
