"""`transferkit serve`: a prediction server over HTTP (FastAPI + uvicorn) for a run folder or an exported model.

Uploads are decoded in memory by the decoder every other entry point uses
(`data.load_image_bytes`), so the server sees the pixels `Predictor.predict` sees.
Concurrent requests are batched: a small asyncio batcher waits at most `max_wait_ms`
for up to `max_batch` images, runs them through the predictor's runtime in one worker
thread (runtimes such as the TFLite interpreter are not thread-safe), and resolves
each request's futures. Every refusal is a 4xx with `{"error": {"code", "message"}}`
that names the problem and the file; a 5xx means a bug (or a timeout / full queue).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import UnidentifiedImageError
from starlette.exceptions import HTTPException

from transferkit import __version__, data
from transferkit.deploy.predictor import Predictor, rank
from transferkit.deploy.runtimes import cpu_threads
from transferkit.errors import ConfigError
from transferkit.runs import folder as rundir

logger = logging.getLogger("transferkit")

API_KEY_ENV = "TRANSFERKIT_API_KEY"
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server; each is a `transferkit serve` option."""

    max_upload_bytes: int = 20 * 1024 * 1024  # the whole request body -> 413
    max_pixels: int = 40_000_000  # per image, from its header, before decoding -> 413
    max_images: int = 64  # per request -> 413
    timeout_s: float = 30.0  # reading, decoding and predicting one request -> 504
    max_queue: int = 1024  # images waiting for inference, over all requests -> 503

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "max_images", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServerLimits.{name} must be a positive integer, got {value!r}.")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise ConfigError(f"ServerLimits.timeout_s must be a positive number of seconds, got {self.timeout_s!r}.")


class RequestError(Exception):
    """A refused request: becomes `{"error": {"code", "message"}}` with `status`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else $TRANSFERKIT_API_KEY, else None; an empty key is refused."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ConfigError(f"The API key is empty; pass --api-key KEY (or set {API_KEY_ENV}) with a non-empty key.")
    return key


def check_bind(host: str, api_key: str | None) -> None:
    """Off loopback, anyone on the network could use the model: require a key."""
    if not is_loopback(host) and api_key is None:
        raise ConfigError(
            f"Refusing to listen on {host!r} without an API key: any machine that reaches it could use the model. "
            f"Pass --api-key KEY (or set {API_KEY_ENV}), or bind to 127.0.0.1 (the default)."
        )


# -- batching ------------------------------------------------------------------------------


class Batcher:
    """Gathers images from concurrent requests into batches for one inference thread."""

    def __init__(self, predict, max_batch: int, max_wait_ms: float, max_queue: int):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self.queue: asyncio.Queue | None = None
        self.pending = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-infer")
        self.task: asyncio.Task | None = None
        self.batches = self.images = self.largest = 0  # served so far, for tests and logs

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, images: list[np.ndarray]) -> np.ndarray:
        """Probabilities for `images`, in order (they may ride in batches with other requests' images)."""
        if self.pending + len(images) > self.max_queue:
            raise RequestError(503, "overloaded",
                               f"{self.pending} images are waiting for inference (limit {self.max_queue}); retry shortly.")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self.pending += len(images)
        for image, future in zip(images, futures):
            self.queue.put_nowait((image, future))
        return np.stack(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                try:
                    items.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self.pending -= len(items)
            live = [(image, future) for image, future in items if not future.done()]  # timed-out requests dropped
            if not live:
                continue
            try:
                probabilities = await loop.run_in_executor(self.executor, self.predict, np.stack([i for i, _ in live]))
            except Exception as error:  # noqa: BLE001 - fail these requests, keep serving
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.images += len(live)
            self.largest = max(self.largest, len(live))
            for (_, future), row in zip(live, probabilities):
                if not future.done():
                    future.set_result(row)


# -- the application -----------------------------------------------------------------------


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse a body over the limit from its Content-Length, or while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_large = RequestError(
            413, "body_too_large",
            f"The request body is larger than the limit of {self.max_bytes} bytes; send fewer or smaller images "
            "(the server's --max-upload-mb sets the limit).")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = error_response(too_large.status, too_large.code, too_large.message, {"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large
            return message

        return await self.app(scope, limited_receive, send)


def install_error_handlers(app) -> None:
    """Every refusal as `{"error": {"code", "message"}}`: RequestError, bad parameters, 404/405, and bugs (500)."""

    @app.exception_handler(RequestError)
    async def _refused(_request, error: RequestError):
        return error_response(error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        return error_response(422, "invalid_parameter", f"Invalid request parameter(s): {problems}.")

    @app.exception_handler(HTTPException)
    async def _http(_request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(_request, error: Exception):
        logger.exception("Unexpected error while serving a request")
        return error_response(500, "internal_error", f"Internal server error ({type(error).__name__}); this is a bug in transferkit.")


def model_info(predictor: Predictor) -> dict:
    """What GET /v1/model says: classes, backbone, input size, runtime, version, validation metrics."""
    info = {"classes": list(predictor.classes), "num_classes": len(predictor.classes),
            "input_size": [predictor.image_size, predictor.image_size, 3], "source_kind": predictor.kind,
            "runtime": predictor.runtime, "runtime_description": predictor.runtime_description,
            "transferkit_version": __version__, "backbone": None, "validation": None}
    config = None
    if predictor.kind == "run":
        config = rundir.read_config(predictor.source)
    else:
        from transferkit.deploy.runtimes import read_export_info

        export = read_export_info(predictor.source) or {}
        info["backbone"] = export.get("backbone")
        run_dir = export.get("run_dir")
        if run_dir and (Path(run_dir) / rundir.CONFIG_FILE).is_file():
            try:
                config = rundir.read_config(run_dir)
            except Exception:  # noqa: BLE001 - metrics are optional for an export
                config = None
    if config:
        info["backbone"] = config.get("params", {}).get("backbone", info["backbone"])
        results = config.get("results") or {}
        metrics = {k: results[k] for k in ("val_accuracy", "val_loss", "val_images", "train_images", "best_epoch")
                   if results.get(k) is not None}
        info["validation"] = metrics or None
    return info


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": "One or more images (JPEG, PNG, ...)."}},
        }}},
    },
}


def create_app(source, *, api_key: str | None = None, limits: ServerLimits | None = None, runtime: str = "auto",
               max_batch: int = 32, max_wait_ms: float = 5.0, predictor: Predictor | None = None):
    """The FastAPI application serving `source` (a run folder or an exported model, as `Predictor` takes).

    With `api_key`, every /v1 request must carry `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    """
    limits = limits or ServerLimits()
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}.")
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
        raise ConfigError(f"max_wait_ms must be a number of milliseconds >= 0, got {max_wait_ms!r}.")
    if api_key is not None and not api_key.strip():
        raise ConfigError("api_key is empty; pass a non-empty key or None.")
    predictor = predictor or Predictor(source, runtime=runtime)
    # Warm up now: picks the runtime and traces the model before the first request pays for it.
    scored = predictor.can_reject  # then each answer says whether the image looks unknown

    def infer(images: np.ndarray) -> np.ndarray:
        """Rows of probabilities, with the unknown score as a last column when the model has a detector."""
        if not scored:
            return predictor.predict_images(images)
        probabilities, scores, _ = predictor.predict_images_with_scores(images)
        return np.column_stack([probabilities, scores])

    blank = np.zeros((1, predictor.image_size, predictor.image_size, 3), np.float32)
    threshold = predictor.predict_images_with_scores(blank)[2]  # loads the model; None without a detector
    batcher = Batcher(infer, max_batch, max_wait_ms, limits.max_queue)
    decoders = ThreadPoolExecutor(max_workers=cpu_threads(), thread_name_prefix="transferkit-decode")
    info = model_info(predictor)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()
        decoders.shutdown(wait=False)

    app = FastAPI(title="transferkit", version=__version__, lifespan=lifespan,
                  description=f"Image classifier ({', '.join(predictor.classes)}) trained with transferkit.")
    app.state.predictor, app.state.batcher, app.state.limits = predictor, batcher, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)

    install_error_handlers(app)

    @app.middleware("http")
    async def _authorize(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("x-api-key")
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if given is None and scheme.lower() == "bearer":
                given = token.strip()
            if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
                return error_response(401, "unauthorized", "Missing or wrong API key: send 'Authorization: Bearer KEY' "
                              "or 'X-API-Key: KEY'.", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/healthz")
    async def healthz():
        """Liveness: the model is loaded and the batcher runs."""
        alive = batcher.task is not None and not batcher.task.done()
        return {"status": "ok" if alive else "stopped", "pending_images": batcher.pending}

    @app.get("/v1/model")
    async def model():
        """Classes, backbone, input size, runtime, transferkit version and the run's validation metrics."""
        return info

    @app.post("/v1/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request, top_k: int = Query(3, ge=1, description="Classes to return per image.")):
        """Classify the images uploaded in the multipart field `files`."""
        try:
            return await asyncio.wait_for(_predict(request, top_k), limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"The request took longer than the limit of {limits.timeout_s:g} s "
                               "(reading, decoding and predicting); send fewer images or retry.") from None

    async def _predict(request: Request, top_k: int) -> dict:
        uploads = await _read_uploads(request)
        loop = asyncio.get_running_loop()
        images = await asyncio.gather(*(loop.run_in_executor(decoders, _decode, name, content)
                                        for name, content in uploads))
        rows = await batcher.submit(list(images))
        names = [name for name, _ in uploads]
        probabilities, scores = (rows[:, :-1], rows[:, -1]) if scored else (rows, None)
        ranked = rank(names, probabilities, predictor.classes, top_k, scores, threshold)
        return {"predictions": [_prediction_json(p) for p in ranked], "runtime": predictor.runtime}

    async def _read_uploads(request: Request) -> list[tuple[str, bytes]]:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise RequestError(415, "unsupported_media_type",
                               f"Content-Type {content_type or '(none)'!r} is not accepted: send multipart/form-data "
                               "with the images in the field 'files' (curl -F files=@image.jpg ...).")
        try:
            form = await request.form(max_files=limits.max_images, max_fields=limits.max_images + 16)
        except HTTPException as error:
            detail = str(error.detail)
            if "Too many files" in detail:
                raise RequestError(413, "too_many_images", f"More than {limits.max_images} images in one request; "
                                   "split them over several requests.") from None
            raise RequestError(400, "malformed_multipart", f"The multipart body cannot be parsed: {detail.rstrip('.')}.") from None
        try:
            values = form.getlist("files")
            if not values:
                received = sorted(set(form.keys()))
                raise RequestError(422, "no_files", "No images in the multipart field 'files' (fields received: "
                                   f"{', '.join(map(repr, received)) or 'none'}); upload with -F files=@image.jpg.")
            if len(values) > limits.max_images:
                raise RequestError(413, "too_many_images", f"{len(values)} images in one request; the limit is "
                                   f"{limits.max_images}. Split them over several requests.")
            uploads = []
            for i, value in enumerate(values):
                if isinstance(value, str):
                    raise RequestError(422, "not_a_file", f"Part {i + 1} of 'files' is a text value, not a file; "
                                       "upload with -F files=@image.jpg (note the @).")
                name = value.filename or f"upload #{i + 1}"
                content = await value.read()
                if not content:
                    raise RequestError(422, "empty_file", f"{name}: the file is empty (0 bytes).")
                uploads.append((name, content))
            return uploads
        finally:
            await form.close()

    def _decode(name: str, content: bytes) -> np.ndarray:
        return decode_upload(name, content, predictor.image_size, limits.max_pixels)

    return app


def decode_upload(name: str, content: bytes, size: int | None, max_pixels: int) -> np.ndarray:
    """An uploaded file's pixels (`data.load_image_bytes`), or a RequestError (413/422) that names the file."""
    try:
        return data.load_image_bytes(content, size, max_pixels, name=name)
    except data.PixelLimitError as error:
        raise RequestError(413, "too_many_pixels", str(error)) from None
    except UnidentifiedImageError:
        raise RequestError(422, "not_an_image", f"{name}: {len(content)} bytes that are not an image Pillow can "
                           f"read (starts with {content[:16]!r}); send a JPEG, PNG, BMP, GIF, WebP or TIFF file.") from None
    except DECODE_ERRORS as error:
        truncated = "truncated" in str(error).lower()
        raise RequestError(422, "truncated_image" if truncated else "unreadable_image",
                           f"{name}: the image cannot be decoded ({error}); the file is probably "
                           f"{'cut short' if truncated else 'corrupt'}. Re-save or re-upload it.") from None


# What a broken image raises from Pillow's decoders (truncated data, bad chunks, bad headers).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError)


def _prediction_json(p) -> dict:
    answer = {"filename": p.path, "label": p.label, "confidence": p.confidence,
              "top_k": [{"label": label, "probability": prob} for label, prob in p.top_k]}
    for key in ("unknown", "score"):  # for models with an unknown detector
        value = getattr(p, key, None)
        if value is not None:
            answer[key] = value
    return answer


def serve(source, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None,
          limits: ServerLimits | None = None, runtime: str = "auto", max_batch: int = 32, max_wait_ms: float = 5.0,
          on_start=None) -> None:
    """Run the server with uvicorn until SIGINT/SIGTERM; in-flight requests are answered before it exits.

    Binding off loopback without an API key is refused before the model is loaded.
    `on_start(url)` is called once the model is loaded, before listening.
    """
    import uvicorn

    api_key = resolve_api_key(api_key)
    check_bind(host, api_key)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0-65535, got {port!r}.")
    limits = limits or ServerLimits()
    started = time.perf_counter()
    app = create_app(source, api_key=api_key, limits=limits, runtime=runtime, max_batch=max_batch,
                     max_wait_ms=max_wait_ms)
    logger.info("Model loaded in %.1f s", time.perf_counter() - started)
    if on_start is not None:
        shown = f"[{host}]" if ":" in host else host
        on_start(f"http://{shown}:{port}")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=limits.timeout_s + 5, limit_concurrency=None)
    uvicorn.Server(config).run()
