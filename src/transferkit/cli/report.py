"""`transferkit report`: rebuild report.html."""

from pathlib import Path

import typer

from transferkit.cli.app import command, load_run, out, setup_logging


@command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`.", show_default=False),
):
    """Rebuild RUN_DIR/report.html: config, data, samples, augmentation, curves, metrics, mistakes, Grad-CAM, activations."""
    setup_logging(quiet=False)
    path = load_run(run_dir, verbose=False).report(run_dir)
    out.print(f"report written: {path}", highlight=False)
