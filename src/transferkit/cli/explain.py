"""`transferkit explain`: Grad-CAM overlays."""

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from transferkit.cli.app import command, load_run, out, setup_logging


@command()
def explain(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively).", show_default=False),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class instead of each image's predicted class.", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the overlay PNGs (default: RUN_DIR/explanations).", show_default=False),
    layer: Optional[str] = typer.Option(None, help="Backbone layer for Grad-CAM (default: its last feature map; see `activations --list-layers`).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
):
    """Grad-CAM: a heatmap over each image of where the evidence for the class lies, saved as overlay PNGs."""
    setup_logging(quiet=False)
    classifier = load_run(run_dir, verbose=False)
    target = out_dir if out_dir is not None else run_dir / "explanations"
    explanations = classifier.explain(images, class_name=class_name, out=target, layer=layer)
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
