"""Export and deployment: every format loads, agrees with Keras on real images, and
carries the class names; `predict` runs exported models and run folders alike."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from transferkit.runs import folder as rundir
from transferkit.cli import app
from transferkit.errors import ConfigError, RunDirError
from transferkit.deploy.export import FORMATS, export_model
from transferkit.deploy.predictor import Predictor
from transferkit.deploy.runtimes import read_onnx_metadata, read_tflite_metadata

runner = CliRunner()
FLOAT_FORMATS = ("savedmodel", "tflite", "tflite-fp16", "onnx")
FILE_NAMES = {"savedmodel": "savedmodel", "tflite": "model.tflite", "tflite-fp16": "model_fp16.tflite",
              "tflite-int8": "model_int8.tflite", "onnx": "model.onnx"}


@pytest.fixture(scope="module")
def exports(alpaca_run, tmp_path_factory):
    """Each format exported once, through each entry point: the CLI (into the default
    RUN/export/ of a copy of the run, so the shared run folder stays as other tests
    expect it), `ImageClassifier.export`, and `export_model`."""
    classifier, run_dir, _ = alpaca_run
    root = tmp_path_factory.mktemp("exports")
    run_copy = root / "run"
    run_copy.mkdir()
    for name in (rundir.MODEL_FILE, rundir.CLASSES_FILE, rundir.CONFIG_FILE, rundir.SPLIT_FILE):
        shutil.copy2(run_dir / name, run_copy / name)

    cli = runner.invoke(app, ["export", str(run_copy), "--format", "tflite", "--json"])
    assert cli.exit_code == 0, cli.output
    paths = {"tflite": run_copy / "export" / "model.tflite"}
    assert json.loads(cli.stdout)["path"] == str(paths["tflite"])

    result = classifier.export("savedmodel", root / FILE_NAMES["savedmodel"])
    paths["savedmodel"] = result.path
    for format in ("tflite-fp16", "tflite-int8", "onnx"):
        paths[format] = export_model(run_dir, format, root / FILE_NAMES[format], calibration_images=32).path
    return paths, run_copy


@pytest.fixture(scope="module")
def keras_labels(alpaca_run):
    """Keras top-1 on the real validation images, the reference every export must match."""
    classifier, _, _ = alpaca_run
    paths = list(classifier.val_files_.paths)
    return paths, [p.label for p in classifier.predict(paths)]


@pytest.mark.parametrize("format", FORMATS)
def test_export_predicts_the_keras_top1_and_carries_the_class_names(format, exports, keras_labels, alpaca_run):
    classifier, _, _ = alpaca_run
    paths, expected = keras_labels
    exported = exports[0][format]

    predictor = Predictor(exported)
    assert predictor.classes == classifier.classes_
    assert predictor.image_size == classifier.image_size_
    labels = [p.label for p in predictor.predict(paths)]
    agreement = np.mean(np.array(labels) == np.array(expected))
    assert agreement == 1.0 if format in FLOAT_FORMATS else agreement >= 0.97
    assert predictor.last_stats["images"] == len(paths) and predictor.last_stats["images_per_second"] > 0

    # The sidecars: class names, and the parity report with the same figure.
    folder = format == "savedmodel"
    labels_file = exported / "labels.txt" if folder else exported.with_name(exported.name + ".labels.txt")
    info_file = exported / "export.json" if folder else exported.with_name(exported.name + ".export.json")
    assert labels_file.read_text().splitlines() == classifier.classes_
    info = json.loads(info_file.read_text())
    assert info["classes"] == classifier.classes_ and info["image_size"] == classifier.image_size_ and info["format"] == format
    assert info["parity"]["passed"] and info["parity"]["images"] == len(paths)
    assert info["parity"]["agreement"] == pytest.approx(agreement, abs=1e-4)
    assert info["parity"]["threshold"] == (0.99 if format in FLOAT_FORMATS else 0.97)
    assert info["size_bytes"] > 1_000_000

    # Single-file formats carry the names inside, too: the file alone is enough.
    if format == "onnx":
        assert read_onnx_metadata(exported)["classes"] == classifier.classes_
    elif not folder:
        assert read_tflite_metadata(exported)["classes"] == classifier.classes_


def test_int8_export_is_quantised_and_reports_its_calibration(exports):
    paths = exports[0]
    info = json.loads(paths["tflite-int8"].with_name("model_int8.tflite.export.json").read_text())
    assert info["quantization"]["calibration_images"] == 32
    assert "int8" in Predictor(paths["tflite-int8"]).runtime_description
    assert "float" in Predictor(paths["tflite"]).runtime_description


def test_exported_model_alone_keeps_its_names_and_savedmodel_needs_its_labels(exports, alpaca_run, tmp_path):
    classifier, _, _ = alpaca_run
    paths = exports[0]
    alone = tmp_path / "renamed.tflite"
    shutil.copy2(paths["tflite-fp16"], alone)  # no sidecar: the embedded metadata names the classes
    assert Predictor(alone).classes == classifier.classes_

    bare = tmp_path / "bare_savedmodel"
    shutil.copytree(paths["savedmodel"], bare)
    (bare / "labels.txt").unlink()
    with pytest.raises(RunDirError, match="carries no class names"):
        Predictor(bare)


def test_predict_cli_takes_an_exported_model_and_reports_images_per_second(exports, keras_labels):
    paths, expected = keras_labels
    for format in ("tflite-int8", "onnx"):
        result = runner.invoke(app, ["predict", str(exports[0][format]), *paths[:8], "--json"])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)  # stdout holds the JSON alone
        assert [row["path"] for row in rows] == paths[:8]
        assert "images/s" in result.stderr and "images/s" not in result.stdout
        if format == "onnx":
            assert [row["label"] for row in rows] == expected[:8]
        else:
            assert np.mean([row["label"] == e for row, e in zip(rows, expected[:8])]) >= 0.85


def test_run_folder_uses_its_parity_checked_tflite_copy(exports, keras_labels, alpaca_run):
    paths, expected = keras_labels
    _, run_copy = exports
    auto = Predictor(run_copy)  # RUN/export/model.tflite passed its parity check: used
    assert [p.label for p in auto.predict(paths)] == expected
    assert auto.runtime == "tflite"
    keras = Predictor(run_copy, runtime="keras")
    assert [p.label for p in keras.predict(paths[:4])] == expected[:4]
    assert keras.runtime == "keras"
    # The shared run has no export; a few images are not worth a conversion: Keras.
    plain = Predictor(alpaca_run[1])
    plain.predict(paths[:4])
    assert plain.runtime == "keras" and plain.conversion is None


def test_bad_input_says_what_is_allowed(exports, alpaca_run, tmp_path):
    _, run_dir, _ = alpaca_run
    with pytest.raises(ConfigError, match="savedmodel, tflite, tflite-fp16, tflite-int8, onnx"):
        export_model(run_dir, "coreml")
    with pytest.raises(RunDirError, match="does not exist"):
        export_model(tmp_path / "no_such_run", "tflite")
    with pytest.raises(ConfigError, match=r"ending in \.tflite"):
        export_model(run_dir, "tflite", tmp_path / "model.onnx")
    with pytest.raises(RunDirError, match="already exists"):
        export_model(run_dir, "tflite", exports[0]["tflite"])
    with pytest.raises(ConfigError, match="calibration_images"):
        export_model(run_dir, "tflite-int8", tmp_path / "q.tflite", calibration_images=0)
    with pytest.raises(RunDirError, match="does not exist"):
        Predictor(tmp_path / "missing.tflite")
    with pytest.raises(ConfigError, match="runtime"):
        Predictor(exports[0]["onnx"], runtime="tflite")

    result = runner.invoke(app, ["export", str(run_dir), "--format", "coreml"])
    assert result.exit_code == 2 and "tflite-int8" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "no_such_run")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["predict", str(exports[0]["tflite"]), str(tmp_path), "--explain", str(tmp_path / "x")])
    assert result.exit_code == 2 and "run folder" in result.output
