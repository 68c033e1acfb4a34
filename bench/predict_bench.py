"""Prediction throughput: plain Keras vs `transferkit predict`, each in its own process.

    python bench/predict_bench.py RUN_DIR [--data ../shared/datasets/rps/train]
                                  [--model EXPORTED ...] [--repeat 3]

Baseline: `keras.utils.image_dataset_from_directory` + `model.predict` on the run's
model.keras, batch 32 (what a Keras user writes). transferkit: the `transferkit predict`
command on the same folder, first on RUN_DIR with an empty cache (a run trained with OpenVINO
installed predicts on its own checked OpenVINO copy; an older one pays a one-time TFLite
conversion when the folder is large enough to be worth it), then again (cached), then on
each --model (an exported .tflite / SavedModel / .onnx). "top-1 = Keras" is the share of
files whose label equals the baseline's. Every measurement is a
fresh process; its peak RSS comes from wait4(). "predict img/s" is images over the
prediction itself (decoding included, start-up and model loading not), as each side
reports it; "end-to-end img/s" is images over the whole process's wall time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "rps" / "train"


def baseline_child(run_dir: str, data_dir: str, batch_size: int) -> None:
    """Runs inside the measured process: the plain Keras way."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import transferkit.modeling.classifier  # noqa: F401 - registers BackbonePreprocessing for loading

    model = keras.saving.load_model(Path(run_dir) / "model.keras", compile=False)
    size = int(model.input_shape[1])
    ds = keras.utils.image_dataset_from_directory(
        data_dir, labels=None, image_size=(size, size), batch_size=batch_size, shuffle=False, verbose=False
    )
    started = time.perf_counter()
    probabilities = model.predict(ds, verbose=0)
    seconds = time.perf_counter() - started
    classes = (Path(run_dir) / "classes.txt").read_text().split()
    top1 = (probabilities[:, 0] > 0.5).astype(int) if probabilities.shape[1] == 1 else probabilities.argmax(1)
    labels = {os.path.abspath(path): classes[i] for path, i in zip(ds.file_paths, top1)}
    print(json.dumps({"images": len(probabilities), "seconds": seconds, "labels": labels}))


def run_measured(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; its wall time, output, and its own peak RSS (reaped with wait4())."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}


THROUGHPUT = re.compile(r"(\d+) image\(s\) in ([\d.]+) s: ([\d.]+) images/s \((.*)\)")
CONVERTED = re.compile(r"converted to TFLite once in ([\d.]+) s")


def transferkit_row(label: str, model: str, data_dir: str, env: dict) -> dict:
    result = run_measured([sys.executable, "-m", "transferkit", "predict", model, data_dir, "--csv"], env=env)
    match = THROUGHPUT.search(result["stderr"])
    if not match:
        raise RuntimeError(f"no images/s line in transferkit's stderr:\n{result['stderr'][-2000:]}")
    converted = CONVERTED.search(result["stderr"])
    images, seconds = int(match.group(1)), float(match.group(2))
    note = match.group(4) + (f"; converted once in {converted.group(1)} s" if converted else "")
    rows = csv.DictReader(io.StringIO(result["stdout"]))
    labels = {os.path.abspath(row["path"]): row["label"] for row in rows}
    return {"method": label, "images": images, "seconds": seconds, "wall": result["wall"],
            "rss_mb": result["rss_mb"], "note": note, "labels": labels}


def baseline_row(run_dir: str, data_dir: str, batch_size: int) -> dict:
    result = run_measured([sys.executable, __file__, "--child-baseline", run_dir, "--data", data_dir,
                           "--batch-size", str(batch_size)])
    out = json.loads(result["stdout"].strip().splitlines()[-1])
    return {"method": "Keras: image_dataset_from_directory + model.predict", "images": out["images"],
            "seconds": out["seconds"], "wall": result["wall"], "rss_mb": result["rss_mb"],
            "note": f"batch {batch_size}", "labels": out["labels"]}


def summarise(rows: list[dict]) -> dict:
    """Median over repeats of one method."""
    pick = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    images = rows[0]["images"]
    return {"method": rows[0]["method"], "images": images, "seconds": pick("seconds"), "wall": pick("wall"),
            "rss_mb": max(r["rss_mb"] for r in rows), "note": rows[-1]["note"], "runs": len(rows),
            "rate": images / pick("seconds"), "best_rate": max(images / r["seconds"] for r in rows),
            "e2e": images / pick("wall"), "labels": rows[-1]["labels"]}


def agreement(labels: dict, reference: dict) -> float:
    """Share of the reference's files given the same top-1 label."""
    return sum(labels.get(path) == label for path, label in reference.items()) / max(1, len(reference))


def print_table(results: list[dict]) -> None:
    base = results[0]
    header = (f"{'method':<58} {'runs':>4} {'images':>6} {'predict img/s':>13} {'best':>6} {'x base':>6} "
              f"{'end-to-end img/s':>16} {'x base':>6} {'top-1 = Keras':>13} {'peak RSS MB':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['method']:<58} {r['runs']:>4} {r['images']:>6} {r['rate']:>13.1f} {r['best_rate']:>6.1f} "
              f"{r['rate'] / base['rate']:>6.2f} {r['e2e']:>16.1f} {r['e2e'] / base['e2e']:>6.2f} "
              f"{100 * agreement(r['labels'], base['labels']):>12.1f}% {r['rss_mb']:>11.0f}")
    print()
    for r in results:
        print(f"  {r['method']}: {r['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="image folder to classify (default: rps/train)")
    parser.add_argument("--model", action="append", default=[], help="also time `transferkit predict` on this export")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (median reported)")
    parser.add_argument("--batch-size", type=int, default=32, help="baseline batch size")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    parser.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_baseline:
        baseline_child(args.run_dir, args.data, args.batch_size)
        return

    for path in Path(args.data).rglob("*"):  # warm the page cache so the first method is not penalised
        if path.is_file():
            path.read_bytes()
    home = tempfile.mkdtemp(prefix="predict-bench-home-")  # empty TFLite cache for the cold run
    env = {**os.environ, "HOME": home, "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = [summarise([baseline_row(args.run_dir, args.data, args.batch_size) for _ in range(args.repeat)])]
    exported = (Path(args.run_dir) / "export" / "model.tflite").is_file()
    first = "uses RUN_DIR/export/model.tflite" if exported else "empty cache"
    results.append(summarise([transferkit_row(f"transferkit predict RUN_DIR (1st call, {first})",
                                              args.run_dir, args.data, env)]))
    results.append(summarise([transferkit_row("transferkit predict RUN_DIR (cached)", args.run_dir, args.data, env)
                              for _ in range(args.repeat)]))
    for model in args.model:
        results.append(summarise([transferkit_row(f"transferkit predict {Path(model).name}", model, args.data, env)
                                  for _ in range(args.repeat)]))
    print(f"{results[0]['images']} images from {args.data}, {os.cpu_count()} CPU(s), run {args.run_dir}\n")
    print_table(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([{k: v for k, v in r.items() if k != "labels"} for r in results],
                                                  indent=2))


if __name__ == "__main__":
    main()
