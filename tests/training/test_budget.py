"""--time-budget: durations, the plan, and a real run that ends within its budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import ALPACA, requires_shared


@pytest.mark.parametrize("text, seconds", [(90, 90.0), ("300", 300.0), ("90s", 90.0), ("5m", 300.0),
                                           ("1h30m", 5400.0), ("2.5m", 150.0)])
def test_durations(text, seconds):
    from transferkit.settings import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "", "-5m", 0, True])
def test_bad_durations_say_what_is_allowed(bad):
    from transferkit import ImageClassifier
    from transferkit.errors import ConfigError

    with pytest.raises(ConfigError, match="time_budget"):
        ImageClassifier(time_budget=bad).settings().resolve()


def test_a_tight_budget_shrinks_views_then_the_image_size():
    from transferkit.training.budget import plan_budget

    now = time.perf_counter()
    roomy = plan_budget(600, now, 0.005, 160, 2000, 500, 8, True)
    assert roomy.views == 8 and roomy.image_size == 160 and roomy.write_report
    tight = plan_budget(60, now, 0.01, 160, 5000, 1000, 8, True)
    assert tight.views == 1 and tight.image_size < 160 and not tight.write_report
    assert now < tight.head_deadline <= tight.fine_tune_deadline <= now + 60


@requires_shared
def test_a_short_budget_finishes_within_it_with_a_saved_model(tmp_path):
    budget = 75
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferkit", "train", str(ALPACA), "--out", str(tmp_path / "run"),
                           "--time-budget", f"{budget}s", "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert seconds <= budget * 1.15, f"took {seconds:.0f} s for a {budget} s budget"
    assert results["val_accuracy"] > 0.6
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["time_budget"]["chose"]
    from transferkit.runs.trained import TrainedModel

    assert TrainedModel.load(tmp_path / "run").predict_proba([str(next((ALPACA / "alpaca").iterdir()))]).shape == (1, 2)
