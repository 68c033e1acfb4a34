"""Training from a trained run (`--from RUN`): new images for the same classes, or new classes.

The parent's whole model is the starting point: the backbone as it was fine-tuned, the
head's hidden layers and each old class's row of the final layer. A new class gets a
fresh row (Keras's default initialisation), and a two-class sigmoid head becomes the
softmax rows that give its probabilities (`modeling.classifier.carry_over_head`), so
nothing the parent learned is thrown away. What fixes the model's shape (backbone,
image size, hidden layers) comes from the parent; everything else is this run's own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from transferkit import data
from transferkit.errors import ConfigError, DataError, RunDirError
from transferkit.runs import folder as rundir
from transferkit.runs.trained import TrainedModel
from transferkit.settings import ResolvedSettings, Settings

_DEFAULTS = Settings()


@dataclass
class Parent:
    """The run a new one starts from, with the digest of its model file (for cache keys and the record)."""

    trained: TrainedModel
    model_sha256: str

    @property
    def hidden_units(self) -> tuple:
        return tuple(self.trained.params.get("hidden_units") or ())

    def record(self) -> dict:
        """What config.json keeps as `parent`."""
        return {"run_dir": str(Path(self.trained.run_dir).resolve()), "model_sha256": self.model_sha256,
                "classes": list(self.trained.classes)}


def load_parent(run_dir) -> Parent:
    """The trained run at `run_dir`; a clear error when it is not one."""
    try:
        trained = TrainedModel.load(run_dir)
    except RunDirError as error:
        raise RunDirError(f"--from {run_dir}: {error}") from error
    return Parent(trained, data.file_digest(Path(run_dir) / rundir.MODEL_FILE))


def inherit(settings: Settings, parent: Parent) -> Settings:
    """`settings` with the parent's backbone, image size and hidden layers; a value given that differs is an error.

    A setting left at its default (backbone 'mobilenet_v2', image size and hidden units unset) takes
    the parent's, so `--from RUN` alone always works.
    """
    given = {"backbone": settings.backbone if settings.backbone != _DEFAULTS.backbone else None,
             "image_size": settings.image_size, "hidden_units": tuple(settings.hidden_units) or None}
    own = {"backbone": parent.trained.backbone, "image_size": parent.trained.image_size,
           "hidden_units": parent.hidden_units}
    differ = [f"{name} {given[name]!r} (the parent's is {own[name]!r})"
              for name in given if given[name] is not None and given[name] != own[name]]
    if differ:
        raise ConfigError(
            f"--from {settings.from_run} continues a run with its own model shape, but {', '.join(differ)} was given. "
            "Leave --backbone, --image-size and --hidden-units out: the parent's values are used when omitted."
        )
    return dataclasses.replace(settings, **own)


def resolve(settings: Settings) -> tuple[ResolvedSettings, Parent | None]:
    """`settings.resolve()`, and the parent run when `from_run` is set (its values filled in)."""
    if settings.from_run is None:
        return settings.resolve(), None
    settings.validate()
    parent = load_parent(settings.from_run)
    return inherit(settings, parent).resolve(), parent


def check_output(parent: Parent | None, out_dir) -> None:
    """A run cannot be written over the run it starts from."""
    if parent is not None and out_dir is not None and Path(out_dir).resolve() == Path(parent.trained.run_dir).resolve():
        raise ConfigError(f"--out {out_dir} is the --from run itself: write the new run to another folder, "
                          "so the parent stays as it was.")


def check_classes(parent: Parent, classes: list[str]) -> list[str]:
    """The classes the new data adds; an error naming any class of the parent's the data lacks."""
    missing = [name for name in parent.trained.classes if name not in classes]
    if missing:
        raise DataError(
            f"--from {parent.trained.run_dir}: the parent run knows class(es) {missing} that the new data lacks "
            f"(it has {classes}). Updating a model keeps every class it had: add a folder for each of them, "
            "or train from scratch without --from."
        )
    return [name for name in classes if name not in parent.trained.classes]


def build_from(parent: Parent, resolved: ResolvedSettings, classes: list[str]):
    """The end-to-end model for `classes` on the parent's backbone and head, seeded like a fresh one."""
    import keras

    from transferkit.modeling.classifier import backbone_of, build_classifier, carry_over_head

    s = resolved.settings
    keras.utils.set_random_seed(s.seed)
    model = build_classifier(resolved.spec, len(classes), resolved.image_size, augmentation=resolved.augmentation,
                             dropout=s.dropout, hidden_units=parent.hidden_units, seed=s.seed,
                             base=backbone_of(parent.trained.model))
    carry_over_head(parent.trained.model, parent.trained.classes, model, classes)
    return model
