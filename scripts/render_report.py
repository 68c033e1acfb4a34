"""Render a report.html in headless Chromium to PNGs, to look at it as a browser shows it.

    python scripts/render_report.py runs/alpaca/report.html --out /tmp/report
      -> /tmp/report-screen.png  the first screen of a 1440x900 laptop window
         /tmp/report-full.png    the whole page at the same width

Needs a Chromium binary (Debian: `apt-get install chromium`); the test suite does
not. Network access is switched off for the render, so an image that shows proves
it is embedded. The page is never changed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
TALL = 30000  # px: taller than any report, trimmed afterwards


def find_browser(name: str | None) -> str:
    for candidate in ([name] if name else BROWSERS):
        path = shutil.which(candidate)
        if path:
            return path
    sys.exit(f"No Chromium found (looked for {', '.join([name] if name else BROWSERS)}); "
             "install it, e.g. `apt-get install chromium`, or pass --browser.")


def screenshot(browser: str, page: Path, target: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            "--force-device-scale-factor=1", f"--window-size={width},{height}",
            f"--screenshot={target}", "--virtual-time-budget=5000", page.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not target.is_file():
        sys.exit(f"Chromium failed ({done.returncode}):\n{done.stderr[-2000:]}")


def trim_bottom(path: Path) -> tuple[int, int]:
    """Cut the empty page background below the content; returns the final size."""
    import numpy as np

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    background = pixels[-1, pixels.shape[1] // 2]
    busy = np.flatnonzero(np.abs(pixels - background).sum(axis=(1, 2)) > 0)
    bottom = int(busy[-1]) + 25 if len(busy) else pixels.shape[0]
    Image.fromarray(pixels[:bottom].astype("uint8")).save(path)
    return pixels.shape[1], bottom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report.html to render")
    parser.add_argument("--out", type=Path, default=Path("report"), help="prefix of the PNGs (default: ./report)")
    parser.add_argument("--width", type=int, default=1440, help="window width in px (default 1440, a laptop)")
    parser.add_argument("--height", type=int, default=900, help="window height of the first-screen shot")
    parser.add_argument("--browser", help="Chromium binary (default: the first found on PATH)")
    args = parser.parse_args()
    if not args.report.is_file():
        sys.exit(f"'{args.report}' is not a file; pass the report.html of a run.")
    browser = find_browser(args.browser)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    screen = args.out.with_name(args.out.name + "-screen.png")
    full = args.out.with_name(args.out.name + "-full.png")
    screenshot(browser, args.report, screen, args.width, args.height)
    screenshot(browser, args.report, full, args.width, TALL)
    width, height = trim_bottom(full)
    print(f"{screen} ({args.width}x{args.height})\n{full} ({width}x{height})")


if __name__ == "__main__":
    main()
