"""The `transferkit` command: a thin typer layer over `transferkit.api`."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from transferkit import __version__
from transferkit.augment import FLIP_MODES, PRESETS
from transferkit.backbones import WEIGHTS_DIR_ENV
from transferkit.errors import TransferkitError

app = typer.Typer(
    name="transferkit",
    help="Turn a folder of class-named image folders into an accurate image classifier "
    "by transfer learning, on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DATA_PANEL, MODEL_PANEL, TRAIN_PANEL, AUG_PANEL, OUT_PANEL = "Data", "Backbone and head", "Training", "Augmentation", "Output"


def _setup_logging(quiet: bool) -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("transferkit")
    logger.handlers[:] = [RichHandler(console=err, show_time=False, show_path=False)]
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False


def _fail(error: Exception) -> None:
    err.print(f"[bold red]Error:[/] {error}", highlight=False)
    raise typer.Exit(code=2)


def _version(value: bool):
    if value:
        out.print(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    pass


def _parse_fine_tune_at(value: Optional[str]):
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


@app.command()
def train(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class.", show_default=False),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run folder to write (default: runs/<data folder name>, numbered if taken).",
        rich_help_panel=OUT_PANEL, show_default=False,
    ),
    overwrite: bool = typer.Option(False, help="Allow writing into a non-empty --out folder.", rich_help_panel=OUT_PANEL),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the results instead of progress.", rich_help_panel=OUT_PANEL),
    val_dir: Optional[Path] = typer.Option(None, help="Separate validation folder with the same classes (replaces --val-split).", rich_help_panel=DATA_PANEL, show_default=False),
    val_split: float = typer.Option(0.2, help="Fraction of each class held out for validation.", rich_help_panel=DATA_PANEL),
    seed: int = typer.Option(42, help="Seed for the split, augmentation and initialisation.", rich_help_panel=DATA_PANEL),
    image_size: Optional[int] = typer.Option(None, help="Square input size in px (default: the backbone's, 160 for mobilenet_v2).", rich_help_panel=DATA_PANEL, show_default=False),
    batch_size: int = typer.Option(32, help="Images per optimisation step.", rich_help_panel=DATA_PANEL),
    backbone: str = typer.Option("mobilenet_v2", help="Pretrained CNN (see `transferkit backbones`).", rich_help_panel=MODEL_PANEL),
    weights: str = typer.Option("imagenet", help="'imagenet' (local file first, then Keras download), 'none', or a weights file path.", rich_help_panel=MODEL_PANEL),
    weights_dir: Optional[Path] = typer.Option(None, help=f"Folder with local ImageNet weight files (also ${WEIGHTS_DIR_ENV}).", rich_help_panel=MODEL_PANEL, show_default=False),
    dropout: float = typer.Option(0.2, help="Dropout rate before the classifier layer.", rich_help_panel=MODEL_PANEL),
    hidden_units: Optional[List[int]] = typer.Option(None, help="Extra dense ReLU layer in the head; repeat for more (e.g. --hidden-units 256).", rich_help_panel=MODEL_PANEL, show_default=False),
    epochs: Optional[int] = typer.Option(None, help="Stage-1 (head) epochs; default: enough for ~300 optimisation steps, 10-50.", rich_help_panel=TRAIN_PANEL, show_default=False),
    learning_rate: float = typer.Option(1e-3, help="Stage-1 Adam learning rate.", rich_help_panel=TRAIN_PANEL),
    fine_tune_epochs: Optional[int] = typer.Option(None, help="Stage-2 epochs (0 skips fine-tuning); default: enough for ~100 steps, 5-15.", rich_help_panel=TRAIN_PANEL, show_default=False),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, help="Stage-2 learning rate (default: a tenth of --learning-rate).", rich_help_panel=TRAIN_PANEL, show_default=False),
    fine_tune_at: Optional[str] = typer.Option(None, help="Backbone layer index or name where unfreezing starts (default per backbone, 100 for mobilenet_v2).", rich_help_panel=TRAIN_PANEL, show_default=False),
    patience: int = typer.Option(5, help="Stop a stage after this many epochs without a better validation loss (0: never).", rich_help_panel=TRAIN_PANEL),
    augment: str = typer.Option("standard", help=f"Preset: {', '.join(PRESETS)}.", rich_help_panel=AUG_PANEL),
    flip: Optional[str] = typer.Option(None, help=f"Override: {', '.join(FLIP_MODES)}.", rich_help_panel=AUG_PANEL, show_default=False),
    rotation: Optional[float] = typer.Option(None, help="Override: max rotation, fraction of a full turn.", rich_help_panel=AUG_PANEL, show_default=False),
    zoom: Optional[float] = typer.Option(None, help="Override: max zoom in/out fraction.", rich_help_panel=AUG_PANEL, show_default=False),
    shift: Optional[float] = typer.Option(None, help="Override: max shift, fraction of width/height.", rich_help_panel=AUG_PANEL, show_default=False),
    shear: Optional[float] = typer.Option(None, help="Override: max shear factor.", rich_help_panel=AUG_PANEL, show_default=False),
    brightness: Optional[float] = typer.Option(None, help="Override: max brightness change, fraction of range.", rich_help_panel=AUG_PANEL, show_default=False),
    contrast: Optional[float] = typer.Option(None, help="Override: max contrast change factor.", rich_help_panel=AUG_PANEL, show_default=False),
):
    """Train a classifier on DATA_DIR: head on a frozen backbone, then fine-tuning; saves a run folder."""
    _setup_logging(quiet=as_json)
    from transferkit.api import ImageClassifier
    from transferkit.augment import resolve_augmentation
    from transferkit.rundir import next_free_dir

    try:
        augmentation = resolve_augmentation(
            augment, flip=flip, rotation=rotation, zoom=zoom, shift=shift, shear=shear,
            brightness=brightness, contrast=contrast,
        )
        if out_dir is None:
            out_dir = next_free_dir(Path("runs") / (data_dir.resolve().name or "run"))
        classifier = ImageClassifier(
            backbone, image_size=image_size, weights=weights, weights_dir=str(weights_dir) if weights_dir else None,
            augment=augmentation, epochs=epochs, learning_rate=learning_rate, fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=fine_tune_learning_rate, fine_tune_at=_parse_fine_tune_at(fine_tune_at),
            dropout=dropout, hidden_units=tuple(hidden_units or ()), batch_size=batch_size, val_split=val_split,
            patience=patience, seed=seed, verbose=0 if as_json else 1,
        )
        classifier.fit(data_dir, val_dir=val_dir, out=out_dir, overwrite=overwrite)
    except TransferkitError as error:
        _fail(error)
    results = classifier.results_
    if as_json:
        print(json.dumps(results))
        return
    table = Table(title="transferkit: training finished", show_header=False, title_justify="left")
    table.add_row("classes", ", ".join(results["classes"]))
    table.add_row("images", f"{results['train_images']} training, {results['val_images']} validation")
    table.add_row("val accuracy, head only", _pct(results["val_accuracy_stage1"]))
    table.add_row("val accuracy, final", f"{_pct(results['val_accuracy'])} (best epoch {results['best_epoch']} of {results['epochs_run']})")
    table.add_row("time", f"{results['seconds']:.1f} s")
    table.add_row("run folder", results["run_dir"])
    out.print(table)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively).", show_default=False),
    top_k: int = typer.Option(1, help="Show the k most probable classes per image."),
    batch_size: int = typer.Option(32, help="Images per inference batch."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
):
    """Label each image with the trained classifier (label and confidence)."""
    _setup_logging(quiet=False)
    from transferkit.api import ImageClassifier

    try:
        classifier = ImageClassifier.load(run_dir)
        classifier.verbose = 0 if (as_json or as_csv) else 1
        predictions = classifier.predict(inputs, top_k=top_k, batch_size=batch_size)
    except TransferkitError as error:
        _fail(error)
    if as_json:
        print(json.dumps([
            {"path": p.path, "label": p.label, "confidence": p.confidence,
             "top_k": [{"label": label, "probability": prob} for label, prob in p.top_k]}
            for p in predictions
        ], indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "label", "confidence"] + [f"top{i + 1}" for i in range(1, top_k)])
        for p in predictions:
            writer.writerow([p.path, p.label, f"{p.confidence:.6f}"] + [f"{label}:{prob:.6f}" for label, prob in p.top_k[1:]])
    else:
        table = Table("path", "label", "confidence", *(["top-k"] if top_k > 1 else []))
        for p in predictions:
            extra = [", ".join(f"{label} {prob:.1%}" for label, prob in p.top_k)] if top_k > 1 else []
            table.add_row(p.path, p.label, f"{p.confidence:.1%}", *extra)
        out.print(table)
        out.print(f"{len(predictions)} image(s) classified.")


@app.command()
def backbones(
    weights_dir: Optional[Path] = typer.Option(None, help=f"Weights folder to check (also ${WEIGHTS_DIR_ENV}).", show_default=False),
):
    """List the available backbones and whether their ImageNet weights are found locally."""
    from transferkit.backbones import BACKBONES, find_local_weights

    table = Table("name", "Keras application", "default size", "fine-tune from", "local ImageNet weights")
    for spec in BACKBONES.values():
        local = find_local_weights(spec, weights_dir)
        table.add_row(
            spec.name, spec.application, str(spec.default_size), str(spec.fine_tune_at),
            str(local) if local else f"[dim]not found ({spec.weight_files[0]}); Keras download[/]",
        )
    out.print(table)


def main():
    app()
