"""`transferkit export`: deployable formats, parity-checked."""

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.cli.app import command, out, setup_logging


@command()
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
    setup_logging(quiet=as_json)
    from transferkit.deploy.export import export_model

    result = export_model(run_dir, format, out_path, overwrite=overwrite, parity_images=parity_images,
                          calibration_images=str(calibration_dir) if calibration_dir else calibration_images)
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
