"""Runs: the run folder on disk (files, atomic writes, lock) and the `TrainedModel` it holds."""
