"""Settings are declared once: validation messages, and the API and the CLI derived from them."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from typer.testing import CliRunner

from transferkit import ImageClassifier
from transferkit.cli import app
from transferkit.errors import ConfigError
from transferkit.settings import Settings


@pytest.mark.parametrize("name, value, message", [
    ("val_split", 0.0, r"val_split must be strictly between 0 and 1, got 0.0"),
    ("val_split", 1.5, r"val_split must be strictly between 0 and 1, got 1.5"),
    ("val_split", "0.2", r"val_split must be strictly between 0 and 1, got '0.2'"),
    ("test_split", -0.1, r"test_split must be in \[0, 1\), got -0.1"),
    ("learning_rate", 0, r"learning_rate must be a positive number, got 0"),
    ("learning_rate", True, r"learning_rate must be a positive number, got True"),
    ("batch_size", 0, r"batch_size must be a positive integer, got 0"),
    ("batch_size", 2.5, r"batch_size must be a positive integer, got 2.5"),
    ("epochs", -1, r"epochs must be a positive integer, got -1"),
    ("fine_tune_epochs", -1, r"fine_tune_epochs must be a whole number >= 0, got -1"),
    ("patience", -2, r"patience must be a whole number >= 0, got -2"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\), got 1.0"),
    ("class_weight", "sometimes", r"class_weight must be one of 'auto', 'balanced', 'none', got 'sometimes'"),
    ("cache", "yes", r"cache must be True or False, got 'yes'"),
    ("weights", "", r"weights must be a non-empty string, got ''"),
    ("cached_views", 0, r"cached_views must be a positive integer, got 0"),
    ("hidden_units", (64, -1), r"hidden_units must be positive integers, got \[64, -1\]"),
])
def test_each_bad_value_is_named_with_what_is_allowed(name, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**{name: value}).validate()


def test_splits_must_leave_training_images():
    with pytest.raises(ConfigError, match=r"test_split must be in \[0, 1 - val_split\)"):
        Settings(val_split=0.5, test_split=0.5).validate()


def test_defaults_are_valid_and_resolve_per_backbone():
    resolved = Settings().resolve()
    assert resolved.image_size == 224 and resolved.fine_tune_at == 100
    assert resolved.fine_tune_learning_rate == pytest.approx(Settings().learning_rate / 10)
    assert Settings(backbone="mobilenet", image_size=128).resolve().image_size == 128


def test_unknown_backbone_and_bad_size_are_refused():
    with pytest.raises(ConfigError, match="Known backbones"):
        Settings(backbone="resnet9000").resolve()
    with pytest.raises(ConfigError, match="too small for mobilenet_v2"):
        Settings(image_size=8).resolve()


def test_api_defaults_are_the_settings_defaults():
    signature = inspect.signature(ImageClassifier)
    for f in Settings.fields():
        assert signature.parameters[f.name].default == getattr(Settings(), f.name), f.name
    assert ImageClassifier().get_params() == dataclasses.asdict(Settings())


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['learnin_rate'\]"):
        ImageClassifier(learnin_rate=0.1)


def test_json_round_trip_drops_names_a_newer_version_does_not_know():
    params = Settings(epochs=3, hidden_units=(8,)).to_json()
    assert Settings.from_json({**params, "retired_option": 1}) == Settings(epochs=3, hidden_units=[8])


def test_every_cli_setting_is_a_train_option_with_its_help():
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for f in Settings.fields():
        if f.metadata["cli"]:
            flag = {"cache": "--cache", "write_report": "--report", "from_run": "--from"}.get(f.name, "--" + f.name.replace("_", "-"))
            assert flag in result.output, flag
            assert f.metadata["help"].split()[0] in text, f.name


def test_cli_reports_a_bad_value_before_any_work(tmp_path):
    (tmp_path / "a").mkdir()
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--val-split", "1.5", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "val_split must be strictly between 0 and 1, got 1.5" in result.output
    assert not (tmp_path / "run").exists()
