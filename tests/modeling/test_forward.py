"""Backbone passes on OpenVINO: checked against Keras, kept in the run folder, used without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SMALL, requires_shared

pytest.importorskip("openvino")


@requires_shared
def test_openvino_agrees_with_keras_on_real_photos(alpaca_photos):
    from transferkit import data
    from transferkit.modeling.backbones import get_backbone
    from transferkit.modeling.classifier import build_classifier, inference_model
    from transferkit.modeling.forward import KerasForward, fast_forward

    model = inference_model(build_classifier(get_backbone("mobilenet_v2"), 3, 96))
    images = np.stack([data.load_image(p, 96) for p in alpaca_photos]).astype(np.float32)
    forward = fast_forward(model, images[:8], compute="openvino")
    assert forward.runtime == "openvino" and forward.check["relative_difference"] < 1e-3
    reference, got = KerasForward(model)(images), forward(images)
    assert [o.shape for o in got] == [o.shape for o in reference]
    np.testing.assert_allclose(got[1], reference[1], rtol=1e-3, atol=1e-3)  # pooled features
    assert (got[0].argmax(1) == reference[0].argmax(1)).all()


def test_auto_uses_tensorflow_where_the_conversion_would_not_pay():
    from transferkit.errors import ConfigError
    from transferkit.modeling.forward import OPENVINO_MIN_IMAGES, check_compute, compute_for

    assert compute_for("auto", OPENVINO_MIN_IMAGES - 1) == "tensorflow"
    assert compute_for("auto", OPENVINO_MIN_IMAGES) == "auto"
    assert compute_for("tensorflow", 10**6) == "tensorflow"
    with pytest.raises(ConfigError, match="compute must be one of auto, openvino, tensorflow, got 'gpu'"):
        check_compute("gpu")


@pytest.fixture(scope="module")
def openvino_run(synthetic_dir, tmp_path_factory):
    from transferkit import ImageClassifier

    run_dir = tmp_path_factory.mktemp("runs") / "openvino"
    ImageClassifier(**SMALL, compute="openvino").fit(synthetic_dir, out=run_dir)
    return run_dir


def test_the_run_records_its_runtime_and_keeps_a_checked_copy(openvino_run):
    from transferkit import data

    config = json.loads((openvino_run / "config.json").read_text())
    assert config["resolved"]["cache_runtime"]["runtime"] == "openvino"
    assert config["resolved"]["cache_runtime"]["precision"] == "f32"
    info = json.loads((openvino_run / "openvino" / "openvino.json").read_text())
    assert info["model_digest"] == data.file_digest(openvino_run / "model.keras")
    assert info["check"]["relative_difference"] < 1e-3
    assert {"model.xml", "model.bin", "head.npz"} <= {p.name for p in (openvino_run / "openvino").iterdir()}


PREDICT = """
import json, sys
from transferkit.deploy.predictor import Predictor
predictor = Predictor(sys.argv[1], precision="f32")
rows = [(p.path, p.label, p.confidence, p.score) for p in predictor.predict([sys.argv[2]], top_k=2)]
print(json.dumps({"rows": rows, "runtime": predictor.runtime, "tensorflow": "tensorflow" in sys.modules}))
"""


def test_a_run_folder_predicts_on_its_copy_without_tensorflow_like_keras(openvino_run, synthetic_dir):
    from transferkit.deploy.predictor import Predictor

    done = subprocess.run([sys.executable, "-c", PREDICT, str(openvino_run), str(synthetic_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    fast = json.loads(done.stdout.strip().splitlines()[-1])
    assert fast["runtime"] == "openvino" and fast["tensorflow"] is False
    keras = Predictor(openvino_run, runtime="keras").predict([synthetic_dir], top_k=2)
    assert [row[1] for row in fast["rows"]] == [p.label for p in keras]
    np.testing.assert_allclose([row[2] for row in fast["rows"]], [p.confidence for p in keras], atol=1e-4)
    np.testing.assert_allclose([row[3] for row in fast["rows"]], [p.score for p in keras], atol=1e-3)


def test_a_copy_of_another_model_is_ignored(openvino_run, synthetic_dir, tmp_path):
    import shutil

    from transferkit.deploy.predictor import Predictor
    from transferkit.errors import ConfigError

    run = shutil.copytree(openvino_run, tmp_path / "run")
    info = json.loads((run / "openvino" / "openvino.json").read_text())
    (run / "openvino" / "openvino.json").write_text(json.dumps({**info, "model_digest": "0" * 64}))
    predictor = Predictor(run)
    assert predictor.predict([synthetic_dir]) and predictor.runtime != "openvino"
    with pytest.raises(ConfigError, match="has no OpenVINO copy"):
        Predictor(run, runtime="openvino").predict([synthetic_dir])


def test_bf16_is_measured_on_validation_and_has_its_own_threshold(openvino_run, synthetic_dir):
    from transferkit.deploy.predictor import Predictor
    from transferkit.errors import ConfigError

    ood = json.loads((openvino_run / "ood.json").read_text())
    assert 0.0 <= ood["bf16_top1_agreement"] <= 1.0 and "bf16_threshold" in ood
    predictor = Predictor(openvino_run, precision="bf16")
    assert predictor.predict([synthetic_dir]) and predictor.runtime_description.endswith("bf16")
    with pytest.raises(ConfigError, match="precision must be one of auto, f32, bf16, got 'fp8'"):
        Predictor(openvino_run, precision="fp8")
