"""On-the-fly augmentation as Keras preprocessing layers inside the model.

Living in the model graph means augmentation runs per batch in memory, never
touches files, and switches itself off at inference (Keras's random layers are
identity when `training` is false).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transferkit.errors import ConfigError

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")


@dataclass(frozen=True)
class Augmentation:
    """Strength of each random transform; 0 (or flip 'none') switches it off.

    rotation is a fraction of a full turn (0.2 = up to +-72 degrees), zoom, shift
    and shear fractions of the image size, brightness and contrast fractions of the
    value range, as in the matching Keras layers.
    """

    flip: str = "none"
    rotation: float = 0.0
    zoom: float = 0.0
    shift: float = 0.0
    shear: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self):
        if self.flip not in FLIP_MODES:
            raise ConfigError(f"flip must be one of {list(FLIP_MODES)}, got {self.flip!r}.")
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"Augmentation {field.name} must be a number in [0, 1), got {value!r}."
                )

    @property
    def active(self) -> bool:
        return self != Augmentation()


PRESETS = {
    "none": Augmentation(),
    "light": Augmentation(flip="horizontal", rotation=0.05, zoom=0.05),
    "standard": Augmentation(flip="horizontal", rotation=0.2, zoom=0.1),
    "strong": Augmentation(
        flip="horizontal", rotation=0.2, zoom=0.2, shift=0.1, shear=0.1, brightness=0.2, contrast=0.2
    ),
}


def resolve_augmentation(augment: str | Augmentation | dict = "standard", **overrides) -> Augmentation:
    """A preset name, a dict of fields or an `Augmentation`, with per-field overrides applied."""
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise ConfigError(f"Unknown augmentation preset {augment!r}; choose one of {list(PRESETS)}.")
        augment = PRESETS[augment]
    elif isinstance(augment, dict):
        augment = Augmentation(**augment)
    elif not isinstance(augment, Augmentation):
        raise ConfigError(
            f"augment must be a preset name {list(PRESETS)}, a dict or an Augmentation, got {augment!r}."
        )
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Augmentation)}
    if unknown:
        raise ConfigError(f"Unknown augmentation setting(s) {sorted(unknown)}.")
    return dataclasses.replace(augment, **overrides)


def build_augmentation_layers(augment: Augmentation, seed: int | None = None):
    """A `keras.Sequential` named 'augmentation', or None when nothing is switched on.

    Inputs are raw RGB in 0-255, so brightness and contrast use that value range.
    """
    import keras

    layers = keras.layers
    stack = []
    if augment.flip != "none":
        stack.append(layers.RandomFlip(augment.flip, seed=seed))
    if augment.rotation:
        stack.append(layers.RandomRotation(augment.rotation, seed=seed))
    if augment.zoom:
        stack.append(layers.RandomZoom(augment.zoom, seed=seed))
    if augment.shift:
        stack.append(layers.RandomTranslation(augment.shift, augment.shift, seed=seed))
    if augment.shear:
        stack.append(layers.RandomShear(augment.shear, augment.shear, seed=seed))
    if augment.brightness:
        stack.append(layers.RandomBrightness(augment.brightness, value_range=(0, 255), seed=seed))
    if augment.contrast:
        stack.append(layers.RandomContrast(augment.contrast, value_range=(0, 255), seed=seed))
    return keras.Sequential(stack, name="augmentation") if stack else None
