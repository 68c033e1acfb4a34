"""`transferkit activations`: feature-map grids of backbone layers."""

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from transferkit.cli.app import command, load_run, out, setup_logging


@command()
def activations(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
    image: Optional[Path] = typer.Argument(None, help="One image file.", show_default=False),
    layers: Optional[List[str]] = typer.Option(None, "--layers", "-l", help="Backbone layer name or index; repeat or comma-separate (default: early, middle and late layers).", show_default=False),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print the backbone's layers with their output shapes and exit."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the grids (default: RUN_DIR/activations).", show_default=False),
    max_channels: int = typer.Option(32, help="Channels shown per layer (those varying most across the image)."),
):
    """Feature maps of backbone layers for one image: one PNG grid per layer, one tile per channel."""
    setup_logging(quiet=False)
    from transferkit.errors import ConfigError
    classifier = load_run(run_dir, verbose=False)
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
    table = Table("index", "layer", "output", "channels shown", "grid")
    table.columns[4].overflow = "fold"
    for g in grids:
        table.add_row(str(g.index), g.layer, "x".join(map(str, g.shape)), str(len(g.channels)), g.path)
    out.print(table)
