"""Where a training run is logged besides its run folder: TensorBoard event files and MLflow."""

from __future__ import annotations

from pathlib import Path

from transferkit import data


def run_loggers(settings, out_dir, mlflow_uri, source):
    """(TensorBoard logger into RUN/tensorboard or None, MLflow logger or None)."""
    from transferkit.training.callbacks import TENSORBOARD_DIR, TensorBoardLogger

    board = TensorBoardLogger(Path(out_dir) / TENSORBOARD_DIR) if out_dir is not None else None
    tracker = None
    if mlflow_uri:
        from transferkit.training.tracking import MlflowLogger

        params = {**settings.to_json(), "data_source": source}
        tracker = MlflowLogger(mlflow_uri, Path(out_dir).name if out_dir is not None else None, params,
                               tags={"transferkit.source": source})
    return board, tracker

def log_figures(classifier, board, out_dir: Path) -> None:
    """Sample grid, learning curves and the validation confusion matrix as TensorBoard images."""
    import tempfile

    from transferkit.analysis.evaluation import plot_confusion_matrix

    trained = classifier.trained_
    step = len(trained.history)
    with tempfile.TemporaryDirectory() as tmp:
        matrix = None
        if len(trained.split(data.VALIDATION)):
            metrics = classifier.evaluate(split="validation", run_dir=out_dir)
            matrix = plot_confusion_matrix(metrics["confusion_matrix"], trained.classes,
                                           Path(tmp) / "confusion_matrix.png", title="Validation confusion matrix")
        board.log_images({"samples": out_dir / "samples.png", "learning_curves": out_dir / "learning_curves.png",
                          "confusion_matrix/validation": matrix}, step=step)
    board.close()
