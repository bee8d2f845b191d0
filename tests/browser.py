"""Headless Chromium (Debian's `chromium` package) for tests of the static HTML pages."""

from __future__ import annotations

import os
import re
import shutil
import signal
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
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # helpers may write late
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


def screenshot_logged_in(
    url: str, cookies: list[dict], screenshot: Path, shows: str, size: tuple[int, int] = (1400, 1150)
) -> int:
    """Open `url` in headless Chromium with `cookies` set (a web app's login session), wait
    until the page shows the text `shows` and has loaded its images (a single-page app renders
    after loading its bundle and data), save a PNG and return its size in bytes. Driven through
    the DevTools protocol (websockets), so no browser-automation package is needed."""
    import asyncio
    import base64
    import json
    import socket
    import time
    import urllib.request

    import websockets

    exe = need_chromium()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # helpers may write late
        proc = subprocess.Popen(
            [
                exe,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its renderer and helper processes share its group: stopped together
        )
        try:
            t0 = time.monotonic()
            while True:
                try:
                    pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                    ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
                    break
                except (OSError, StopIteration, ValueError):
                    if time.monotonic() - t0 > 60:
                        raise
                    time.sleep(0.25)

            async def drive() -> bytes:
                async with websockets.connect(ws_url, max_size=64 * 2**20) as ws:
                    n = 0

                    async def call(method: str, **params):
                        nonlocal n
                        n += 1
                        await ws.send(json.dumps({"id": n, "method": method, "params": params}))
                        while True:
                            msg = json.loads(await ws.recv())
                            if msg.get("id") == n:
                                return msg.get("result", {})

                    await call("Network.enable")
                    for c in cookies:
                        await call("Network.setCookie", **c)
                    await call("Page.enable")
                    await call(
                        "Emulation.setDeviceMetricsOverride",
                        width=size[0],
                        height=size[1],
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    await call("Page.navigate", url=url)
                    ready = (
                        f"document.readyState === 'complete' && document.body.innerText.includes({json.dumps(shows)})"
                        " && [...document.images].every(i => i.complete)"
                    )
                    for _ in range(240):  # up to a minute
                        r = await call("Runtime.evaluate", expression=ready, returnByValue=True)
                        if r.get("result", {}).get("value") is True:
                            break
                        await asyncio.sleep(0.25)
                    else:
                        raise AssertionError(f"{url} did not show {shows!r} within a minute")
                    await asyncio.sleep(0.5)  # the frame that shows it painted
                    shot = await call("Page.captureScreenshot", format="png")
                    return base64.b64decode(shot["data"])

            png = asyncio.run(drive())
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
    screenshot.write_bytes(png)
    return len(png)
