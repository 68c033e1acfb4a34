"""`transferkit app`: the no-code web app in the browser (see `transferkit.deploy.webapp`)."""

from pathlib import Path

import typer

from transferkit.cli.app import command, out, setup_logging


@command("app")
def webapp(
    workspace: Path = typer.Option(Path("transferkit-workspace"), help="Folder for projects (data, runs, logs); created if missing. Nothing outside it is written."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; loopback only (the app has no login)."),
    port: int = typer.Option(8000, help="TCP port to listen on."),
):
    """A local web app: collect images (upload, webcam, a folder), train, test with Grad-CAM, export.

    Open the printed address in a browser. Everything runs offline on this machine; Ctrl-C stops
    it (a run still training is cancelled, keeping its best weights).
    """
    setup_logging(quiet=False)
    from transferkit.errors import ConfigError

    try:
        from transferkit.deploy.webapp import run_app
    except ImportError as error:
        raise ConfigError(f"`transferkit app` needs {error.name}, which is not installed: "
                          "pip install 'transferkit[app]' (fastapi, uvicorn, python-multipart).") from error

    def started(url: str, root: Path) -> None:
        out.print(f"transferkit app at [bold]{url}[/] (workspace {root}). Stop with Ctrl-C.", highlight=False, soft_wrap=True)

    run_app(workspace, host=host, port=port, on_start=started)
