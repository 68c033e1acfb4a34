"""`transferkit backbones`: the registry, and which weights are local."""

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.modeling.backbones import WEIGHTS_DIR_ENV
from transferkit.cli.app import command, out


@command()
def backbones(
    weights_dir: Optional[Path] = typer.Option(None, help=f"Weights folder to check (also ${WEIGHTS_DIR_ENV}).", show_default=False),
):
    """List the available backbones and whether their ImageNet weights are found locally."""
    from transferkit.modeling.backbones import BACKBONES, find_local_weights

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
