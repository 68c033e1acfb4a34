"""Training jobs of the web app: one `transferkit train` worker process at a time.

The worker is the command line itself (`python -m transferkit train DATA --out RUN --json ...`),
so the app never holds TensorFlow's training state and a crash of the worker cannot take
the app down. Progress is read from what the trainer writes anyway: RUN/checkpoint/state.json
after every epoch (the history so far, the stage), then history.csv and config.json when the
run is saved. Cancel is SIGINT, which the trainer answers by saving the best weights so far.
Each job leaves WORKSPACE/<project>/logs/<run>.json (settings, state, exit code) and .log
(the worker's output), so a reload or an app restart shows every run as it is on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from transferkit.atomic import read_csv, write_json
from transferkit.deploy.server import RequestError
from transferkit.deploy.webapp.workspace import Workspace
from transferkit.runs import folder as rundir

STATE_FILE = Path(rundir.CHECKPOINT_DIR) / "state.json"
RUNNING, FINISHED, CANCELLED, FAILED, STOPPED = "running", "finished", "cancelled", "failed", "stopped"
IMAGE_SIZES = (96, 128, 160, 192, 224)
SETTINGS = ("backbone", "augment", "image_size", "epochs", "fine_tune_epochs", "report")


def check_settings(settings: dict) -> dict:
    """The Train page's settings, each checked (422 naming the setting and what is allowed)."""
    from transferkit.modeling.augment import PRESETS
    from transferkit.modeling.backbones import BACKBONES

    if not isinstance(settings, dict):
        raise RequestError(422, "invalid_settings", f"Settings must be a JSON object, got {settings!r}.")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise RequestError(422, "invalid_settings", f"Unknown setting(s) {unknown}; allowed: {', '.join(SETTINGS)}.")
    checked = {"backbone": settings.get("backbone") or "mobilenet_v2", "augment": settings.get("augment") or "standard",
               "image_size": settings.get("image_size"), "epochs": settings.get("epochs"),
               "fine_tune_epochs": settings.get("fine_tune_epochs"), "report": settings.get("report", True)}
    if checked["backbone"] not in BACKBONES:
        raise RequestError(422, "invalid_settings", f"Unknown backbone {checked['backbone']!r}; choose one of "
                           f"{', '.join(BACKBONES)}.")
    if checked["augment"] not in PRESETS:
        raise RequestError(422, "invalid_settings", f"Unknown augmentation {checked['augment']!r}; choose one of "
                           f"{', '.join(PRESETS)}.")
    if checked["image_size"] is not None and checked["image_size"] not in IMAGE_SIZES:
        raise RequestError(422, "invalid_settings", f"image_size must be empty (the backbone's) or one of "
                           f"{', '.join(map(str, IMAGE_SIZES))}, got {checked['image_size']!r}.")
    for key, low, high in (("epochs", 1, 200), ("fine_tune_epochs", 0, 100)):
        value = checked[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise RequestError(422, "invalid_settings", f"{key} must be empty (auto) or a whole number from {low} "
                               f"to {high}, got {value!r}.")
    if not isinstance(checked["report"], bool):
        raise RequestError(422, "invalid_settings", f"report must be true or false, got {checked['report']!r}.")
    return checked


def train_command(data_dir: Path, run_dir: Path, settings: dict) -> list[str]:
    command = [sys.executable, "-m", "transferkit", "train", str(data_dir), "--out", str(run_dir), "--json",
               "--backbone", settings["backbone"], "--augment", settings["augment"]]
    for key in ("image_size", "epochs", "fine_tune_epochs"):
        if settings[key] is not None:
            command += [f"--{key.replace('_', '-')}", str(settings[key])]
    return command + ([] if settings["report"] else ["--no-report"])


class Jobs:
    """At most one training worker; status of any run, running or on disk."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.current: tuple[str, str] | None = None  # (project, run) of the live worker
        self.cancelled = False

    def busy(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, project: str, settings: dict) -> dict:
        settings = check_settings(settings)
        counts = {c["name"]: c["count"] for c in self.workspace.classes(project)}
        ready = {name: n for name, n in counts.items() if n >= 2}
        if len(ready) < 2 or len(ready) != len(counts):
            raise RequestError(409, "not_enough_images", f"Training needs at least 2 classes with 2 or more images "
                               f"each; project {project!r} has {counts or 'no classes'}. Add images on the Data page.")
        with self.lock:
            if self.busy():
                raise RequestError(409, "busy", f"Run {self.current[1]!r} of project {self.current[0]!r} is "
                                   "still training; wait for it or cancel it (one run at a time).")
            run = self.workspace.new_run_name(project)
            run_dir = self.workspace.run_dir(project, run, must_exist=False)
            logs = self.workspace.logs_dir(project)
            command = train_command(self.workspace.data_dir(project), run_dir, settings)
            record = {"run": run, "project": project, "settings": settings, "state": RUNNING,
                      "started": time.time(), "finished": None, "returncode": None, "command": command}
            write_json(logs / f"{run}.json", record)
            with open(logs / f"{run}.log", "wb") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                cwd=self.workspace.project(project), env=_worker_env())
            self.current, self.cancelled = (project, run), False
            threading.Thread(target=self._wait, args=(self.process, logs / f"{run}.json", record), daemon=True).start()
        return self.status(project, run)

    def _wait(self, process: subprocess.Popen, record_path: Path, record: dict) -> None:
        code = process.wait()
        state = FINISHED if code == 0 else CANCELLED if self.cancelled else FAILED
        write_json(record_path, {**record, "state": state, "returncode": code, "finished": time.time()})

    def cancel(self, project: str, run: str) -> dict:
        """SIGINT: the trainer stops after the current batch and saves the best weights; a second cancel kills."""
        with self.lock:
            if not self.busy() or self.current != (project, run):
                raise RequestError(409, "not_running", f"Run {run!r} of project {project!r} is not training.")
            self.process.send_signal(signal.SIGKILL if self.cancelled else signal.SIGINT)
            self.cancelled = True
        return self.status(project, run)

    def shutdown(self, timeout: float = 60.0) -> None:
        """On app exit: cancel a running worker and wait for it to save (then kill it)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        self.cancelled = True
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    # -- status ------------------------------------------------------------------------

    def record(self, project: str, run: str) -> dict | None:
        path = self.workspace.logs_dir(project) / f"{run}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def status(self, project: str, run: str) -> dict:
        """Where a run stands: state, stage, epochs and history rows so far, results when done."""
        run_dir = self.workspace.run_dir(project, run, must_exist=False)
        record = self.record(project, run)
        if record is None and not run_dir.is_dir():
            raise RequestError(404, "no_such_run", f"Project {project!r} has no run {run!r}.")
        live = self.busy() and self.current == (project, run)
        config = _read_json(run_dir / rundir.CONFIG_FILE) if (run_dir / rundir.MODEL_FILE).is_file() else None
        results = (config or {}).get("results") or None
        if live:
            state = RUNNING
        elif record is not None and record["state"] != RUNNING:
            state = record["state"]
        elif config is not None:
            state = FINISHED
        else:
            state = STOPPED  # the app stopped while it trained; the folder may hold a resumable checkpoint
        if state != RUNNING and results is not None:  # the saved run says how it ended
            state = CANCELLED if results.get("interrupted") else FINISHED
        history = _history(run_dir)
        stage = _stage(state, history, run_dir, results)
        settings = (record or {}).get("settings") or {}
        planned = (settings["epochs"] + settings["fine_tune_epochs"]
                   if settings.get("epochs") and settings.get("fine_tune_epochs") is not None else None)
        return {"project": project, "run": run, "state": state, "stage": stage, "epoch": len(history),
                "epochs_planned": planned, "history": history, "results": results, "settings": settings,
                "cancel_requested": live and self.cancelled, "error": _log_tail(self.workspace, project, run)
                if state == FAILED else None, "report": (run_dir / "report.html").is_file()}

    def runs(self, project: str) -> list[dict]:
        """Every run of a project, newest first: run folders and job records (a failed start has no folder)."""
        names = {p.name for p in self.workspace.runs_dir(project).iterdir() if p.is_dir()}
        names |= {p.stem for p in self.workspace.logs_dir(project).glob("*.json")}
        rows = []
        for name in sorted(names, reverse=True):
            try:
                status = self.status(project, name)
            except RequestError:
                continue
            rows.append({k: status[k] for k in ("run", "state", "stage", "epoch", "results", "settings", "report")})
        return rows


def _worker_env() -> dict:
    """The app's environment for a worker, which runs in the project's folder: a relative weights folder
    is made absolute, so it still names what it named where the app was started."""
    from transferkit.modeling.backbones import WEIGHTS_DIR_ENV, absolute_weights_dir

    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if env.get(WEIGHTS_DIR_ENV):
        env[WEIGHTS_DIR_ENV] = absolute_weights_dir()
    src = str(Path(__file__).resolve().parents[3])  # the folder holding this transferkit package
    env["PYTHONPATH"] = os.pathsep.join([src, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _history(run_dir: Path) -> list[dict]:
    """history.csv once saved, else the checkpoint's rows so far (written after every epoch)."""
    if (run_dir / rundir.HISTORY_FILE).is_file():
        try:
            return _clean(rundir.parse_history(read_csv(run_dir / rundir.HISTORY_FILE)))
        except (OSError, ValueError):
            pass
    state = _read_json(run_dir / STATE_FILE)
    return _clean((state or {}).get("history") or [])


def _clean(rows: list[dict]) -> list[dict]:
    keys = ("epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy")
    return [{k: row.get(k) for k in keys} for row in rows]


def _stage(state: str, history: list[dict], run_dir: Path, results: dict | None) -> str:
    if state != RUNNING:
        return {FINISHED: "done", CANCELLED: "cancelled (best weights saved)" if results else "cancelled",
                FAILED: "failed", STOPPED: "stopped when the app stopped"}[state]
    if (run_dir / rundir.MODEL_FILE).is_file():
        return "writing the report"
    if not history:
        return "preparing: checking images, caching backbone activations"
    return "training the head (backbone frozen)" if history[-1]["stage"] == 1 else "fine-tuning the backbone"


def _log_tail(workspace: Workspace, project: str, run: str, lines: int = 6) -> str:
    try:
        text = (workspace.logs_dir(project) / f"{run}.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip() and "absl" not in line and "oneDNN" not in line]
    return "\n".join(kept[-lines:])
