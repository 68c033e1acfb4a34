"""`transferkit serve`: answer predictions over HTTP (see `transferkit.deploy.server`)."""

from pathlib import Path
from typing import Optional

import typer

from transferkit.cli.app import command, out, setup_logging


@command()
def serve(
    source: Path = typer.Argument(..., help="A run folder written by `transferkit train`, or a model written by `transferkit export` (.tflite file, SavedModel folder, .onnx file).", show_default=False),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Anything but loopback needs --api-key."),
    port: int = typer.Option(8000, help="TCP port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TRANSFERKIT_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY' (or 'X-API-Key: KEY') on every /v1 request.", show_default=False),
    max_upload_mb: float = typer.Option(20.0, help="Largest request body, in MiB (413 above)."),
    max_pixels: int = typer.Option(40_000_000, help="Most pixels per image, read from its header before decoding (413 above)."),
    max_images: int = typer.Option(64, help="Most images per request (413 above)."),
    timeout: float = typer.Option(30.0, help="Seconds one request may take to upload, decode and predict (504 above)."),
    runtime: str = typer.Option("auto", help="auto: the fastest available (for a run folder, a TFLite copy that passed the parity check, else Keras); or keras, tflite, savedmodel, onnx."),
    max_batch: int = typer.Option(32, help="Most images per inference batch, gathered from concurrent requests."),
    max_wait_ms: float = typer.Option(5.0, help="Longest wait, in ms, for more images to fill a batch."),
):
    """Serve predictions over HTTP: POST images to /v1/predict; /v1/model, /healthz, docs at /docs.

    Listens on 127.0.0.1 unless --host says otherwise (which needs an API key).
    Ctrl-C or SIGTERM stops it after answering the requests in flight.
    """
    setup_logging(quiet=False)
    from transferkit.errors import ConfigError

    try:
        from transferkit.deploy.server import ServerLimits, serve as run_server
    except ImportError as error:
        raise ConfigError(f"`transferkit serve` needs {error.name}, which is not installed: "
                          "pip install 'transferkit[serve]' (fastapi, uvicorn, python-multipart).") from error

    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be above 0, got {max_upload_mb}.")
    limits = ServerLimits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                          max_images=max_images, timeout_s=timeout)

    def started(url: str) -> None:
        auth = " -H 'Authorization: Bearer $TRANSFERKIT_API_KEY'" if api_key else ""
        out.print(f"Serving {source} at [bold]{url}[/] (API docs: {url}/docs). Stop with Ctrl-C.", highlight=False, soft_wrap=True)
        out.print(f"Try:  curl{auth} -F files=@image.jpg '{url}/v1/predict?top_k=3'", highlight=False, soft_wrap=True)

    run_server(source, host=host, port=port, api_key=api_key, limits=limits, runtime=runtime,
               max_batch=max_batch, max_wait_ms=max_wait_ms, on_start=started)
