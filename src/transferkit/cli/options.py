"""Options shared by several commands, declared once as `Annotated` aliases.

The training options come from `transferkit.settings.Settings` (help, panel, default),
so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from transferkit.modeling.augment import FLIP_MODES
from transferkit.settings import AUG, Settings

# The CLI type of each setting whose Python type typer cannot take as it is.
_CLI_TYPES = {"image_size": Optional[int], "weights_dir": Optional[Path], "augment": str, "epochs": Optional[int],
              "fine_tune_epochs": Optional[int], "fine_tune_learning_rate": Optional[float],
              "fine_tune_at": Optional[str], "hidden_units": Optional[List[int]], "patience": int,
              "cached_views": Optional[int], "cache_dir": Optional[Path], "time_budget": Optional[str],
              "from_run": Optional[Path], "ray_address": Optional[str]}
_FLAGS = {"cache": ("--cache/--no-cache",), "write_report": ("--report/--no-report",), "from_run": ("--from",)}

RunDir = Annotated[Path, typer.Argument(help="A run folder written by `transferkit train`.", show_default=False)]
DataDir = Annotated[str, typer.Argument(
    help="Folder with one sub-folder of images per class, or tfds:NAME[:SPLIT], or an http(s) .zip/.tar.gz URL "
    "(optionally #sha256=HEX); see `transferkit datasets`.", show_default=False)]
TfdsDataDir = Annotated[Optional[Path], typer.Option(
    "--tfds-data-dir", envvar="TFDS_DATA_DIR", help="Where prepared TensorFlow Datasets live, for tfds:NAME "
    "(nothing is downloaded).", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the summary.")]

# Per-transform overrides of the augmentation preset (train, preview).
AUGMENT_OVERRIDES = {
    "flip": (Optional[str], f"Override: {', '.join(FLIP_MODES)}."),
    "rotation": (Optional[float], "Override: max rotation, fraction of a full turn."),
    "zoom": (Optional[float], "Override: max zoom in/out fraction."),
    "shift": (Optional[float], "Override: max shift, fraction of width/height."),
    "shear": (Optional[float], "Override: max shear factor."),
    "brightness": (Optional[float], "Override: max brightness change, fraction of range."),
    "contrast": (Optional[float], "Override: max contrast change factor."),
}


def _setting_parameter(f: dataclasses.Field, panel: str | None = None) -> inspect.Parameter:
    kind = _CLI_TYPES.get(f.name, type(f.default))
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if f.name == "hidden_units":
        default = None
    option = typer.Option(*_FLAGS.get(f.name, ()), help=f.metadata["help"], rich_help_panel=panel or f.metadata["panel"],
                          show_default=default is not None)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option])


def _override_parameters() -> list[inspect.Parameter]:
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[kind, typer.Option(help=text, rich_help_panel=AUG, show_default=False)])
            for name, (kind, text) in AUGMENT_OVERRIDES.items()]


def _cli_value(name: str, value):
    if value is None:
        return None
    if name == "fine_tune_at":
        return int(value) if value.lstrip("-").isdigit() else value
    if name == "hidden_units":
        return tuple(value)
    return str(value) if isinstance(value, Path) else value


def with_settings(names: list[str] | None = None, panel: str | None = None):
    """Add the `Settings` fields `names` (default: every CLI setting) and the augmentation overrides
    as options of a command, which then receives them as one `settings` dict (API keywords)."""
    fields = [f for f in Settings.fields() if f.metadata["cli"] and (names is None or f.name in names)]

    def decorate(function):
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in signature.parameters.values() if p.name != "settings"]
        extra = [_setting_parameter(f, panel) for f in fields]
        if any(f.name == "augment" for f in fields):
            extra += _override_parameters()

        @functools.wraps(function)
        def run(*args, **kwargs):
            from transferkit.modeling.augment import resolve_augmentation

            overrides = {name: kwargs.pop(name) for name in AUGMENT_OVERRIDES if name in kwargs}
            settings = {f.name: _cli_value(f.name, kwargs.pop(f.name)) for f in fields}
            if "hidden_units" in settings:
                settings["hidden_units"] = settings["hidden_units"] or ()
            if "augment" in settings:
                settings["augment"] = resolve_augmentation(settings["augment"], **overrides)
            return function(*args, settings=settings, **kwargs)

        run.__signature__ = signature.replace(parameters=own + extra)
        del run.__wrapped__  # typer must read the new signature, not the function's own
        return run

    return decorate
