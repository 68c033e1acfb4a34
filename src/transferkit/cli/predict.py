"""`transferkit predict`: label images with a run folder or an exported model."""

import csv
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from transferkit.errors import ConfigError
from transferkit.cli.app import command, err, out, setup_logging


@command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `transferkit train`, or a model written by `transferkit export` (.tflite file, SavedModel folder, .onnx file).", show_default=False),
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively).", show_default=False),
    top_k: int = typer.Option(1, help="Show the k most probable classes per image."),
    batch_size: Optional[int] = typer.Option(None, help="Images per inference batch (default: 8 for TFLite and OpenVINO, 32 otherwise).", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    explain_dir: Optional[Path] = typer.Option(None, "--explain", help="Also write a Grad-CAM overlay per image (predicted class) into this folder.", show_default=False),
    reject: bool = typer.Option(True, "--reject/--no-reject", help="Flag images unlike the training images as unknown (run folders trained with an unknown detector; exports: by max-softmax). --no-reject: plain labels, as before."),
    accept_rate: Optional[float] = typer.Option(None, help="Share of in-distribution (validation) images to accept, e.g. 0.95 (the run's default); lower rejects more.", show_default=False),
    threshold: Optional[float] = typer.Option(None, help="Unknown when the score is above this (overrides --accept-rate).", show_default=False),
    precision: str = typer.Option("auto", help="A run folder's OpenVINO copy: auto (bf16 where the CPU has it and the run measured bf16 giving its f32 labels, else f32), f32 or bf16."),
    runtime: str = typer.Option("auto", help="auto: the fastest available (for a run folder, its OpenVINO copy, else a TFLite copy that passed the parity check, else Keras); or openvino, keras, tflite, savedmodel, onnx."),
    engine: str = typer.Option("local", help="local: this process; ray: Ray Data workers (pip install 'transferkit[ray]'), results streamed to --output, a rerun skips the files done.", rich_help_panel="Scale out"),
    address: Optional[str] = typer.Option(None, help="--engine ray: the cluster ('auto', 'ray://host:port'); default: a local Ray instance.", show_default=False, rich_help_panel="Scale out"),
    output: Optional[Path] = typer.Option(None, help="--engine ray: the .parquet or .csv file to write (default predictions.parquet); INPUT may be @list.txt, one path per line.", show_default=False, rich_help_panel="Scale out"),
    workers: int = typer.Option(1, help="--engine ray: model workers (actors); each takes an equal share of the cluster's CPUs.", rich_help_panel="Scale out"),
):
    """Label each image with the trained classifier (label and confidence); images/s on stderr."""
    setup_logging(quiet=False)
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}.")
    if engine == "ray":
        if explain_dir is not None or as_csv:
            raise ConfigError("--engine ray writes --output (.parquet or .csv); --explain and --csv are for --engine local.")
        return _predict_on_ray(run_dir, inputs, output or Path("predictions.parquet"), address=address, workers=workers,
                               top_k=top_k, batch_size=batch_size, runtime=runtime, reject=reject,
                               accept_rate=accept_rate, threshold=threshold, as_json=as_json)
    if address is not None or output is not None or workers != 1:
        raise ConfigError("--address, --output and --workers need --engine ray.")
    from transferkit.deploy.predictor import Predictor

    predictor = Predictor(run_dir, runtime=runtime, verbose=0 if (as_json or as_csv) else 1, precision=precision)
    if explain_dir is not None and predictor.kind != "run":
        raise ConfigError("--explain (Grad-CAM) needs the Keras model: pass the run folder, not an exported model.")
    predictions = predictor.predict(inputs, top_k=top_k, batch_size=batch_size, reject=reject,
                                    accept_rate=accept_rate, threshold=threshold)
    scored = any(p.unknown is not None for p in predictions)
    overlays = _explain_predictions(predictor, predictions, explain_dir)
    if as_json:
        print(json.dumps([
            {"path": p.path, "label": p.label, "confidence": p.confidence,
             "top_k": [{"label": label, "probability": prob} for label, prob in p.top_k],
             "unknown": p.unknown, "score": p.score,
             **({"gradcam": overlays.get(p.path)} if explain_dir is not None else {})}
            for p in predictions
        ], indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "label", "confidence", "unknown", "score"] + [f"top{i + 1}" for i in range(1, top_k)])
        for p in predictions:
            writer.writerow([p.path, p.label, f"{p.confidence:.6f}", "" if p.unknown is None else int(p.unknown),
                             "" if p.score is None else f"{p.score:.6f}"]
                            + [f"{label}:{prob:.6f}" for label, prob in p.top_k[1:]])
    else:
        table = Table("path", "label", "confidence", *(["unknown", "score"] if scored else []),
                      *(["top-k"] if top_k > 1 else []))
        for p in predictions:
            extra = [", ".join(f"{label} {prob:.1%}" for label, prob in p.top_k)] if top_k > 1 else []
            flags = ["[bold red]unknown[/]" if p.unknown else "", f"{p.score:.3f}"] if scored else []
            table.add_row(p.path, p.label, f"{p.confidence:.1%}", *flags, *extra)
        out.print(table)
        unknown = sum(bool(p.unknown) for p in predictions)
        out.print(f"{len(predictions)} image(s) classified" + (f", {unknown} flagged unknown." if scored else "."))
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


def _explain_predictions(predictor, predictions, explain_dir) -> dict:
    """Grad-CAM overlays for the predicted class of each classified image: {path: overlay path}.
    Only these need the Keras model (and TensorFlow)."""
    if explain_dir is None or not predictions:
        return {}
    from transferkit.analysis.explain import explain_images

    paths = [p.path for p in predictions]
    return {e.path: e.overlay_path for e in explain_images(predictor.trained, paths, None, explain_dir)}



def _predict_on_ray(run_dir, inputs, output, *, as_json: bool, **options) -> None:
    from transferkit.deploy.ray_predict import predict_to_file

    stats = predict_to_file(run_dir, inputs, output, verbose=not as_json, **options)
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    rate = f", {stats['images_per_second']:.1f} images/s" if stats["images_per_second"] else ""
    out.print(f"{stats['files']} file(s): {stats['done_before']} already in {stats['output']}, "
              f"{stats['predicted']} predicted now ({stats['errors']} unreadable) in {stats['seconds']:.1f} s{rate} "
              f"on {stats['workers']} Ray worker(s).", highlight=False, soft_wrap=True)
