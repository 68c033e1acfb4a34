"""`transferkit app` driven in a real browser (Debian's chromium through Playwright), as a person would:
create a project, upload real alpaca images into two classes, capture webcam frames (a fake camera
playing a .y4m made of alpaca photos), train a short run and watch the curves, predict an upload with
its Grad-CAM, evaluate, export TFLite and load the downloaded file.

Screenshots of every page go to the test's tmp folder, and also to $TRANSFERKIT_APP_SCREENSHOTS
when set (scripts/app_screenshots.py sets it to docs/).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ALPACA, NO_SHARED, REPO, checksums

CHROMIUM = "/usr/bin/chromium"
T0 = 0.0
PER_CLASS = 12
pytestmark = pytest.mark.skipif(not ALPACA.is_dir(), reason=NO_SHARED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_y4m(path: Path, images: list[Path], width: int = 320, height: int = 240, frames_each: int = 3) -> Path:
    """A YUV4MPEG2 (4:2:0) video of the images, each centre-cropped to width x height, for chromium's fake camera."""
    from PIL import ImageOps

    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for image_path in images:
            with Image.open(image_path) as image:
                frame = ImageOps.fit(image.convert("RGB"), (width, height)).convert("YCbCr")
            y, cb, cr = (np.asarray(channel) for channel in frame.split())
            planes = y.tobytes() + cb[::2, ::2].tobytes() + cr[::2, ::2].tobytes()
            for _ in range(frames_each):
                out.write(b"FRAME\n" + planes)
    return path


@contextlib.contextmanager
def app_server(workspace: Path, log: Path):
    """`transferkit app` in a subprocess on a free loopback port; yields its URL, stops it with SIGINT."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "transferkit", "app", "--workspace", str(workspace),
                                    "--port", str(port)], stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the app did not start within 60 s"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/api/projects", timeout=2).read()
                break
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(2)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def shoot(page, name: str, folders: list[Path]) -> None:
    print(f"{name} page done at {time.perf_counter() - T0:.1f} s")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"app-{name}.png"), full_page=True)


def test_app_in_a_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    global T0
    started = T0 = time.perf_counter()
    classes = {name: sorted((ALPACA / name).iterdir()) for name in ("alpaca", "not alpaca")}
    uploads = {name: files[:PER_CLASS] for name, files in classes.items()}
    held_out = classes["alpaca"][-1]
    video = write_y4m(tmp_path / "camera.y4m", classes["alpaca"][PER_CLASS:PER_CLASS + 8])
    shared_before = checksums(ALPACA)
    workspace, downloads = tmp_path / "workspace", tmp_path / "downloads"
    shots = [tmp_path / "screenshots"] + ([Path(os.environ["TRANSFERKIT_APP_SCREENSHOTS"])]
                                           if os.environ.get("TRANSFERKIT_APP_SCREENSHOTS") else [])

    with app_server(workspace, tmp_path / "app.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={video}"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        context.grant_permissions(["camera"], origin=url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)  # the first prediction loads TensorFlow and the model in the app
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        # Data: a project, two classes, uploads, webcam frames, the doctor.
        page.goto(f"{url}/data")
        page.fill("[data-test=new-project]", "alpacas")
        page.click("text=Create project")
        page.wait_for_url("**/data?project=alpacas")
        for name in uploads:
            page.fill("[data-test=new-class]", name)
            page.click("text=Add class")
            expect(page.locator(f'.class-card[data-class="{name}"]')).to_be_visible()
        page.fill("[data-test=new-class]", "../escape")
        page.click("text=Add class")
        expect(page.locator("[data-test=error]").first).to_contain_text("is not allowed")
        page.fill("[data-test=new-class]", "")
        for name, files in uploads.items():
            card = page.locator(f'.class-card[data-class="{name}"]')
            card.locator("[data-test=file-input]").set_input_files([str(f) for f in files])
            expect(card.locator("[data-test=count]")).to_have_text(f"{PER_CLASS} images")
            expect(card.locator(".thumbs img")).to_have_count(PER_CLASS)
        page.click("[data-test=camera]")
        capture = page.locator('.class-card[data-class="alpaca"] [data-test=capture]')
        expect(capture).to_be_visible()
        page.wait_for_function("document.querySelector('video').videoWidth > 0")
        capture.hover()
        page.mouse.down()
        page.wait_for_timeout(1200)
        page.mouse.up()
        alpaca_count = page.locator('.class-card[data-class="alpaca"] [data-test=count]')
        expect(alpaca_count).not_to_have_text(f"{PER_CLASS} images")
        captured = int(alpaca_count.inner_text().split()[0]) - PER_CLASS
        assert captured >= 2, captured
        frames = sorted((workspace / "alpacas" / "data" / "alpaca").glob("webcam-*.jpg"))
        assert len(frames) == captured and Image.open(frames[0]).size == (320, 240)
        expect(page.locator("[data-test=doctor-summary]")).to_have_text(
            f"{2 * PER_CLASS + captured} usable images, 0 that training would skip")
        shoot(page, "data", shots)
        page.click("[data-test=camera]")

        # Train: a short run at 96 px; the curves fill in while it trains.
        page.click("header nav >> text=Train")
        page.select_option("[data-test=image-size]", "96")
        page.fill("[data-test=epochs]", "10")
        page.fill("[data-test=fine-tune-epochs]", "1")
        page.uncheck("[data-test=report]")
        page.click("[data-test=start]")
        expect(page.locator("[data-test=state]")).to_have_text("running")
        page.wait_for_function("Number(document.body.dataset.chartPoints || 0) >= 1 && "
                               "document.querySelector('[data-test=state]').textContent === 'running'", timeout=90_000)
        live_epoch = int(page.locator("[data-test=epoch]").inner_text())
        expect(page.locator("[data-test=state]")).to_have_text("finished", timeout=90_000)
        final_epoch = int(page.locator("[data-test=epoch]").inner_text())  # 11, or fewer if stage 1 stopped early
        assert 2 <= final_epoch <= 11 and 1 <= live_epoch <= final_epoch  # seen while the worker ran
        assert page.evaluate("document.body.dataset.chartPoints") == str(final_epoch)
        assert page.locator("[data-test=loss-chart] .u-title").count() == 1  # one chart, redrawn in place
        expect(page.locator("[data-test=val-accuracy]")).to_contain_text("%")
        card = page.locator(".card.progress").bounding_box()
        for chart in ("loss", "acc"):  # both charts fit inside their card, side by side
            box = page.locator(f"[data-test={chart}-chart] canvas").bounding_box()
            assert card["x"] <= box["x"] and box["x"] + box["width"] <= card["x"] + card["width"], (chart, box, card)
        shoot(page, "train", shots)

        # Test: an alpaca photo it has not seen, its label, bars and Grad-CAM; then the evaluation.
        page.click("text=Next: test it")
        page.locator("[data-test=predict-input]").set_input_files(str(held_out))
        label = page.locator("[data-test=label]")
        expect(label).to_have_text(re.compile("^(alpaca|not alpaca)$"), timeout=60_000)
        bars = page.locator("[data-test=bars] .bar")
        expect(bars).to_have_count(2)
        shown_label = label.inner_text()
        assert bars.first.locator(".bar-label").inner_text() == shown_label  # most probable first
        shares = [float(v.split()[0]) for v in bars.locator(".bar-value").all_inner_texts()]
        assert shares[0] >= shares[1] and abs(sum(shares) - 100) < 0.2, shares
        assert page.get_attribute("[data-test=gradcam]", "src").startswith("data:image/png;base64,")
        page.wait_for_function("document.querySelector('[data-test=gradcam]').naturalWidth > 0")
        page.click("[data-test=evaluate]")
        page.wait_for_function("document.querySelector('[data-test=confusion]').naturalWidth > 0", timeout=60_000)
        shoot(page, "test", shots)
        page.click("[data-test=live]")  # live predictions of webcam frames, with their Grad-CAM
        expect(page.locator("[data-test=filename]")).to_have_text("webcam frame")
        expect(page.locator("[data-test=label]")).to_have_text(re.compile("^(alpaca|not alpaca)$"))
        page.click("[data-test=live]")

        # Export: TFLite, downloaded and loaded.
        page.click("header nav >> text=Export and serve")
        page.click("[data-test=export-tflite]")
        link = page.locator("[data-test=download-tflite]")
        expect(link).to_be_visible(timeout=90_000)
        with page.expect_download() as download:
            link.click()
        saved = downloads / download.value.suggested_filename
        download.value.save_as(saved)
        expect(page.locator("[data-test=curl-command]")).to_contain_text("curl -F files=@image.jpg")
        expect(page.locator("[data-test=serve-command]")).to_contain_text(str(workspace / "alpacas" / "runs"))
        shoot(page, "export", shots)
        assert not errors, errors
        browser.close()

    from transferkit.deploy.predictor import Predictor

    assert saved.suffix == ".tflite"
    downloaded = Predictor(saved)  # the class names travel inside the file
    assert downloaded.classes == ["alpaca", "not alpaca"] and downloaded.image_size == 96
    exported = downloaded.predict([held_out], top_k=2, reject=False)[0]
    if shares[0] - shares[1] > 2:  # a near tie may fall either way between two runtimes
        assert exported.label == shown_label  # the app's answer
    # calibrated like the app's bars, from the metadata inside the file (it came without its sidecar)
    assert abs(100 * dict(exported.top_k)[shown_label] - shares[0]) < 2
    # A restarted app shows the run as it is on disk.
    from fastapi.testclient import TestClient

    from transferkit.deploy.webapp import create_app

    with TestClient(create_app(workspace)) as client:
        runs = client.get("/api/projects/alpacas/runs").json()["runs"]
    assert [r["state"] for r in runs] == ["finished"] and runs[0]["epoch"] == final_epoch
    assert checksums(ALPACA) == shared_before  # uploads never wrote into the source folders
    print(f"browser test took {time.perf_counter() - started:.1f} s")
