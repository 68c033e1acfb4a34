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
from transferkit.errors import ConfigError, TransferkitError

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


# Shared by every command that builds the augmentation (train, preview).
AUGMENT_OPTIONS = {
    "augment": typer.Option("standard", help=f"Preset: {', '.join(PRESETS)}.", rich_help_panel=AUG_PANEL),
    "flip": typer.Option(None, help=f"Override: {', '.join(FLIP_MODES)}.", rich_help_panel=AUG_PANEL, show_default=False),
    "rotation": typer.Option(None, help="Override: max rotation, fraction of a full turn.", rich_help_panel=AUG_PANEL, show_default=False),
    "zoom": typer.Option(None, help="Override: max zoom in/out fraction.", rich_help_panel=AUG_PANEL, show_default=False),
    "shift": typer.Option(None, help="Override: max shift, fraction of width/height.", rich_help_panel=AUG_PANEL, show_default=False),
    "shear": typer.Option(None, help="Override: max shear factor.", rich_help_panel=AUG_PANEL, show_default=False),
    "brightness": typer.Option(None, help="Override: max brightness change, fraction of range.", rich_help_panel=AUG_PANEL, show_default=False),
    "contrast": typer.Option(None, help="Override: max contrast change factor.", rich_help_panel=AUG_PANEL, show_default=False),
}


def _augment_overrides(params: dict) -> dict:
    """The per-transform override options out of a command's parameters."""
    return {name: params[name] for name in AUGMENT_OPTIONS if name != "augment"}


def _setup_logging(quiet: bool) -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("transferkit")
    logger.handlers[:] = [RichHandler(console=err, show_time=False, show_path=False)]
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False


def _fail(error: Exception) -> None:
    err.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
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
    resume: bool = typer.Option(False, "--resume", help="Continue the killed or interrupted run in --out from its last completed epoch, with its original settings.", rich_help_panel=OUT_PANEL),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the results instead of progress.", rich_help_panel=OUT_PANEL),
    write_report: bool = typer.Option(True, "--report/--no-report", help="Write report.html into the run folder (10-20 s).", rich_help_panel=OUT_PANEL),
    val_dir: Optional[Path] = typer.Option(None, help="Separate validation folder with the same classes (replaces --val-split).", rich_help_panel=DATA_PANEL, show_default=False),
    val_split: float = typer.Option(0.2, help="Fraction of each class held out for validation.", rich_help_panel=DATA_PANEL),
    test_split: float = typer.Option(0.0, help="Fraction of each class held out as a test set, scored once after training.", rich_help_panel=DATA_PANEL),
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
    fine_tune_epochs: Optional[int] = typer.Option(None, help="Stage-2 epochs (0 skips fine-tuning); default: enough for ~100 steps, 2-15.", rich_help_panel=TRAIN_PANEL, show_default=False),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, help="Stage-2 learning rate (default: a tenth of --learning-rate).", rich_help_panel=TRAIN_PANEL, show_default=False),
    fine_tune_at: Optional[str] = typer.Option(None, help="Backbone layer index or name where unfreezing starts (default per backbone, 100 for mobilenet_v2).", rich_help_panel=TRAIN_PANEL, show_default=False),
    patience: int = typer.Option(5, help="Stop a stage after this many epochs without a better validation loss (0: never).", rich_help_panel=TRAIN_PANEL),
    class_weight: str = typer.Option("auto", help="'auto' weighs classes inversely to their size when the largest is over 3x the smallest; 'balanced' always; 'none' never.", rich_help_panel=TRAIN_PANEL),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Train on cached backbone activations of a few augmented views per image (fast); --no-cache runs the plain recipe.", rich_help_panel=TRAIN_PANEL),
    cached_views: Optional[int] = typer.Option(None, help="Views per training image in the cache, view 0 un-augmented (default: enough for ~2000 samples, 2-8).", rich_help_panel=TRAIN_PANEL, show_default=False),
    cache_dir: Optional[Path] = typer.Option(None, help="Keep activation caches here, reused across runs (default: in memory).", rich_help_panel=TRAIN_PANEL, show_default=False),
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

    verbose = 0 if as_json else 1
    try:
        if resume:
            if out_dir is None:
                raise ConfigError("--resume needs --out: the run folder to continue.")
            classifier = ImageClassifier.resume(out_dir, verbose=verbose)
        else:
            augmentation = resolve_augmentation(augment, **_augment_overrides(locals()))
            classifier = ImageClassifier(
                backbone, image_size=image_size, weights=weights, weights_dir=str(weights_dir) if weights_dir else None,
                augment=augmentation, epochs=epochs, learning_rate=learning_rate, fine_tune_epochs=fine_tune_epochs,
                fine_tune_learning_rate=fine_tune_learning_rate, fine_tune_at=_parse_fine_tune_at(fine_tune_at),
                dropout=dropout, hidden_units=tuple(hidden_units or ()), batch_size=batch_size, val_split=val_split,
                test_split=test_split, patience=patience, class_weight=class_weight, cache=cache,
                cached_views=cached_views, cache_dir=str(cache_dir) if cache_dir else None, write_report=write_report,
                seed=seed, verbose=verbose,
            )
            out_dir = out_dir or next_free_dir(Path("runs") / (data_dir.resolve().name or "run"))
            classifier.fit(data_dir, val_dir=val_dir, out=out_dir, overwrite=overwrite)
    except TransferkitError as error:
        _fail(error)
    _print_training_results(classifier.results_, as_json)


def _print_training_results(results: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results))
        return
    table = Table(title="transferkit: training finished", show_header=False, title_justify="left")
    table.add_row("classes", ", ".join(results["classes"]))
    table.add_row("images", f"{results['train_images']} training, {results['val_images']} validation")
    table.add_row("val accuracy, head only", _pct(results["val_accuracy_stage1"]))
    table.add_row("val accuracy, final", f"{_pct(results['val_accuracy'])} (best epoch {results['best_epoch']} of {results['epochs_run']})")
    if results.get("test_images"):
        table.add_row("test accuracy", f"{_pct(results['test_accuracy'])} on {results['test_images']} held-out images")
    interrupted = " (interrupted with Ctrl-C; --resume continues it)" if results.get("interrupted") else ""
    table.add_row("time", f"{results['seconds']:.1f} s{interrupted}")
    table.add_row("run folder", results["run_dir"])
    out.print(table)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`, or a model written by `transferkit export` (.tflite file, SavedModel folder, .onnx file).", show_default=False),
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively).", show_default=False),
    top_k: int = typer.Option(1, help="Show the k most probable classes per image."),
    batch_size: Optional[int] = typer.Option(None, help="Images per inference batch (default: 8 for TFLite, 32 otherwise).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    explain_dir: Optional[Path] = typer.Option(None, "--explain", help="Also write a Grad-CAM overlay per image (predicted class) into this folder.", show_default=False),
    runtime: str = typer.Option("auto", help="auto: the fastest available (for a run folder, a TFLite copy that passed the parity check, else Keras); or keras, tflite, savedmodel, onnx."),
):
    """Label each image with the trained classifier (label and confidence); images/s on stderr."""
    _setup_logging(quiet=False)
    from transferkit.serve import Predictor

    try:
        predictor = Predictor(run_dir, runtime=runtime, verbose=0 if (as_json or as_csv) else 1)
        if explain_dir is not None and predictor.classifier is None:
            raise ConfigError("--explain (Grad-CAM) needs the Keras model: pass the run folder, not an exported model.")
        predictions = predictor.predict(inputs, top_k=top_k, batch_size=batch_size)
        overlays = _explain_predictions(predictor.classifier, predictions, explain_dir)
    except TransferkitError as error:
        _fail(error)
    if as_json:
        print(json.dumps([
            {"path": p.path, "label": p.label, "confidence": p.confidence,
             "top_k": [{"label": label, "probability": prob} for label, prob in p.top_k],
             **({"gradcam": overlays.get(p.path)} if explain_dir is not None else {})}
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
    if explain_dir is not None and not as_json:
        err.print(f"{len(overlays)} Grad-CAM overlay(s) written to {explain_dir}", highlight=False)
    _print_throughput(predictor)


def _print_throughput(predictor) -> None:
    """images/s of the prediction itself (decoding included), on stderr so --json/--csv stay clean."""
    stats = predictor.last_stats
    if predictor.conversion:
        c = predictor.conversion
        err.print(f"converted to TFLite once in {c['seconds']:.1f} s (top-1 agreement with Keras "
                  f"{c['parity']['agreement']:.1%} on {c['parity']['images']} images), cached: {c['path']}", highlight=False,
                  soft_wrap=True)
    if stats.get("images_per_second"):
        err.print(f"{stats['images']} image(s) in {stats['seconds']:.2f} s: {stats['images_per_second']:.1f} images/s "
                  f"({stats['description']}, batch {stats['batch_size']})", highlight=False, soft_wrap=True)


def _explain_predictions(classifier, predictions, explain_dir) -> dict:
    """Grad-CAM overlays for the predicted class of each classified image: {path: overlay path}."""
    if explain_dir is None or not predictions:
        return {}
    return {e.path: e.overlay_path for e in classifier.explain([p.path for p in predictions], out=explain_dir)}


@app.command()
def backbones(
    weights_dir: Optional[Path] = typer.Option(None, help=f"Weights folder to check (also ${WEIGHTS_DIR_ENV}).", show_default=False),
):
    """List the available backbones and whether their ImageNet weights are found locally."""
    from transferkit.backbones import BACKBONES, find_local_weights

    table = Table("name", "Keras application", "size", "fine-tune from", "ImageNet weights")
    table.columns[0].no_wrap = True
    missing = []
    for spec in BACKBONES.values():
        local = find_local_weights(spec, weights_dir)
        table.add_row(spec.name, spec.application, str(spec.default_size), str(spec.fine_tune_at),
                      f"[green]local[/] {local.name}" if local else "[yellow]download[/]")
        if not local:
            missing.append(spec.weight_files[0])
    out.print(table)
    out.print(
        "Local weights are looked for in --weights-dir and $" + WEIGHTS_DIR_ENV + "; 'download' means Keras "
        "fetches them on first use (offline: put e.g. " + (missing[0] if missing else "the file") + " in that folder)."
    )


def _load_run(run_dir: Path, verbose: bool = True):
    from transferkit.api import ImageClassifier

    classifier = ImageClassifier.load(run_dir)
    classifier.verbose = 1 if verbose else 0
    return classifier


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    data_dir: Optional[Path] = typer.Argument(None, help="Labelled folder, one sub-folder per class (default: the run's validation split, from split.csv).", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json, predictions.csv, misclassified.csv/.png and confusion_matrix.png (default: RUN_DIR/evaluation/<validation or DATA_DIR name>).", show_default=False),
    allow_class_subset: bool = typer.Option(False, help="Evaluate on the classes DATA_DIR shares with the model when they differ."),
    split: str = typer.Option("validation", help="Without DATA_DIR: the run's 'validation' or 'test' split."),
    batch_size: int = typer.Option(32, help="Images per inference batch."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
):
    """Accuracy, per-class precision/recall/F1, confusion matrix, ROC-AUC or top-k, log loss and the mistakes."""
    _setup_logging(quiet=as_json)
    try:
        classifier = _load_run(run_dir, verbose=not as_json)
        if out_dir is None:
            out_dir = run_dir / "evaluation" / (split if data_dir is None else (data_dir.resolve().name or "data"))
        metrics = classifier.evaluate(data_dir, batch_size, out=out_dir, allow_class_subset=allow_class_subset,
                                      run_dir=run_dir, split=split)
    except TransferkitError as error:
        _fail(error)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    extra = [f"ROC-AUC {metrics['roc_auc']:.3f}"] if metrics.get("roc_auc") is not None else []
    extra += [f"top-{k} {_pct(v)}" for k, v in metrics.get("top_k_accuracy", {}).items()]
    out.print(
        f"[bold]{metrics['source']}[/]: {metrics['images']} images, accuracy [bold]{_pct(metrics['accuracy'])}[/], "
        f"log loss {metrics['loss']:.3f}" + "".join(f", {e}" for e in extra), highlight=False,
    )
    table = Table("class", "precision", "recall", "F1", "support")
    for name, m in metrics["per_class"].items():
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        m = metrics[key]
        table.add_row(f"[italic]{label}[/]", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    out.print(table)
    if metrics["missing_classes"] or metrics["extra_classes"]:
        out.print(f"Classes left out: model classes without a folder {metrics['missing_classes']}, "
                  f"folders the model does not know {metrics['extra_classes']}.", highlight=False)
    if metrics["unreadable"]:
        out.print(f"{len(metrics['unreadable'])} unreadable image(s) skipped: {', '.join(metrics['unreadable'])}", highlight=False)
    out.print(f"{metrics['misclassified']} misclassified; files in {out_dir}", highlight=False)


@app.command()
def explain(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively).", show_default=False),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class instead of each image's predicted class.", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the overlay PNGs (default: RUN_DIR/explanations).", show_default=False),
    layer: Optional[str] = typer.Option(None, help="Backbone layer for Grad-CAM (default: its last feature map; see `activations --list-layers`).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
):
    """Grad-CAM: a heatmap over each image of where the evidence for the class lies, saved as overlay PNGs."""
    _setup_logging(quiet=False)
    try:
        classifier = _load_run(run_dir, verbose=False)
        target = out_dir if out_dir is not None else run_dir / "explanations"
        explanations = classifier.explain(images, class_name=class_name, out=target, layer=layer)
    except TransferkitError as error:
        _fail(error)
    if as_json:
        print(json.dumps([
            {"path": e.path, "predicted": e.predicted, "confidence": e.confidence, "explained_class": e.class_name,
             "probability": e.probability, "overlay": e.overlay_path}
            for e in explanations
        ], indent=2))
        return
    table = Table("image", "predicted", "map for class", "overlay file")
    table.columns[0].overflow = table.columns[3].overflow = "fold"
    for e in explanations:
        table.add_row(e.path, f"{e.predicted} ({e.confidence:.1%})", f"{e.class_name} ({e.probability:.1%})",
                      Path(e.overlay_path).name)
    out.print(table)
    out.print(f"{len(explanations)} Grad-CAM overlay(s) written to {target}", highlight=False)


@app.command()
def activations(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    image: Optional[Path] = typer.Argument(None, help="One image file.", show_default=False),
    layers: Optional[List[str]] = typer.Option(None, "--layers", "-l", help="Backbone layer name or index; repeat or comma-separate (default: early, middle and late layers).", show_default=False),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print the backbone's layers with their output shapes and exit."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the grids (default: RUN_DIR/activations).", show_default=False),
    max_channels: int = typer.Option(32, help="Channels shown per layer (those varying most across the image)."),
):
    """Feature maps of backbone layers for one image: one PNG grid per layer, one tile per channel."""
    _setup_logging(quiet=False)
    from transferkit.errors import ConfigError
    try:
        classifier = _load_run(run_dir, verbose=False)
        if list_layers:
            table = Table("index", "name", "type", "output shape", title="Backbone layers")
            for row in classifier.backbone_layers():
                table.add_row(str(row["index"]), row["name"], row["type"], "x".join(map(str, row["output_shape"])))
            out.print(table)
            return
        if image is None:
            raise ConfigError("Pass one IMAGE to show the feature maps of (or --list-layers to list the layers).")
        chosen = [part.strip() for item in (layers or []) for part in item.split(",") if part.strip()]
        target = out_dir if out_dir is not None else run_dir / "activations"
        grids = classifier.activations(image, layers=chosen or None, out=target, max_channels=max_channels)
    except TransferkitError as error:
        _fail(error)
    table = Table("index", "layer", "output", "channels shown", "grid")
    table.columns[4].overflow = "fold"
    for g in grids:
        table.add_row(str(g.index), g.layer, "x".join(map(str, g.shape)), str(len(g.channels)), g.path)
    out.print(table)


@app.command()
def preview(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class.", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for samples.png and augmentation.png (default: runs/<data folder>-preview).", show_default=False),
    draws: int = typer.Option(8, help="Random augmentation draws of the previewed image."),
    image: Optional[Path] = typer.Option(None, help="Image to show under augmentation (default: one of the samples).", show_default=False),
    backbone: str = typer.Option("mobilenet_v2", help="Backbone whose default input size is used."),
    image_size: Optional[int] = typer.Option(None, help="Square input size in px (default: the backbone's).", show_default=False),
    seed: int = typer.Option(42, help="Seed for the samples and the augmentation draws."),
    augment: str = typer.Option("standard", help=f"Preset: {', '.join(PRESETS)}.", rich_help_panel=AUG_PANEL),
    flip: Optional[str] = typer.Option(None, help=f"Override: {', '.join(FLIP_MODES)}.", rich_help_panel=AUG_PANEL, show_default=False),
    rotation: Optional[float] = typer.Option(None, help="Override: max rotation, fraction of a full turn.", rich_help_panel=AUG_PANEL, show_default=False),
    zoom: Optional[float] = typer.Option(None, help="Override: max zoom in/out fraction.", rich_help_panel=AUG_PANEL, show_default=False),
    shift: Optional[float] = typer.Option(None, help="Override: max shift, fraction of width/height.", rich_help_panel=AUG_PANEL, show_default=False),
    shear: Optional[float] = typer.Option(None, help="Override: max shear factor.", rich_help_panel=AUG_PANEL, show_default=False),
    brightness: Optional[float] = typer.Option(None, help="Override: max brightness change, fraction of range.", rich_help_panel=AUG_PANEL, show_default=False),
    contrast: Optional[float] = typer.Option(None, help="Override: max contrast change factor.", rich_help_panel=AUG_PANEL, show_default=False),
):
    """Show a dataset before training: labelled sample grid, and one image under random augmentation draws."""
    _setup_logging(quiet=False)
    from transferkit.api import ImageClassifier
    from transferkit.augment import resolve_augmentation

    try:
        augmentation = resolve_augmentation(augment, **_augment_overrides(locals()))
        if out_dir is None:
            out_dir = Path("runs") / f"{data_dir.resolve().name or 'data'}-preview"
        classifier = ImageClassifier(backbone, image_size=image_size, augment=augmentation, seed=seed, verbose=0)
        result = classifier.preview(data_dir, out_dir, draws=draws, image=image)
    except TransferkitError as error:
        _fail(error)
    counts = ", ".join(f"{name} {n}" for name, n in result["class_counts"].items())
    out.print(f"{len(result['classes'])} classes, {result['images']} images ({counts})", highlight=False)
    out.print(f"sample grid: {result['samples']}", highlight=False)
    if result["augmentation"]:
        out.print(f"augmentation preview ({draws} draws of {result['augmented_image']}): {result['augmentation']}", highlight=False)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
):
    """Rebuild RUN_DIR/report.html: config, data, samples, augmentation, curves, metrics, mistakes, Grad-CAM, activations."""
    _setup_logging(quiet=False)
    try:
        path = _load_run(run_dir, verbose=False).report(run_dir)
    except TransferkitError as error:
        _fail(error)
    out.print(f"report written: {path}", highlight=False)


@app.command()
def doctor(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (findings, class counts, duplicates) instead of the report."),
    max_pixels: int = typer.Option(89_478_485, help="Refuse, undecoded, any image with more pixels (decompression bombs); warn above half of it."),
    min_size: int = typer.Option(32, help="Warn about images whose shorter side has fewer pixels."),
    near_distance: int = typer.Option(32, help="Perceptual-hash bits (of 256) within which two images are near duplicates."),
    val_dir: Optional[Path] = typer.Option(None, help="Validation folder with the same classes: scanned too, and checked for images leaked from DATA_DIR.", show_default=False),
    test_dir: Optional[Path] = typer.Option(None, help="Test folder with the same classes: scanned too, and checked for leaks.", show_default=False),
    cache: Optional[Path] = typer.Option(None, help="JSON cache file (outside the scanned folders): a re-run decodes only changed files.", show_default=False),
    show_all: bool = typer.Option(False, "--all", help="List every finding; by default the report shows the first 10 of each problem (--json always has all)."),
):
    """Decode every file of DATA_DIR and report, per file, what training would skip and why; nothing is written there.

    Exit code 0: clean (notes allowed); 1: warnings only; 2: at least one error, i.e. a file training would
    skip or a problem that stops it (fewer than two classes, a class with no usable image).
    """
    _setup_logging(quiet=as_json)
    from rich.progress import Progress

    from transferkit.doctor import scan_dataset

    try:
        with Progress(console=err, transient=True, disable=as_json) as bar:
            task = bar.add_task("decoding images", total=None)
            result = scan_dataset(
                data_dir, val_dir=val_dir, test_dir=test_dir, max_pixels=max_pixels, min_size=min_size,
                near_distance=near_distance, cache_path=cache,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except TransferkitError as error:
        _fail(error)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_doctor_report(result, None if show_all else 10)
    raise typer.Exit(code=result.exit_code)


def _print_doctor_report(result, per_code: Optional[int]) -> None:
    """Findings grouped by severity (paths relative to DATA_DIR; `per_code` rows of each problem at most),
    then counts, duplicates and the verdict."""
    import os

    from rich.markup import escape

    from transferkit.doctor import ERROR, INFO, WARNING

    def shown(path: str) -> str:
        relative = os.path.relpath(path, result.data_dir)
        return escape(path if relative.startswith("..") else relative)

    sections = ((ERROR, "Errors: files training skips, or problems that stop it", "bold red"),
                (WARNING, "Warnings: used, but worth a look", "bold yellow"),
                (INFO, "Notes: handled automatically", "bold"))
    for severity, title, style in sections:
        findings = result.of(severity)
        if findings:
            table = Table("path", "problem", "reason", title=f"{title} ({len(findings)})", title_justify="left",
                          title_style=style)
            listed: dict = {}
            for finding in findings:
                listed[finding.code] = listed.get(finding.code, 0) + 1
                if per_code is None or listed[finding.code] <= per_code:
                    table.add_row(shown(finding.path), finding.code, escape(finding.reason))
            for code, count in listed.items():
                if per_code is not None and count > per_code:
                    table.add_row("[dim]...[/]", code, f"[dim]and {count - per_code} more (--all or --json lists them)[/]")
            out.print(table)
    counts = Table("split", "class", "image files", "usable", "skipped", title="Images per class", title_justify="left")
    for s in result.class_summaries:
        counts.add_row(s.split, escape(s.name), str(s.images), str(s.usable), str(s.skipped))
    out.print(counts)
    if result.imbalance_ratio is not None:
        out.print(f"Imbalance ratio (largest / smallest training class): {result.imbalance_ratio:.2f}", highlight=False)
    exact = [g for g in result.duplicates if g.kind == "exact"]
    near = [g for g in result.duplicates if g.kind == "near"]
    across_classes = sum(len(set(g.classes)) > 1 for g in result.duplicates)
    across_splits = sum(len(set(g.splits)) > 1 for g in result.duplicates)
    out.print(f"Duplicates: {len(exact)} group(s) of identical files, {len(near)} of near-identical ones "
              f"({across_classes} across classes, {across_splits} across splits)", highlight=False)
    out.print(f"{len(result.images)} image file(s) checked in {result.seconds:.1f} s ({result.decoded} decoded, "
              f"{result.cached} from the cache)", highlight=False)
    verdict = {0: "[bold green]clean[/]", 1: "[bold yellow]warnings only: training will run[/]",
               2: "[bold red]training would skip files, or cannot run[/]"}[result.exit_code]
    out.print(f"{len(result.of(ERROR))} error(s), {len(result.of(WARNING))} warning(s), {len(result.of(INFO))} "
              f"note(s): {verdict} (exit {result.exit_code})", highlight=False)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    format: str = typer.Option("tflite", "--format", "-f", help="savedmodel, tflite, tflite-fp16, tflite-int8 or onnx."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default: RUN_DIR/export/ model.tflite, model_fp16.tflite, model_int8.tflite, model.onnx or savedmodel/).", show_default=False),
    calibration_images: int = typer.Option(100, help="tflite-int8: number of the run's training images that calibrate the quantisation."),
    calibration_dir: Optional[Path] = typer.Option(None, help="tflite-int8: calibrate on the images in this folder instead.", show_default=False),
    parity_images: Optional[int] = typer.Option(None, help="Validation images the parity check runs on (default: all of the run's).", show_default=False),
    overwrite: bool = typer.Option(False, help="Replace an existing export at the output path."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the summary."),
):
    """Export the model for deployment, with its class names, then check its top-1 against the Keras model.

    Exit code 0: written and the parity check passed (>= 99 % top-1 agreement, 97 % for tflite-int8);
    1: written, but the check failed; 2: bad input.
    """
    _setup_logging(quiet=as_json)
    from transferkit.export import export_model

    try:
        result = export_model(run_dir, format, out_path, overwrite=overwrite, parity_images=parity_images,
                              calibration_images=str(calibration_dir) if calibration_dir else calibration_images)
    except TransferkitError as error:
        _fail(error)
    parity = result.parity
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        table = Table(title=f"transferkit: {result.format} export", show_header=False, title_justify="left")
        table.add_row("model", str(result.path))
        table.add_row("size", f"{result.size_bytes / 1e6:.2f} MB")
        table.add_row("class names", f"{result.labels_path} (also embedded)" if result.format != "savedmodel" else str(result.labels_path))
        table.add_row("parity", f"top-1 agreement with Keras {parity['agreement']:.1%} on {parity['images']} validation "
                                f"images (>= {parity['threshold']:.0%} required): {'passed' if parity['passed'] else 'FAILED'}")
        table.add_row("images/s", f"{parity['images_per_second']} ({parity['runtime']})")
        if result.quantization:
            q = result.quantization
            table.add_row("quantisation", f"int8, calibrated on {q['calibration_images']} training images"
                          + (f"; {len(q['float_layers'])} layer(s) kept in float to hold top-1 agreement"
                             if q["float_layers"] else ""))
        table.add_row("report", str(result.info_path))
        table.add_row("time", f"{result.seconds:.1f} s")
        out.print(table)
    if not parity["passed"]:
        raise typer.Exit(code=1)


def main():
    app()
