"""The typer application every command module registers on, its consoles and its one error handler."""

from __future__ import annotations

import functools
import logging

import typer
from rich.console import Console

from transferkit import __version__
from transferkit.errors import TransferkitError

app = typer.Typer(
    name="transferkit",
    help="Turn a folder of class-named image folders into an accurate image classifier "
    "by transfer learning, on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def setup_logging(quiet: bool) -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("transferkit")
    logger.handlers[:] = [RichHandler(console=err, show_time=False, show_path=False)]
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False


def fail(error: Exception) -> None:
    err.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def handle_errors(function):
    """The one error handler: a `TransferkitError` is printed and exits with code 2."""
    @functools.wraps(function)
    def run(*a, **kw):
        try:
            return function(*a, **kw)
        except TransferkitError as error:
            fail(error)
    return run


def command(*args, **kwargs):
    """`app.command`, with the one error handler (`handle_errors`)."""
    def register(function):
        return app.command(*args, **kwargs)(handle_errors(function))
    return register


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _version(value: bool):
    if value:
        out.print(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    pass


def load_run(run_dir, verbose: bool = True):
    """The `ImageClassifier` of a run folder (the API the commands are a layer over)."""
    from transferkit.api import ImageClassifier

    classifier = ImageClassifier.load(run_dir)
    classifier.verbose = 1 if verbose else 0
    return classifier
