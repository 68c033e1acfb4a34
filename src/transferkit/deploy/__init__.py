"""Deployment: export formats, inference runtimes, and the `Predictor` that picks the fastest."""
