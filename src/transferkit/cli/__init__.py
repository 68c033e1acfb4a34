"""The `transferkit` command: one module per command, each a thin layer over `transferkit.api`."""

# Importing a command module registers its command; `--help` lists them in this order.
from transferkit.cli import train, predict, backbones, evaluate, explain, activations  # noqa: F401, I001
from transferkit.cli import preview, report, doctor, audit, export, serve, webapp, runs, datasets  # noqa: F401, I001
from transferkit.cli.app import app


def main():
    app()
