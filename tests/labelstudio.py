"""A real Label Studio server on 127.0.0.1 for the review loop's end-to-end test.

The `label-studio` package (Django, SQLite) is installed by uv into its own venv under
`.seke/label-studio-<lock hash>/` (its pins clash with the project's, so it never shares a venv),
once per checkout, from `tests/label-studio.lock`: every dependency pinned, because an unpinned
install broke the day sentry-sdk 3.0 came out. Where it cannot install (no uv, no package index),
the test skips and says so.

Each server starts on a copy of `tests/label-studio-<lock hash>.sqlite3.gz`, an empty database
that this Label Studio version has migrated (its ~400 migrations made a start 34-37 s of CPU,
against 8-11 s with them applied). After a change of the lock, `python tests/labelstudio.py
template` writes the new one (tests/unit/test_db_templates.py fails until it does); without one, the server
migrates at start, as a new install does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests
from dbtemplate import keep, restore

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "tests" / "label-studio.lock"
KEY = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
VENV = ROOT / ".seke" / f"label-studio-{KEY}"
TEMPLATE = ROOT / "tests" / f"label-studio-{KEY}.sqlite3.gz"
DB = "label_studio.sqlite3"  # Label Studio's SQLite file in its data directory


def install() -> Path:
    exe = VENV / "bin" / "label-studio"
    if exe.exists():
        return exe
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("Label Studio e2e: uv is not installed, so label-studio cannot be installed in its own venv")
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(VENV)], check=True)
    r = subprocess.run(
        [uv, "pip", "sync", "-q", "--python", str(VENV / "bin" / "python"), str(LOCK)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        pytest.skip(f"Label Studio e2e: {LOCK.name} could not be installed: {r.stderr.strip()[-400:]}")
    return exe


class Server:
    """A logged-in client of a running server: `api(method, path, **kw)` with a personal access
    token (the way Label Studio's SDK authenticates), and the browser session's cookies."""

    def __init__(self, url: str, email: str, password: str):
        self.url, self.session = url, requests.Session()
        self.session.get(f"{url}/user/login/", timeout=30)
        r = self.session.post(
            f"{url}/user/login/",
            data={"email": email, "password": password, "csrfmiddlewaretoken": self.session.cookies["csrftoken"]},
            headers={"Referer": f"{url}/user/login/"},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 302, f"login failed: {r.status_code} {r.text[:300]}"
        headers = {"X-CSRFToken": self.session.cookies["csrftoken"], "Referer": f"{url}/"}
        pat = self.session.post(f"{url}/api/token/", headers=headers, timeout=30).json()["token"]
        access = requests.post(f"{url}/api/token/refresh/", json={"refresh": pat}, timeout=30).json()["access"]
        self.auth = {"Authorization": f"Bearer {access}"}

    def api(self, method: str, path: str, **kw):
        r = requests.request(method, f"{self.url}{path}", headers=self.auth, timeout=120, **kw)
        assert r.ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None

    def cookies(self) -> list[dict]:
        return [{"name": c.name, "value": c.value, "domain": "127.0.0.1", "path": "/"} for c in self.session.cookies]


@contextmanager
def server(data_dir: Path) -> Iterator[Server]:
    exe = install()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    email, password = "reviewer@example.org", "review-pass-123"
    if TEMPLATE.exists():
        restore(TEMPLATE, data_dir / DB)
    log = open(data_dir / "server.log", "wb")
    cmd = [str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--username", email, "--password", password], env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 300:
                log.flush()
                tail = (data_dir / "server.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"Label Studio did not start; the end of {data_dir / 'server.log'}:\n{tail}")
            time.sleep(0.25)
        yield Server(url, email, password)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _env(data_dir: Path) -> dict:
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite"}
    env["LATEST_VERSION_CHECK"] = "false"  # no call to pypi.org at start-up: the test stays offline
    env.pop("PREFECT_API_URL", None)
    return env


def write_template() -> Path:
    """Migrate an empty database with this lock's Label Studio (every `label-studio` command
    migrates first; `version` then only prints) and keep it, gzipped, as the template."""
    exe = install()
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([str(exe), "version"], env=_env(Path(d)), capture_output=True, text=True)
        if r.returncode != 0 or not (Path(d) / DB).is_file():
            raise SystemExit(f"label-studio version failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        return keep(Path(d) / DB, TEMPLATE, "label-studio-*.sqlite3.gz")


if __name__ == "__main__":
    if sys.argv[1:] != ["template"]:
        raise SystemExit("usage: python tests/labelstudio.py template")
    print(write_template())
