"""The web app's JSON API (TestClient, no browser): names, uploads, imports, path traversal, settings,
and that nothing is written outside the workspace. The browser test drives the whole flow."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from conftest import checksums, make_images
from transferkit.deploy.webapp import create_app
from transferkit.deploy.webapp.jobs import check_settings, train_command
from transferkit.deploy.server import RequestError


def png(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture()
def setup(tmp_path):
    """(client, workspace, outside): an app on tmp/ws with project 'pets' (classes cat, dog); `outside` is the
    rest of tmp_path, which must stay as it is."""
    workspace = tmp_path / "ws"
    with TestClient(create_app(workspace)) as client:
        assert client.post("/api/projects", json={"name": "pets"}).status_code == 201
        for name in ("cat", "dog"):
            assert client.post("/api/projects/pets/classes", json={"name": name}).status_code == 201
        yield client, workspace, tmp_path


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", " lead", "trail ", "dot.", "x" * 65, "ä-umlaut",
                                  "semi;colon", "new\nline"])
def test_bad_project_and_class_names_are_refused(setup, name):
    client, workspace, _ = setup
    before = tree(workspace)
    problem = error(client.post("/api/projects", json={"name": name}), 422)
    assert problem["code"] == "invalid_project_name" and repr(name) in problem["message"]
    problem = error(client.post("/api/projects/pets/classes", json={"name": name}), 422)
    assert problem["code"] == "invalid_class_name" and "letters, digits" in problem["message"]
    assert tree(workspace) == before


def test_names_people_use_are_accepted_and_duplicates_refused(setup):
    client, workspace, _ = setup
    assert client.post("/api/projects/pets/classes", json={"name": "not a cat_2.0-b"}).status_code == 201
    assert (workspace / "pets" / "data" / "not a cat_2.0-b").is_dir()
    assert error(client.post("/api/projects/pets/classes", json={"name": "cat"}), 409)["code"] == "class_exists"
    assert error(client.post("/api/projects", json={"name": "pets"}), 409)["code"] == "project_exists"
    assert error(client.get("/api/projects/nope"), 404)["code"] == "no_such_project"
    assert error(client.post("/api/projects/pets/classes/bird/images", files={"files": ("a.png", png())}), 404)[
        "code"] == "no_such_class"
    assert client.get("/api/projects").json()["projects"] == ["pets"]


def test_uploads_are_checked_and_each_refusal_names_its_file(setup):
    client, workspace, outside = setup
    elsewhere = {p for p in tree(outside) if not p.startswith("ws")}
    url = "/api/projects/pets/classes/cat/images"
    problem = error(client.post(url, files={"files": ("notes.jpg", b"just some text, not a JPEG")}), 422)
    assert problem["code"] == "not_an_image" and "notes.jpg" in problem["message"]
    assert error(client.post(url, files={"files": ("empty.png", b"")}), 422)["code"] == "empty_file"
    truncated = png((200, 200))[:300]
    assert "cut.png" in error(client.post(url, files={"files": ("cut.png", truncated)}), 422)["message"]
    assert error(client.post(url, data={"x": "1"}), 415)["code"] == "unsupported_media_type"
    assert error(client.post(url, files={"other": ("a.png", png())}), 422)["code"] == "no_files"
    # A batch with good and bad files keeps the good ones and names the bad one.
    answer = client.post(url, files=[("files", ("../../evil name.png", png())), ("files", ("bad.gif", b"GIF89a-no")),
                                     ("files", ("x.jpeg", png()))])
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["saved"] == ["evil_name.png", "x.png"]  # the format decides the extension, the path is dropped
    assert [r["filename"] for r in body["refused"]] == ["bad.gif"]
    assert sorted(p.name for p in (workspace / "pets" / "data" / "cat").iterdir()) == ["evil_name.png", "x.png"]
    again = client.post(url, files={"files": ("x.png", png(colour=(0, 0, 255)))}).json()
    assert again["saved"] == ["x-2.png"]  # never overwrites
    listing = client.get("/api/projects/pets").json()["classes"]
    assert {c["name"]: c["count"] for c in listing} == {"cat": 3, "dog": 0}
    thumb = client.get("/api/projects/pets/classes/cat/images/x.png?thumb=1")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    assert {p for p in tree(outside) if not p.startswith("ws")} == elsewhere  # nothing written outside the workspace


def test_path_traversal_is_refused_everywhere(setup):
    client, workspace, outside = setup
    secret = outside / "secret.txt"
    secret.write_text("top secret")
    run = workspace / "pets" / "runs" / "run-1"
    run.mkdir(parents=True)
    (run / "report.html").write_text("<html>report</html>")
    (run / "link.txt").symlink_to(secret)
    base = "/api/projects/pets/runs/run-1/files"
    assert client.get(f"{base}/report.html").text == "<html>report</html>"
    for path in ("..%2F..%2F..%2Fsecret.txt", "%2E%2E/%2E%2E/%2E%2E/secret.txt", "link.txt",
                 "..%2F..%2Fdata%2Fcat", "%2Fetc%2Fpasswd"):
        response = client.get(f"{base}/{path}")
        assert response.status_code in (403, 404), (path, response.status_code)
        assert "top secret" not in response.text and "root:" not in response.text
    assert error(client.get(f"{base}/link.txt"), 403)["code"] == "outside_workspace"
    assert error(client.get(f"{base}/..%2F..%2F..%2Fsecret.txt"), 403)["code"] == "outside_workspace"
    for url in ("/api/projects/..%2F..%2Fetc/runs", "/api/projects/pets/runs/..%2F..%2F..%2F/files/secret.txt",
                "/api/projects/pets/classes/cat/images/..%2F..%2F..%2F..%2Fsecret.txt"):
        response = client.get(url)
        assert response.status_code in (403, 404, 422), (url, response.status_code)
        assert "top secret" not in response.text


def test_import_copies_a_class_folder_dataset_and_leaves_it_alone(setup):
    client, workspace, outside = setup
    source = make_images(outside / "shapes", per_class=3)
    before = checksums(source)
    answer = client.post("/api/projects/pets/import", json={"path": str(source)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["copied"] == {"circle": 3, "square": 3}
    copied = workspace / "pets" / "data" / "circle"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in (source / "circle").iterdir())
    assert not any(p.is_symlink() for p in copied.iterdir())
    assert checksums(source) == before
    assert error(client.post("/api/projects/pets/import", json={"path": "relative/dir"}), 422)["code"] == "not_a_folder"
    assert error(client.post("/api/projects/pets/import", json={"path": str(workspace / "pets")}), 422)[
        "code"] == "inside_workspace"


def test_doctor_findings_and_training_preconditions(setup):
    client, workspace, _ = setup
    client.post("/api/projects/pets/classes/cat/images", files=[("files", (f"c{i}.png", png(colour=(i * 40, 0, 0))))
                                                                for i in range(3)])
    report = client.get("/api/projects/pets/doctor").json()
    codes = {f["code"] for f in report["findings"]}
    assert "empty-class" in codes  # dog has no image yet
    problem = error(client.post("/api/projects/pets/runs", json={}), 409)
    assert problem["code"] == "not_enough_images" and "'dog': 0" in problem["message"]
    client.post("/api/projects/pets/classes/dog/images", files=[("files", (f"d{i}.png", png(colour=(0, i * 40, 90))))
                                                                for i in range(3)])
    problem = error(client.post("/api/projects/pets/runs", json={"backbone": "vgg99"}), 422)
    assert "vgg99" in problem["message"] and "mobilenet_v2" in problem["message"]
    assert error(client.get("/api/projects/pets/runs/run-x"), 404)["code"] == "no_such_run"
    assert error(client.post("/api/projects/pets/runs/run-x/cancel"), 409)["code"] == "not_running"
    assert client.get("/api/projects/pets/runs").json()["runs"] == []


@pytest.mark.parametrize("settings, fragment", [
    ({"augment": "wild"}, "'wild'"), ({"image_size": 100}, "100"), ({"epochs": 0}, "epochs"),
    ({"epochs": True}, "epochs"), ({"fine_tune_epochs": -1}, "fine_tune_epochs"), ({"report": "yes"}, "report"),
    ({"learning_rate": 1}, "learning_rate"), ("fast", "JSON object")])
def test_training_settings_are_checked(settings, fragment):
    with pytest.raises(RequestError) as caught:
        check_settings(settings)
    assert caught.value.status == 422 and fragment in caught.value.message


def test_the_worker_is_the_train_command():
    command = train_command(Path("/w/p/data"), Path("/w/p/runs/r"), check_settings(
        {"image_size": 96, "epochs": 3, "fine_tune_epochs": 0, "report": False}))
    assert command[1:] == ["-m", "transferkit", "train", "/w/p/data", "--out", "/w/p/runs/r", "--json", "--backbone",
                           "mobilenet_v2", "--augment", "standard", "--image-size", "96", "--epochs", "3",
                           "--fine-tune-epochs", "0", "--no-report"]


def test_pages_are_served_offline(setup):
    client, _, _ = setup
    for page in ("data", "train", "test", "export"):
        html = client.get(f"/{page}").text
        assert "/static/vendor/alpine.min.js" in html and "http" not in html.replace("http-equiv", "")
    for name in ("alpine.min.js", "uplot.min.js", "uplot.min.css", "alpine.LICENSE", "uplot.LICENSE"):
        assert client.get(f"/static/vendor/{name}").status_code == 200
    assert client.get("/").status_code == 200  # redirected to /data


def test_cli_refuses_a_non_loopback_host(tmp_path):
    from transferkit.cli import app

    result = CliRunner().invoke(app, ["app", "--workspace", str(tmp_path / "ws"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "no login" in result.output
    assert not (tmp_path / "ws").exists()


def test_a_training_worker_is_cancelled_and_keeps_its_best_weights(tiny_dir, tmp_path):
    """A real worker process: status while it trains, one run at a time, cancel = SIGINT, the run saved."""
    import time

    with TestClient(create_app(tmp_path / "ws")) as client:
        client.post("/api/projects", json={"name": "alpacas"})
        assert client.post("/api/projects/alpacas/import", json={"path": str(tiny_dir)}).status_code == 200
        started = client.post("/api/projects/alpacas/runs", json={
            "image_size": 96, "epochs": 1, "fine_tune_epochs": 100, "report": False})
        assert started.status_code == 201, started.text
        run = started.json()["run"]
        assert error(client.post("/api/projects/alpacas/runs", json={}), 409)["code"] == "busy"
        deadline = time.monotonic() + 120
        while (status := client.get(f"/api/projects/alpacas/runs/{run}").json())["epoch"] < 2:
            assert status["state"] == "running" and time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["stage"] == "fine-tuning the backbone"
        assert client.post(f"/api/projects/alpacas/runs/{run}/cancel").json()["cancel_requested"] is True
        while (status := client.get(f"/api/projects/alpacas/runs/{run}").json())["state"] == "running":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    assert status["state"] == "cancelled", status
    assert status["results"]["interrupted"] is True and 2 <= status["epoch"] < 101
    assert (tmp_path / "ws" / "alpacas" / "runs" / run / "model.keras").is_file()
    with TestClient(create_app(tmp_path / "ws")) as client:  # an app restart sees it as it is on disk
        assert client.get(f"/api/projects/alpacas/runs/{run}").json()["state"] == "cancelled"


def test_events_stream_a_runs_status_and_end_when_it_is_not_training(setup):
    client, workspace, _ = setup
    run = workspace / "pets" / "runs" / "run-1"
    (run / "checkpoint").mkdir(parents=True)  # an app that stopped mid-run left this checkpoint behind
    (run / "checkpoint" / "state.json").write_text(
        '{"history": [{"epoch": 1, "stage": 1, "loss": 0.9, "accuracy": 0.5, "val_loss": 0.8, "val_accuracy": 0.6}]}')
    with client.stream("GET", "/api/projects/pets/runs/run-1/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[0].startswith("event: status\ndata: ") and events[-1].startswith("event: end")
    status = json.loads(events[0].split("data: ", 1)[1])
    assert status["state"] == "stopped" and status["epoch"] == 1 and status["history"][0]["val_accuracy"] == 0.6
    listed = client.get("/api/projects/pets/runs").json()["runs"]
    assert [(r["run"], r["state"]) for r in listed] == [("run-1", "stopped")]


def test_a_relative_weights_folder_still_names_the_same_folder_in_a_worker(monkeypatch, tmp_path):
    """Workers run in the project's folder (Ray's in theirs): a relative weights folder from the app's
    shell is made absolute."""
    from transferkit.deploy.webapp.jobs import _worker_env
    from transferkit.modeling.backbones import absolute_weights_dir

    (tmp_path / "weights").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERKIT_WEIGHTS_DIR", "weights")
    assert _worker_env()["TRANSFERKIT_WEIGHTS_DIR"] == str(tmp_path / "weights")
    assert absolute_weights_dir() == str(tmp_path / "weights")
    assert absolute_weights_dir("elsewhere") == str(tmp_path / "elsewhere")  # --weights-dir comes first
    monkeypatch.delenv("TRANSFERKIT_WEIGHTS_DIR")
    assert absolute_weights_dir() is None
