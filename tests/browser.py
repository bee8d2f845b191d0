"""Headless Chromium (Debian's `chromium` package) for tests of the static HTML pages."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [  # offline machine: no background connections, no sandbox as root
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def need_chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    return CHROMIUM


def render(page: Path, screenshot: Path, size: str = "1280,2000") -> tuple[int, int]:
    """Load `page` in headless Chromium, save a screenshot, and return (images loaded, images
    on the page) as the page's own load handler counted them (`data-images`)."""
    exe = need_chromium()
    with tempfile.TemporaryDirectory() as profile:
        base = [exe, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*base, "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        subprocess.run(
            [*base, f"--screenshot={screenshot}", f"--window-size={size}", page.resolve().as_uri()],
            capture_output=True,
            timeout=120,
        )
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, f"the page's load handler did not run:\n{dom[:500]}"
    return int(m.group(1)), int(m.group(2))
