"""`transferkit preview`: look at a dataset, and at its augmentation, before training."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from transferkit.cli.app import command, out, setup_logging
from transferkit.cli.options import DataDir, TfdsDataDir, with_settings


@command()
@with_settings(["backbone", "image_size", "seed", "augment"], panel="Preview")
def preview(
    data_dir: DataDir,
    settings: dict,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Folder for samples.png and augmentation.png (default: runs/<data folder>-preview).",
        show_default=False)] = None,
    draws: Annotated[int, typer.Option(help="Random augmentation draws of the previewed image.")] = 8,
    image: Annotated[Optional[Path], typer.Option(
        help="Image to show under augmentation (default: one of the samples).", show_default=False)] = None,
    tfds_data_dir: TfdsDataDir = None,
):
    """Show a dataset before training: labelled sample grid, and one image under random augmentation draws."""
    from transferkit.api import ImageClassifier
    from transferkit.data.sources import source_name

    setup_logging(quiet=False)
    if out_dir is None:
        out_dir = Path("runs") / f"{source_name(data_dir)}-preview"
    result = ImageClassifier(**settings, verbose=0).preview(data_dir, out_dir, draws=draws, image=image,
                                                                tfds_data_dir=tfds_data_dir)
    counts = ", ".join(f"{name} {n}" for name, n in result["class_counts"].items())
    out.print(f"{len(result['classes'])} classes, {result['images']} images ({counts})", highlight=False)
    out.print(f"sample grid: {result['samples']}", highlight=False)
    if result["augmentation"]:
        out.print(f"augmentation preview ({draws} draws of {result['augmented_image']}): {result['augmentation']}",
                  highlight=False)
