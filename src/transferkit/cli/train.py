"""`transferkit train`: the whole job on a folder, into a run folder."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from transferkit.cli.app import command, out, pct, setup_logging
from transferkit.cli.options import DataDir, TfdsDataDir, with_settings
from transferkit.errors import ConfigError
from transferkit._env import process_age
from transferkit.settings import DATA, OUTPUT, parse_duration


@command()
@with_settings()
def train(
    data_dir: DataDir,
    settings: dict,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run folder to write (default: runs/<data folder name>, numbered if taken).",
        rich_help_panel=OUTPUT, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow writing into a non-empty --out folder.",
                                            rich_help_panel=OUTPUT)] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the killed or interrupted run in --out from its last completed epoch, "
        "with its original settings.", rich_help_panel=OUTPUT)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the results instead of progress.",
                                          rich_help_panel=OUTPUT)] = False,
    val_dir: Annotated[Optional[Path], typer.Option(
        help="Separate validation folder with the same classes (replaces --val-split).", rich_help_panel=DATA,
        show_default=False)] = None,
    tfds_data_dir: TfdsDataDir = None,
    mlflow: Annotated[bool, typer.Option(
        "--mlflow", help="Also track the run in MLflow (params, per-epoch metrics, the run folder as artifacts).",
        rich_help_panel=OUTPUT)] = False,
    mlflow_uri: Annotated[Optional[str], typer.Option(
        "--mlflow-uri", help="MLflow tracking store for --mlflow (default: "
        "sqlite:///mlflow.db in the current folder, artifacts in ./mlartifacts). Implies --mlflow.", rich_help_panel=OUTPUT,
        show_default=False)] = None,
):
    """Train a classifier on DATA_DIR: a head on a frozen backbone (then fine-tuning with --fine-tune-epochs);
    saves a run folder."""
    from transferkit.api import ImageClassifier
    from transferkit.data.sources import source_name
    from transferkit.runs.folder import next_free_dir

    setup_logging(quiet=as_json)
    verbose = 0 if as_json else 1
    if settings.get("engine") == "ray" and not settings.get("cache", True):  # Ray Train launches the workers
        if resume or mlflow or mlflow_uri or tfds_data_dir:
            raise ConfigError("--engine ray --no-cache takes a plain DATA_DIR; --resume, --mlflow and tfds sources "
                              "are for --engine local.")
        out_dir = out_dir or next_free_dir(Path("runs") / source_name(data_dir))
        results = _train_on_ray({**settings, "engine": "local", "strategy": "multi-worker", "verbose": 0},
                                data_dir, val_dir, out_dir, overwrite, settings["workers"], settings["ray_address"])
        return print_results(results, as_json)
    if resume:
        if out_dir is None:
            raise ConfigError("--resume needs --out: the run folder to continue.")
        if settings.get("from_run") is not None:
            raise ConfigError(f"--from {settings['from_run']} cannot be combined with --resume: a resumed run "
                              "continues with the settings it started with (including its own --from, if any). "
                              "Drop --from to resume, or drop --resume to start a new run from that run.")
        classifier = ImageClassifier.resume(out_dir, verbose=verbose)
    else:
        if settings.get("time_budget") is not None:  # the budget counts from the command's start
            settings["time_budget"] = max(1.0, parse_duration(settings["time_budget"]) - process_age())
        classifier = ImageClassifier(**{**settings, "verbose": verbose})
        out_dir = out_dir or next_free_dir(Path("runs") / source_name(data_dir))
        if mlflow and not mlflow_uri:
            from transferkit.training.tracking import default_uri

            mlflow_uri = default_uri()
        classifier.fit(data_dir, val_dir=val_dir, out=out_dir, overwrite=overwrite, tfds_data_dir=tfds_data_dir,
                       mlflow_uri=mlflow_uri if (mlflow or mlflow_uri) else None)
    print_results(classifier.results_, as_json)


def print_results(results: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results))
        return
    table = Table(title="transferkit: training finished", show_header=False, title_justify="left")
    table.add_row("classes", ", ".join(results["classes"]))
    table.add_row("images", f"{results['train_images']} training, {results['val_images']} validation")
    table.add_row("val accuracy, head only", pct(results["val_accuracy_stage1"]))
    table.add_row("val accuracy, final",
                  f"{pct(results['val_accuracy'])} (best epoch {results['best_epoch']} of {results['epochs_run']})")
    if results.get("test_images"):
        table.add_row("test accuracy", f"{pct(results['test_accuracy'])} on {results['test_images']} held-out images")
    interrupted = " (interrupted with Ctrl-C; --resume continues it)" if results.get("interrupted") else ""
    table.add_row("time", f"{results['seconds']:.1f} s{interrupted}")
    table.add_row("run folder", results["run_dir"])
    out.print(table)


def _train_on_ray(settings: dict, data_dir, val_dir, out_dir: Path, overwrite: bool, workers: int,
                  address: str | None) -> dict:
    """Ray Train's TensorflowTrainer starts the workers and gives each its TF_CONFIG; each runs
    `ImageClassifier.fit` under the multi-worker strategy, worker 0 writes `out_dir`."""
    import tempfile

    from transferkit.modeling.backbones import absolute_weights_dir
    from transferkit.training.distribute import check_ray, init_ray
    from transferkit.runs.folder import check_output_dir, read_config
    from transferkit.settings import Settings

    Settings(**settings).validate()  # --workers, --no-cache, ... before any worker starts
    check_output_dir(out_dir, overwrite)
    # workers run in other folders: local weights are named by absolute paths
    settings = {**settings, "weights_dir": absolute_weights_dir(settings.get("weights_dir"))}
    if settings.get("weights") not in (None, "imagenet", "none"):
        settings["weights"] = str(Path(settings["weights"]).expanduser().resolve())
    started = init_ray(address)
    ray = check_ray()
    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer

        cpus = float(ray.cluster_resources().get("CPU", 1)) / workers
        config = {"settings": settings, "data_dir": str(Path(data_dir).resolve()), "out": str(Path(out_dir).resolve()),
                  "val_dir": str(Path(val_dir).resolve()) if val_dir else None, "overwrite": overwrite}
        with tempfile.TemporaryDirectory(prefix="transferkit-ray-train-") as storage:
            result = TensorflowTrainer(
                _ray_train_loop, train_loop_config=config,
                scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
                run_config=RunConfig(storage_path=storage, name="transferkit")).fit()
        if result.error is not None:
            raise result.error
    finally:
        if started:
            ray.shutdown()
    return read_config(out_dir)["results"]


def _ray_train_loop(config: dict) -> None:
    """One Ray Train worker: Ray Train has set TF_CONFIG for it."""
    from transferkit.api import ImageClassifier

    ImageClassifier(**config["settings"]).fit(config["data_dir"], val_dir=config["val_dir"], out=config["out"],
                                              overwrite=config["overwrite"])
