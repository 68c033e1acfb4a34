"""Every training setting, declared once: default, type, allowed values and help text.

`ImageClassifier` takes these as keywords and the CLI builds its `train` options from
them, so a default or a range is written in one place. `Settings.validate` checks
every value up front (in the style of scikit-learn's parameter constraints) and says
what it received and what is allowed; `Settings.resolve` fills in what depends on the
backbone and the data. What `config.json` records is `Settings.to_json()` and the
resolved values.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Any

from transferkit.errors import ConfigError
from transferkit.modeling.augment import Augmentation, resolve_augmentation
from transferkit.modeling.backbones import check_image_size, get_backbone
from transferkit.modeling.forward import COMPUTE, check_compute

DATA, MODEL, TRAIN, AUG, OUTPUT = "Data", "Backbone and head", "Training", "Augmentation", "Output"


@dataclass(frozen=True)
class Interval:
    """A number of `kind` (int or float) between `low` and `high`; `closed` says which ends are allowed."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"  # "both", "left", "right" or "neither"

    def accepts(self, value) -> bool:
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        return self.high is None or value < self.high or (value == self.high and self.closed in ("both", "right"))

    def describe(self) -> str:
        noun = "a whole number" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            if self.closed == "neither":
                return f"strictly between {self.low:g} and {self.high:g}"
            left, right = "[" if self.closed in ("both", "left") else "(", "]" if self.closed in ("both", "right") else ")"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            if self.low == 0 and self.closed in ("right", "neither"):
                return "a positive integer" if self.kind is int else "a positive number"
            return f"{noun} {'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}"
        return noun


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*([hms])")


def parse_duration(value) -> float:
    """Seconds from 300, '300', '90s', '5m', '1h30m' or '2.5m'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or _DURATION.sub("", text).strip():
                raise ConfigError(f"time_budget must be a duration such as '90s', '5m' or '1h30m' (or seconds), "
                                  f"got {value!r}.") from None
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise ConfigError(f"time_budget must be a duration such as '90s', '5m' or '1h30m' (or seconds), got {value!r}.")
    if seconds <= 0:
        raise ConfigError(f"time_budget must be positive, got {value!r}.")
    return seconds


@dataclass(frozen=True)
class Duration:
    def accepts(self, value) -> bool:
        try:
            parse_duration(value)
        except ConfigError:
            return False
        return True

    def describe(self) -> str:
        return "a duration such as '90s', '5m' or '1h30m', or seconds"


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def accepts(self, value) -> bool:
        return isinstance(value, (str, bool)) and value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class InstanceOf:
    kinds: tuple
    text: str

    def accepts(self, value) -> bool:
        if isinstance(value, bool) and bool not in self.kinds:
            return False
        return isinstance(value, self.kinds) and value != ""

    def describe(self) -> str:
        return self.text


def setting(default, help: str, panel: str, *constraints, cli: bool = True, nullable: bool | None = None):
    """A dataclass field carrying its help text, help panel and constraints (None allowed when the default is)."""
    nullable = default is None if nullable is None else nullable
    metadata = {"help": help, "panel": panel, "constraints": constraints, "nullable": nullable, "cli": cli}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


TEXT = InstanceOf((str,), "a non-empty string")
BOOL = InstanceOf((bool,), "True or False")
POSITIVE = Interval(float, 0, None, "neither")
POSITIVE_INT = Interval(int, 0, None, "neither")
COUNT = Interval(int, 0, None, "left")


@dataclass
class Settings:
    """The whole training recipe; None means "choose for me" and is resolved at fit time."""

    backbone: str = setting("mobilenet_v2", "Pretrained CNN (see `transferkit backbones`).", MODEL, TEXT)
    image_size: int | None = setting(
        None, "Square input size in px (default: the backbone's, 224 for mobilenet_v2).", DATA, Interval(int, 1))
    weights: str = setting(
        "imagenet", "'imagenet' (local file first, then Keras download), 'none', or a weights file path.", MODEL, TEXT)
    weights_dir: str | None = setting(
        None, "Folder with local ImageNet weight files (also $TRANSFERKIT_WEIGHTS_DIR).", MODEL, TEXT)
    augment: Any = setting(
        "standard", "Augmentation preset: none, light, standard, strong.", AUG,
        InstanceOf((str, dict, Augmentation), "a preset name, a dict of transforms or an Augmentation"))
    epochs: int | None = setting(
        None, "Stage-1 (head) epochs of Adam (implies --head-solver adam); default: enough for ~300 optimisation "
        "steps, 10-50.", TRAIN, POSITIVE_INT)
    learning_rate: float = setting(1e-3, "Stage-1 Adam learning rate.", TRAIN, POSITIVE)
    head_solver: str = setting(
        "lbfgs", "Stage 1: 'lbfgs' fits the classifier layer as a logistic regression on the cached un-augmented "
        "features, its L2 strength chosen by cross-validation (scikit-learn); 'adam': --epochs of Adam on augmented "
        "views (always with --epochs, --hidden-units, --no-cache or --from).", TRAIN, OneOf(("lbfgs", "adam")))
    fine_tune_epochs: int | None = setting(
        None, "Stage-2 epochs (0 skips fine-tuning); default: 0 on the solved head, else enough for ~100 steps, "
        "2-15.", TRAIN, COUNT)
    fine_tune_learning_rate: float | None = setting(
        None, "Stage-2 learning rate (default: a tenth of --learning-rate).", TRAIN, POSITIVE)
    fine_tune_at: int | str | None = setting(
        None, "Backbone layer index or name where unfreezing starts (default per backbone, 100 for mobilenet_v2).",
        TRAIN, InstanceOf((int, str), "a layer index or name"))
    dropout: float = setting(0.2, "Dropout rate before the classifier layer.", MODEL, Interval(float, 0, 1, "left"))
    hidden_units: tuple = setting(
        (), "Extra dense ReLU layer in the head; repeat for more (e.g. --hidden-units 256).", MODEL,
        InstanceOf((tuple, list), "a sequence of positive integers"))
    batch_size: int = setting(32, "Images per optimisation step.", DATA, POSITIVE_INT)
    val_split: float = setting(
        0.2, "Fraction of each class held out for validation.", DATA, Interval(float, 0, 1, "neither"))
    group_by: str | None = setting(
        None, "Keep files of one group on the same side of every split: 'auto' (series: a shared name prefix "
        "and a counter, e.g. rock01-004.png) or a regular expression on file names (its first group is the key); "
        "'none' (default) splits file by file.", DATA, TEXT)
    test_split: float = setting(
        0.0, "Fraction of each class held out as a test set, scored once after training.", DATA,
        Interval(float, 0, 1, "left"))
    patience: int | None = setting(
        5, "Stop a stage after this many epochs without a better validation loss (0: never).", TRAIN, COUNT,
        nullable=True)
    class_weight: str = setting(
        "auto", "'auto' weighs classes inversely to their size when the largest is over 3x the smallest; "
        "'balanced' always; 'none' never.", TRAIN, OneOf(("auto", "balanced", "none")))
    cache: bool = setting(
        True, "Train on cached backbone activations of a few augmented views per image (fast); "
        "--no-cache runs the plain recipe.", TRAIN, BOOL)
    cached_views: int | None = setting(
        None, "Views per training image in the cache, view 0 un-augmented (default: 1 for the solved head alone, "
        "else enough for ~2000 samples, 2-8).",
        TRAIN, POSITIVE_INT)
    strategy: str = setting(
        "default", "'multi-worker': train on the machines named in TF_CONFIG "
        "(tf.distribute.MultiWorkerMirroredStrategy; needs --no-cache); worker 0 writes the run folder.", TRAIN,
        OneOf(("default", "multi-worker")))
    engine: str = setting(
        "local", "ray: with the cache, its backbone pass runs on Ray actors (needs --cache-dir, shared by all "
        "machines); with --no-cache, Ray Train starts --workers multi-worker processes. Needs transferkit[ray].",
        TRAIN, OneOf(("local", "ray")))
    workers: int = setting(2, "--engine ray: Ray actors / training workers.", TRAIN, POSITIVE_INT)
    ray_address: str | None = setting(
        None, "--engine ray: the cluster ('auto', 'ray://host:port'); default: a local Ray instance.", TRAIN, TEXT)
    cache_dir: str | None = setting(
        None, "Keep activation caches here, reused across runs (default: in memory).", TRAIN, TEXT)
    time_budget: str | float | None = setting(
        None, "Finish within this time ('90s', '5m', '1h'): the backbone's speed is measured first, then views, "
        "image size and epochs are chosen to fit; the best epoch so far is always saved.", TRAIN, Duration())
    compute: str = setting(
        "auto", "Runtime of the backbone's forward passes: 'auto' (OpenVINO where installed and agreeing with "
        "Keras, else TensorFlow), 'openvino', 'tensorflow'.", TRAIN, OneOf(COMPUTE))
    from_run: str | None = setting(
        None, "Start from this trained run folder (its weights, backbone and size) instead of ImageNet weights: "
        "the same classes with more images, or new class folders added.", TRAIN,
        InstanceOf((str, os.PathLike), "a run folder path"))
    write_report: bool = setting(True, "Write report.html into the run folder.", OUTPUT, BOOL)
    seed: int = setting(42, "Seed for the split, augmentation and initialisation.", DATA, Interval(int))
    verbose: int = setting(1, "0: silent; 1: progress bars and a summary.", OUTPUT, Interval(int, 0), cli=False)

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def signature(cls, positional: str) -> inspect.Signature:
        """`(self, positional, *, every other setting)`, each with its default: for the API's help."""
        kind = lambda name: inspect.Parameter.POSITIONAL_OR_KEYWORD if name == positional \
            else inspect.Parameter.KEYWORD_ONLY  # noqa: E731
        return inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
            inspect.Parameter(f.name, kind(f.name), default=getattr(cls(), f.name)) for f in cls.fields()])

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in cls.fields()]

    def validate(self) -> "Settings":
        """Check every value against its constraints; raises ConfigError naming what was received."""
        for f in self.fields():
            value = getattr(self, f.name)
            if value is None and f.metadata["nullable"]:
                continue
            constraints = f.metadata["constraints"]
            if constraints and not any(c.accepts(value) for c in constraints):
                allowed = " or ".join(c.describe() for c in constraints)
                hint = (" Use e.g. 0.2 to hold out 20 % of each class, or pass a separate validation folder."
                        if f.name == "val_split" else "")
                raise ConfigError(f"{f.name} must be {allowed}, got {value!r}.{hint}")
        if any(isinstance(u, bool) or not isinstance(u, int) or u <= 0 for u in self.hidden_units):
            raise ConfigError(f"hidden_units must be positive integers, got {list(self.hidden_units)!r}.")
        if self.strategy == "multi-worker" and self.cache:
            raise ConfigError("strategy 'multi-worker' runs the plain recipe on every worker: add --no-cache "
                              "(cache=False); the activation cache makes one machine enough for most sets.")
        if self.engine == "ray" and self.cache and not self.cache_dir:
            raise ConfigError("engine 'ray' with the cache writes its activations into --cache-dir, from where "
                              "training reads them: give one (shared by all machines of the cluster).")
        if self.val_split + self.test_split >= 1.0:
            raise ConfigError(
                f"test_split must be in [0, 1 - val_split), got {self.test_split!r} (val_split {self.val_split}).")
        return self

    def resolve(self) -> "ResolvedSettings":
        """Validate, then fill in what depends on the backbone: image size, augmentation, fine-tuning."""
        self.validate()
        check_compute(self.compute)
        spec = get_backbone(self.backbone)
        image_size = spec.default_size if self.image_size is None else self.image_size
        check_image_size(spec, image_size)
        return ResolvedSettings(
            settings=self, spec=spec, image_size=image_size, augmentation=resolve_augmentation(self.augment),
            fine_tune_at=spec.fine_tune_at if self.fine_tune_at is None else self.fine_tune_at,
            fine_tune_learning_rate=self.fine_tune_learning_rate or self.learning_rate / 10,
        )

    def to_json(self) -> dict:
        params = dataclasses.asdict(self)
        if isinstance(self.augment, Augmentation):
            params["augment"] = dataclasses.asdict(self.augment)
        params["hidden_units"] = list(self.hidden_units)
        params["from_run"] = None if self.from_run is None else str(self.from_run)
        return params

    @classmethod
    def from_json(cls, params: dict) -> "Settings":
        """Settings recorded in a config.json; names this version no longer knows are dropped."""
        known = set(cls.names())
        return cls(**{k: v for k, v in params.items() if k in known})


@dataclass(frozen=True)
class ResolvedSettings:
    """`Settings` with every backbone-dependent default filled in."""

    settings: Settings
    spec: Any  # modeling.backbones.Backbone
    image_size: int
    augmentation: Augmentation
    fine_tune_at: int | str
    fine_tune_learning_rate: float


def check_positive_int(name: str, value, allow_none: bool = True) -> None:
    """For the arguments of a call (not settings): None, or a positive integer."""
    if value is None and allow_none:
        return
    if not POSITIVE_INT.accepts(value):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
