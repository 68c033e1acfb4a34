"""`transferkit app`: the no-code web app. One FastAPI app serves the JSON API (/api/...) and four pages.

Pages (Data, Train, Test, Export) are static HTML on one shell, driven by Alpine.js and
uPlot, both vendored under static/vendor/ (no CDN: the app works offline). Errors use
the prediction server's shape, `{"error": {"code", "message"}}`, with a 4xx that names
the problem; nothing is written outside the workspace folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Body, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from transferkit import __version__
from transferkit.deploy.server import BodyLimit, RequestError, error_response, install_error_handlers, is_loopback
from transferkit.deploy.webapp.jobs import RUNNING, Jobs
from transferkit.deploy.webapp.models import Models
from transferkit.deploy.webapp.workspace import Workspace, inside
from transferkit.errors import ConfigError, TransferkitError

logger = logging.getLogger("transferkit")

HERE = Path(__file__).parent
PAGES = ("data", "train", "test", "export")
TITLES = {"data": "Data", "train": "Train", "test": "Test", "export": "Export and serve"}
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
MAX_FILES = 500
EVENT_INTERVAL_S = 0.5


def render(page: str) -> str:
    """The shell with the page's body, title and script filled in (plain string templating, no engine)."""
    shell = (HERE / "templates" / "shell.html").read_text(encoding="utf-8")
    body = (HERE / "templates" / f"{page}.html").read_text(encoding="utf-8")
    nav = "".join(f'<a href="/{p}" data-page="{p}"{" class=active" if p == page else ""}>{TITLES[p]}</a>' for p in PAGES)
    return (shell.replace("{{title}}", TITLES[page]).replace("{{nav}}", nav).replace("{{page}}", page)
            .replace("{{body}}", body).replace("{{version}}", __version__))


def create_app(workspace) -> FastAPI:
    """The web app on `workspace` (created if missing); every project lives in a folder of it."""
    space = Workspace(workspace)
    jobs, models = Jobs(space), Models()

    @asynccontextmanager
    async def lifespan(_app):
        # Import TensorFlow now, in the background, so the first prediction does not wait for it.
        threading.Thread(target=_import_tensorflow, daemon=True, name="transferkit-warm-up").start()
        yield
        await run_in_threadpool(jobs.shutdown)

    app = FastAPI(title="transferkit app", version=__version__, lifespan=lifespan)
    app.state.workspace, app.state.jobs, app.state.models = space, jobs, models
    app.add_middleware(BodyLimit, max_bytes=MAX_UPLOAD_BYTES)
    install_error_handlers(app)

    @app.exception_handler(TransferkitError)
    async def _refused(_request, error: TransferkitError):
        return error_response(422, type(error).__name__.removesuffix("Error").lower() + "_error", str(error))

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", include_in_schema=False)
    async def home():
        return RedirectResponse("/data")

    for page in PAGES:
        app.add_api_route(f"/{page}", (lambda p: lambda: HTMLResponse(render(p)))(page), methods=["GET"],
                          include_in_schema=False)

    # -- projects, classes, images ---------------------------------------------------------

    @app.get("/api/projects")
    def projects():
        return {"workspace": str(space.root), "projects": space.projects()}

    @app.post("/api/projects", status_code=201)
    def create_project(body: dict = Body(...)):
        space.create_project(body.get("name"))
        return {"name": body["name"]}

    @app.get("/api/projects/{project}")
    def project(project: str):
        return {"name": project, "classes": space.classes(project), "data_dir": str(space.data_dir(project))}

    @app.post("/api/projects/{project}/classes", status_code=201)
    def create_class(project: str, body: dict = Body(...)):
        space.create_class(project, body.get("name"))
        return {"name": body["name"]}

    @app.post("/api/projects/{project}/classes/{name}/images", status_code=201)
    async def upload(project: str, name: str, request: Request):
        space.class_dir(project, name)
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise RequestError(415, "unsupported_media_type", "Send multipart/form-data with the images in the "
                               "field 'files'.")
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES + 8)
        try:
            uploads = [(v.filename or f"upload-{i + 1}", await v.read()) for i, v in enumerate(form.getlist("files"))
                       if not isinstance(v, str)]
        finally:
            await form.close()
        if not uploads:
            raise RequestError(422, "no_files", "No images in the multipart field 'files'.")
        saved, refused = [], []
        for filename, content in uploads:  # one bad file does not lose the others; each refusal names its file
            try:
                saved.append(await run_in_threadpool(space.add_image, project, name, filename, content))
            except RequestError as error:
                refused.append({"filename": filename, "code": error.code, "message": error.message})
        if refused and not saved:
            first = refused[0]
            raise RequestError(422, first["code"], "; ".join(r["message"] for r in refused))
        return {"saved": saved, "refused": refused}

    @app.get("/api/projects/{project}/classes/{name}/images/{image}")
    def image(project: str, name: str, image: str, thumb: bool = False):
        if thumb:
            return Response(space.thumbnail(project, name, image), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=3600"})
        return FileResponse(space.image_path(project, name, image))

    @app.delete("/api/projects/{project}/classes/{name}/images/{image}")
    def delete_image(project: str, name: str, image: str):
        space.delete_image(project, name, image)
        return {"deleted": image}

    @app.post("/api/projects/{project}/import")
    def import_folder(project: str, body: dict = Body(...)):
        return space.import_folder(project, body.get("path") or "")

    @app.get("/api/projects/{project}/doctor")
    def doctor(project: str):
        return space.doctor(project)

    # -- training --------------------------------------------------------------------------

    @app.get("/api/options")
    def options():
        from transferkit.modeling.augment import PRESETS
        from transferkit.modeling.backbones import BACKBONES, find_local_weights

        return {"backbones": [{"name": n, "default_size": b.default_size, "local_weights": find_local_weights(b) is not None}
                              for n, b in BACKBONES.items()],
                "augment": list(PRESETS), "image_sizes": [96, 128, 160, 192, 224]}

    @app.get("/api/projects/{project}/runs")
    def runs(project: str):
        return {"runs": jobs.runs(project), "busy": jobs.current if jobs.busy() else None}

    @app.post("/api/projects/{project}/runs", status_code=201)
    def start(project: str, body: dict = Body(...)):
        return jobs.start(project, body)

    @app.get("/api/projects/{project}/runs/{run}")
    def status(project: str, run: str):
        return jobs.status(project, run)

    @app.post("/api/projects/{project}/runs/{run}/cancel")
    def cancel(project: str, run: str):
        return jobs.cancel(project, run)

    @app.get("/api/projects/{project}/runs/{run}/events")
    async def events(project: str, run: str):
        """Server-sent events: the run's status whenever it changes, until it stops training."""
        first = await run_in_threadpool(jobs.status, project, run)

        async def stream():
            last, status, idle = None, first, 0
            while True:
                text = json.dumps(status)
                if text != last:
                    yield f"event: status\ndata: {text}\n\n"
                    last, idle = text, 0
                elif (idle := idle + 1) % 30 == 0:
                    yield ": keep-alive\n\n"
                if status["state"] != RUNNING:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(EVENT_INTERVAL_S)
                status = await run_in_threadpool(jobs.status, project, run)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- a finished run: files, predictions, evaluation, exports ---------------------------

    def finished_run(project: str, run: str) -> Path:
        if jobs.status(project, run)["results"] is None:
            raise RequestError(409, "run_not_finished", f"Run {run!r} has no saved model yet; wait until it finishes.")
        return space.run_dir(project, run)

    @app.get("/api/projects/{project}/runs/{run}/files/{path:path}")
    def run_file(project: str, run: str, path: str):
        """A file of the run folder, read-only; anything resolving outside the run folder is refused."""
        target = inside(space.run_dir(project, run), *Path(path).parts)
        if not target.is_file():
            raise RequestError(404, "not_found", f"Run {run!r} has no file {path!r}.")
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        download = target.suffix in (".tflite", ".onnx", ".zip", ".keras")
        return FileResponse(target, media_type=media, filename=target.name if download else None)

    @app.post("/api/projects/{project}/runs/{run}/predict")
    async def predict(project: str, run: str, request: Request, explain: bool = True):
        run_dir = finished_run(project, run)
        form = await request.form(max_files=1, max_fields=4)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError(422, "no_files", "Send one image in the multipart field 'file'.")
            content = await upload.read()
        finally:
            await form.close()
        return await run_in_threadpool(models.predict, run_dir, upload.filename or "image", content, explain)

    @app.post("/api/projects/{project}/runs/{run}/evaluation")
    async def evaluation(project: str, run: str):
        return await run_in_threadpool(models.evaluate, finished_run(project, run))

    @app.get("/api/projects/{project}/runs/{run}/exports")
    def exports(project: str, run: str):
        run_dir = finished_run(project, run)
        return {"exports": models.exports(run_dir), "run_dir": str(run_dir)}

    @app.post("/api/projects/{project}/runs/{run}/exports", status_code=201)
    async def export(project: str, run: str, body: dict = Body(...)):
        return await run_in_threadpool(models.export, finished_run(project, run), body.get("format"))

    return app


def _import_tensorflow() -> None:
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:  # the first prediction says what is missing
        pass


def run_app(workspace, host: str = "127.0.0.1", port: int = 8000, on_start=None) -> None:
    """Serve the web app with uvicorn until Ctrl-C (a running training worker is cancelled and saved)."""
    import uvicorn

    if not is_loopback(host):
        raise ConfigError(f"Refusing to listen on {host!r}: the web app has no login, so anyone reaching it could "
                          "read and change the workspace. Use 127.0.0.1 (the default) or localhost.")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0-65535, got {port!r}.")
    app = create_app(workspace)
    if on_start is not None:
        on_start(f"http://{host}:{port}", app.state.workspace.root)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)).run()


__all__ = ["create_app", "run_app"]
