"""`transferkit evaluate`: metrics, confusion matrix and mistakes on a labelled folder or the run's split."""

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.cli.app import command, load_run, out, pct, setup_logging
from transferkit.cli.options import TfdsDataDir
from transferkit.data.sources import source_name


@command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    data_dir: Optional[str] = typer.Argument(None, help="Labelled folder, one sub-folder per class, or a source (tfds:NAME:SPLIT, an archive URL) (default: the run's validation split, from split.csv).", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json, predictions.csv, misclassified.csv/.png and confusion_matrix.png (default: RUN_DIR/evaluation/<validation or DATA_DIR name>).", show_default=False),
    allow_class_subset: bool = typer.Option(False, help="Evaluate on the classes DATA_DIR shares with the model when they differ."),
    split: str = typer.Option("validation", help="Without DATA_DIR: the run's 'validation' or 'test' split."),
    batch_size: int = typer.Option(32, help="Images per inference batch."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    tfds_data_dir: TfdsDataDir = None,
):
    """Accuracy, per-class precision/recall/F1, confusion matrix, ROC-AUC or top-k, log loss and the mistakes."""
    setup_logging(quiet=as_json)
    classifier = load_run(run_dir, verbose=not as_json)
    if out_dir is None:
        out_dir = run_dir / "evaluation" / (split if data_dir is None else source_name(data_dir))
    metrics = classifier.evaluate(data_dir, batch_size, out=out_dir, allow_class_subset=allow_class_subset,
                                  run_dir=run_dir, split=split, tfds_data_dir=tfds_data_dir)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    extra = [f"ROC-AUC {metrics['roc_auc']:.3f}"] if metrics.get("roc_auc") is not None else []
    extra += [f"top-{k} {pct(v)}" for k, v in metrics.get("top_k_accuracy", {}).items()]
    out.print(
        f"[bold]{metrics['source']}[/]: {metrics['images']} images, accuracy [bold]{pct(metrics['accuracy'])}[/], "
        f"log loss {metrics['loss']:.3f}" + "".join(f", {e}" for e in extra), highlight=False,
    )
    if metrics.get("calibration"):
        c = metrics["calibration"]
        out.print(f"calibration: temperature {c['temperature']:.3f}, ECE {c['ece']:.3f} "
                  f"(uncalibrated {c['ece_uncalibrated']:.3f})", highlight=False)
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
