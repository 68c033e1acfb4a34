"""Regenerate docs/app-{data,train,test,export}.png: runs the web app's browser test with
TRANSFERKIT_APP_SCREENSHOTS=docs, so the pictures are of a real session (real alpaca images,
webcam frames, a short training run, a prediction with Grad-CAM, a TFLite export).

    TRANSFERKIT_SHARED=../shared python scripts/app_screenshots.py
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    os.environ["TRANSFERKIT_APP_SCREENSHOTS"] = str(REPO / "docs")
    os.chdir(REPO)
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/deploy/test_webapp_browser.py"]))
