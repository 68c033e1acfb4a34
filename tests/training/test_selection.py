"""Warnings about what validation can tell: leaks (perfect from the first epoch) and too few images."""

from __future__ import annotations

import logging

from transferkit.training.pipeline import _warn_if_validation_leaks, epochs_within_noise


def history(*accuracies):
    return [{"epoch": i + 1, "stage": 1, "val_accuracy": a, "val_loss": 1 - a} for i, a in enumerate(accuracies)]


def test_a_small_validation_split_says_its_epochs_are_within_noise(caplog):
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        # 60 images: two standard errors at 0.95 are 5.6 points, so 0.933 and 0.967 are as good as 0.950
        assert epochs_within_noise(history(0.80, 0.933, 0.950, 0.967), 60, best_epoch=3) == 3
    assert "Validation has 60 images, too few to tell epochs apart: 3 of the 4 epochs" in caplog.text
    assert "--val-split" in caplog.text


def test_a_large_split_or_a_single_epoch_says_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        assert epochs_within_noise(history(0.97, 0.975, 0.98), 5000, best_epoch=3) is None  # band 0.4 points
        assert epochs_within_noise(history(0.95), 60, best_epoch=1) is None  # the solved head: no choice
        assert epochs_within_noise(history(0.50, 0.95), 60, best_epoch=2) is None  # the others are clearly worse
    assert not caplog.text


def test_perfect_validation_from_the_first_epoch_names_the_likely_leak(caplog):
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        _warn_if_validation_leaks(history(1.0, 1.0), 354, name_groups=0)
        _warn_if_validation_leaks(history(1.0, 1.0), 354, name_groups=21)  # series already kept together
        _warn_if_validation_leaks(history(1.0), 40, name_groups=0)  # too small to say
    assert caplog.text.count("Validation accuracy was 1.000 from the first epoch on 354 images") == 1
    assert "--group-by auto" in caplog.text
