"""The prediction server over real HTTP on loopback: a tiny real run, real uploads, uvicorn in a
thread (and in a subprocess for SIGTERM), answers compared with `Predictor.predict`."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from typer.testing import CliRunner

from transferkit import data
from transferkit.cli import app as cli_app
from transferkit.deploy.predictor import Predictor
from transferkit.deploy.server import ServerLimits, check_bind, create_app, resolve_api_key, serve
from transferkit.errors import ConfigError

KEY = "s3cret-test-key"
LIMITS = ServerLimits(max_upload_bytes=2 * 1024 * 1024, max_pixels=1_000_000, max_images=4, timeout_s=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    """uvicorn serving `app` on a free loopback port in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory) -> Path:
    from transferkit import ImageClassifier

    out = tmp_path_factory.mktemp("serve") / "run"
    ImageClassifier(fine_tune_epochs=1, epochs=3, patience=None, verbose=0, write_report=False).fit(tiny_dir, out=out)
    return out


@pytest.fixture(scope="module")
def images(tiny_dir) -> list[Path]:
    return sorted(tiny_dir.rglob("*.jpg"))


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor(run_dir)


@pytest.fixture(scope="module")
def served(run_dir, predictor):
    app = create_app(run_dir, limits=LIMITS, predictor=predictor)
    with running(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def url(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def keyed_url(run_dir, predictor):
    with running(create_app(run_dir, api_key=KEY, predictor=predictor)) as base:
        yield base


def post(base, files, params=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{base}/v1/predict", files=files, params=params, timeout=60, **kwargs)


def upload(path: Path):
    return ("files", (path.name, path.read_bytes(), "image/jpeg"))


def assert_error(response, status, code, *mentions):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    for text in mentions:
        assert text in error["message"], error


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, then a tiny IDAT: a pixel bomb's header."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- decoding ---------------------------------------------------------------------------------


def test_load_image_bytes_matches_load_image(images):
    for path in images[:3]:
        assert np.array_equal(data.load_image_bytes(path.read_bytes(), 160, name=path.name), data.load_image(path, 160))
    with pytest.raises(data.PixelLimitError, match=r"bomb\.png: 100000x100000 pixels|bomb\.png: .*decompression"):
        data.load_image_bytes(png_header_only(100_000, 100_000), 160, name="bomb.png")


# -- answers ----------------------------------------------------------------------------------


def test_predict_matches_predictor(url, images, run_dir):
    response = post(url, [upload(p) for p in images[:3]], params={"top_k": 2})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    expected = Predictor(run_dir).predict([str(p) for p in images[:3]], top_k=2)
    assert [a["filename"] for a in answers] == [p.name for p in images[:3]]
    for answer, p in zip(answers, expected):
        assert answer["label"] == p.label
        assert abs(answer["confidence"] - p.confidence) < 1e-4
        assert [t["label"] for t in answer["top_k"]] == [label for label, _ in p.top_k]
        assert abs(sum(t["probability"] for t in answer["top_k"]) - 1) < 1e-4
        assert "unknown" not in answer or getattr(p, "unknown", None) is not None


def test_concurrent_requests_are_batched_and_match_predictor(served, images, run_dir):
    url, app = served
    expected = {Path(p.path).name: p for p in Predictor(run_dir).predict([str(p) for p in images], top_k=2)}
    groups = [images[i::8][:3] for i in range(8)]  # 8 clients, 3 images each, all different
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda g: post(url, [upload(p) for p in g], params={"top_k": 2}), groups))
    seen = 0
    for group, response in zip(groups, responses):
        assert response.status_code == 200, response.text
        for path, answer in zip(group, response.json()["predictions"]):
            p = expected[path.name]
            assert answer["filename"] == path.name and answer["label"] == p.label
            for (label, prob), got in zip(p.top_k, answer["top_k"]):
                assert got["label"] == label and abs(got["probability"] - prob) < 1e-4
            seen += 1
    assert seen == sum(len(g) for g in groups)
    assert app.state.batcher.largest > 3, "no batch held images of more than one request"


def test_healthz_model_openapi(url, run_dir):
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    model = httpx.get(f"{url}/v1/model").json()
    config = json.loads((run_dir / "config.json").read_text())
    assert model["classes"] == ["alpaca", "not alpaca"]
    assert model["backbone"] == "mobilenet_v2" and model["input_size"] == [224, 224, 3]
    assert model["runtime"] == "keras" and model["transferkit_version"]
    assert model["validation"]["val_accuracy"] == pytest.approx(config["results"]["val_accuracy"])
    spec = httpx.get(f"{url}/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "files" in body["schema"]["properties"]
    assert {"/healthz", "/v1/model"} <= set(spec["paths"])
    assert "swagger" in httpx.get(f"{url}/docs").text.lower()


# -- refusals ---------------------------------------------------------------------------------


def test_malformed_uploads_get_4xx_json(url, images):
    jpeg = images[0].read_bytes()
    cases = [
        ([("files", ("empty.jpg", b"", "image/jpeg"))], 422, "empty_file", "empty.jpg"),
        ([("files", ("noise.jpg", os.urandom(4000), "image/jpeg"))], 422, "not_an_image", "noise.jpg"),
        ([("files", ("page.jpg", b"<!DOCTYPE html><html><body>404</body></html>", "image/jpeg"))], 422, "not_an_image", "page.jpg"),
        ([("files", ("cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg"))], 422, "truncated_image", "cut.jpg"),
        ([("files", ("bomb.png", png_header_only(100_000, 100_000), "image/png"))], 413, "too_many_pixels", "bomb.png"),
        ([("other", ("a.jpg", jpeg, "image/jpeg"))], 422, "no_files", "'other'"),
        ([upload(images[0]), ("files", ("bad.jpg", b"GIF89a garbage", "image/gif"))], 422, "not_an_image", "bad.jpg"),
        ([upload(p) for p in images[:5]], 413, "too_many_images", "4"),
    ]
    for files, status, code, mention in cases:
        assert_error(post(url, files), status, code, mention)
    # a real image, above the pixel limit (1200x1200 > 1,000,000)
    big = io.BytesIO()
    Image.new("RGB", (1200, 1200), (120, 30, 200)).save(big, "PNG")
    assert_error(post(url, [("files", ("wide.png", big.getvalue(), "image/png"))]), 413, "too_many_pixels", "wide.png", "1200x1200")
    # a text value instead of a file
    assert_error(post(url, [("note", ("n.txt", b"x", "text/plain"))], data={"files": "cat.jpg"}), 422, "not_a_file")
    # wrong content type, broken JSON, no body, broken multipart
    assert_error(httpx.post(f"{url}/v1/predict", content=b"{broken", headers={"content-type": "application/json"}),
                 415, "unsupported_media_type", "application/json")
    assert_error(httpx.post(f"{url}/v1/predict"), 415, "unsupported_media_type")
    assert_error(httpx.post(f"{url}/v1/predict", content=b"garbage",
                            headers={"content-type": "multipart/form-data; boundary=xyz"}), 400, "malformed_multipart")
    # bad query parameters, unknown paths
    assert_error(post(url, [upload(images[0])], params={"top_k": 0}), 422, "invalid_parameter", "top_k")
    assert_error(post(url, [upload(images[0])], params={"top_k": "many"}), 422, "invalid_parameter", "top_k")
    assert_error(httpx.get(f"{url}/v1/nothing"), 404, "not_found")
    assert_error(httpx.get(f"{url}/v1/predict"), 405, "method_not_allowed")
    # the server still answers
    assert post(url, [upload(images[0])]).status_code == 200


def test_oversized_body_is_refused(url):
    blob = os.urandom(3 * 1024 * 1024)
    assert_error(post(url, [("files", ("huge.jpg", blob, "image/jpeg"))]), 413, "body_too_large", str(LIMITS.max_upload_bytes))

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="stream.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(48):
            yield b"\xff" * (64 * 1024)
        yield b"\r\n--xyz--\r\n"

    try:
        response = httpx.post(f"{url}/v1/predict", content=chunks(), timeout=30,
                              headers={"content-type": "multipart/form-data; boundary=xyz"})
    except httpx.TransportError:  # the server may close before the client finishes sending
        pass
    else:
        assert_error(response, 413, "body_too_large")
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_request_timeout_is_504(run_dir, predictor, images):
    """The body arrives after the timeout: the request is answered 504, not left hanging."""
    limits = ServerLimits(timeout_s=0.5)
    with running(create_app(run_dir, limits=limits, predictor=predictor)) as base:
        port = int(base.rsplit(":", 1)[1])
        body, content_type = multipart_body([images[0]])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/v1/predict")
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body[:100])
        time.sleep(1.5)
        with contextlib.suppress(OSError):
            connection.send(body[100:])
        response = connection.getresponse()
        assert response.status == 504
        assert json.loads(response.read())["error"]["code"] == "timeout"


# -- access -----------------------------------------------------------------------------------


def test_api_key_is_enforced(keyed_url, images):
    files = [upload(images[0])]
    assert_error(post(keyed_url, files), 401, "unauthorized")
    assert_error(post(keyed_url, files, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert_error(httpx.get(f"{keyed_url}/v1/model"), 401, "unauthorized")
    assert post(keyed_url, files, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert post(keyed_url, files, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(f"{keyed_url}/v1/model", headers={"X-API-Key": KEY}).json()["classes"] == ["alpaca", "not alpaca"]
    assert httpx.get(f"{keyed_url}/healthz").status_code == 200  # liveness probes need no key


def test_off_loopback_needs_a_key(run_dir, monkeypatch):
    monkeypatch.delenv("TRANSFERKIT_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"Refusing to listen on '0\.0\.0\.0' without an API key"):
        serve(run_dir, host="0.0.0.0", port=free_port())
    result = CliRunner().invoke(cli_app, ["serve", str(run_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--api-key" in result.output
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    check_bind("0.0.0.0", "k")
    monkeypatch.setenv("TRANSFERKIT_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env"
    monkeypatch.setenv("TRANSFERKIT_API_KEY", " ")
    with pytest.raises(ConfigError, match="empty"):
        resolve_api_key(None)
    with pytest.raises(ConfigError, match="max_images"):
        ServerLimits(max_images=0)


# -- shutdown ---------------------------------------------------------------------------------


def multipart_body(paths) -> tuple[bytes, str]:
    boundary = "transferkit-test-boundary"
    parts = [
        (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{p.name}\"\r\n"
         "Content-Type: image/jpeg\r\n\r\n").encode() + p.read_bytes() + b"\r\n"
        for p in paths
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_sigterm_answers_the_request_in_flight(run_dir, images):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(data.__file__).parents[2])] + sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(run_dir), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not start in 120 s"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        body, content_type = multipart_body(images[:2])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.putrequest("POST", "/v1/predict?top_k=2")
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body[: len(body) // 2])  # the request is now in flight
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert process.poll() is None, "the server exited with a request in flight"
        connection.send(body[len(body) // 2:])
        response = connection.getresponse()
        assert response.status == 200
        answers = json.loads(response.read())["predictions"]
        assert [a["filename"] for a in answers] == [p.name for p in images[:2]]
        # uvicorn re-raises the signal once drained, so the exit status says SIGTERM ended it
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        output = process.stdout.read()
        assert f"http://127.0.0.1:{port}" in output and "curl" in output and "files=@" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
