"""What the Test and Export pages do with a finished run: predict (with Grad-CAM), evaluate, export.

Models are loaded once per run folder and kept (a few at most); TensorFlow work runs in
one thread at a time, as the Keras and TFLite runtimes are not thread-safe.
"""

from __future__ import annotations

import base64
import io
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from transferkit import data
from transferkit.deploy.server import RequestError, decode_upload
from transferkit.runs import folder as rundir

MAX_PIXELS = 40_000_000
OVERLAY_SIDE = 360  # the Grad-CAM overlay is drawn on the upload scaled to this longest side
EVALUATION_DIR = Path("evaluation") / "validation"


class Models:
    """Predictors (and Grad-CAM) of run folders, loaded on first use, the `keep` most recent kept."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.loaded: OrderedDict = OrderedDict()
        self.lock = threading.Lock()  # one TensorFlow call at a time

    def _get(self, run_dir: Path):
        from transferkit.deploy.predictor import Predictor

        rundir.check_run_dir(run_dir)
        key = (str(run_dir), (run_dir / rundir.MODEL_FILE).stat().st_mtime_ns)
        if key not in self.loaded:
            self.loaded[key] = {"predictor": Predictor(run_dir, runtime="keras"), "cam": None}
            while len(self.loaded) > self.keep:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(key)
        return self.loaded[key]

    def predict(self, run_dir: Path, filename: str, content: bytes, explain: bool = True) -> dict:
        """Label, calibrated probability per class (most probable first) and a Grad-CAM overlay PNG (data URL)."""
        from PIL import Image

        from transferkit.analysis.explain import GradCam, overlay, upsample

        if not content:
            raise RequestError(422, "empty_file", f"{filename}: the file is empty (0 bytes).")
        original = decode_upload(filename, content, None, MAX_PIXELS)
        with self.lock:
            entry = self._get(run_dir)
            predictor = entry["predictor"]
            pixels = data.load_image_bytes(content, predictor.image_size, MAX_PIXELS, name=filename)
            probabilities = predictor.predict_images(pixels[None].astype(np.float32))[0]
            overlay_url = None
            if explain:
                if entry["cam"] is None:
                    entry["cam"] = GradCam(predictor.trained.model, predictor.classes)
                cams, _, _ = entry["cam"].maps(pixels[None].astype(np.float32))
        order = np.argsort(-probabilities, kind="stable")
        classes = predictor.classes
        if explain:
            small = Image.fromarray(original)
            small.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
            small = np.asarray(small)
            blended = overlay(small, upsample(cams[0], *small.shape[:2]))
            buffer = io.BytesIO()
            Image.fromarray(blended).save(buffer, format="PNG")
            overlay_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return {"filename": filename, "label": classes[int(order[0])], "confidence": float(probabilities[order[0]]),
                "probabilities": [{"label": classes[int(i)], "probability": float(probabilities[i])} for i in order],
                "gradcam": overlay_url}

    def evaluate(self, run_dir: Path) -> dict:
        """The validation split's metrics, confusion matrix and mistakes gallery, written once into the run."""
        from transferkit.analysis.evaluation import evaluate_files, write_evaluation

        out = run_dir / EVALUATION_DIR
        metrics_path = out / "metrics.json"
        if not metrics_path.is_file():
            with self.lock:
                trained = self._get(run_dir)["predictor"].trained
                evaluation = evaluate_files(trained, trained.split("validation", run_dir), source="validation split")
                write_evaluation(evaluation, out)
        import json

        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        files = {key: str(Path(value).relative_to(run_dir)) for key, value in metrics.get("files", {}).items()
                 if Path(value).is_relative_to(run_dir)}
        return {"accuracy": metrics.get("accuracy"), "images": metrics.get("images"),
                "misclassified": metrics.get("misclassified"), "files": files}

    def export(self, run_dir: Path, fmt: str) -> dict:
        """`export_model` into RUN/export/ (replacing an earlier one); a SavedModel folder is zipped for download."""
        from transferkit.deploy.export import DEFAULT_NAMES, EXPORT_DIR, check_format, export_model
        from transferkit.errors import TransferkitError

        try:
            check_format(fmt)
        except TransferkitError as error:
            raise RequestError(422, "invalid_format", str(error)) from None
        with self.lock:
            result = export_model(run_dir, fmt, overwrite=True)
        path = Path(result.path)
        if fmt == "savedmodel":
            archive = run_dir / EXPORT_DIR / f"{DEFAULT_NAMES[fmt]}.zip"
            tmp = shutil.make_archive(str(archive.with_name(f".{archive.stem}.part")), "zip", path.parent, path.name)
            Path(tmp).replace(archive)
            path = archive
        return {"format": fmt, "file": str(path.relative_to(run_dir)), "size_bytes": path.stat().st_size,
                "parity": result.parity, "seconds": result.seconds}

    def exports(self, run_dir: Path) -> list[dict]:
        """The downloadable exports already in RUN/export/."""
        from transferkit.deploy.export import DEFAULT_NAMES, EXPORT_DIR

        rows = []
        for fmt, name in DEFAULT_NAMES.items():
            path = run_dir / EXPORT_DIR / (f"{name}.zip" if fmt == "savedmodel" else name)
            if path.is_file():
                rows.append({"format": fmt, "file": str(path.relative_to(run_dir)), "size_bytes": path.stat().st_size})
        return rows
