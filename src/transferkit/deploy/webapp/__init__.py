"""`transferkit app`: a local no-code web app (Data, Train, Test, Export pages) on the prediction server's engine."""

from transferkit.deploy.webapp.app import create_app, run_app

__all__ = ["create_app", "run_app"]
