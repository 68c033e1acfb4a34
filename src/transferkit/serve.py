"""Kept so `from transferkit.serve import Predictor` (the round-1 import) still works; use `transferkit.deploy`."""

from transferkit.deploy.predictor import Prediction, Predictor  # noqa: F401
