"""A simulated vision LLM behind an OpenAI-compatible HTTP API, with known ground truth.

It stands in for GPT-4o in tests and benchmarks. It is honest about what it is: its answers
come from a ground-truth table plus configurable, seeded noise, not from looking at faces.

    python -m simvllm.server --manifest truth.csv --port 8011 [--config sim.json] [--log requests.jsonl]
    OPENAI_BASE_URL=http://127.0.0.1:8011/v1 OPENAI_API_KEY=sim NO_PROXY=127.0.0.1 dvc repro

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, the Files and Batches endpoints of
OpenAI's Batch API (`simvllm.batch`), and for tests `GET /sim/log`,
`POST /sim/reset` (clears the log and attempt counters), `GET|POST /sim/config`.

Faces are identified by the SHA-256 of the image bytes in the request's data URL. The
manifest (CSV, JSON or JSONL; columns `sha256` or `path`, `expression`, `valence`, `arousal`,
`aus` as a list or `AU06;AU12`, optional `accuracy`) gives their truth; unknown images get a
deterministic pseudo-random truth.

The asked fields come from the JSON schema in `response_format`, or, when there is none,
from a schema or the wording in the prompt text. Every answer has exactly those fields.

Noise model (all in `SimConfig`): each face has a single-sample expression accuracy (the
global `accuracy`, spread by a per-face difficulty, or the manifest's `accuracy`) and a fixed
distractor label that `systematic` of its wrong answers name. VA and AUs follow partly the
expression the answer states (`follow_stated`, so a wrong label drags them along), plus VA
noise and AU flips. Same request + same seed gives the same answers. Faults (429 with
Retry-After, 500, timeouts, truncated JSON, refusals, out-of-range values) are drawn per
attempt from the request fingerprint, so a run is reproducible too.

A hook for other request kinds: `SimVLLM.handlers` is a list of `(detect, answer)` pairs
tried before the default annotation handler; a default one answers self-verification
requests (schema with a `confirm*`/`verdict`/`agree*` property): it finds the claimed
expression (the last `"expression": "x"` quoted in the prompt, else the last label named),
confirms it with probability `verify_confirm_correct` if it is the truth,
`verify_confirm_distractor` if it is the face's distractor (when >= 0), else
`verify_confirm_wrong`, and otherwise corrects it with a fresh answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
from pathlib import Path

from aiohttp import web

from simvllm.config import SimConfig, Truth, load_manifest
from simvllm.sim import SimVLLM

log = logging.getLogger("seke.simvllm")


class ServerThread:
    """Run a SimVLLM on 127.0.0.1 in a background thread (tests, benchmarks)."""

    def __init__(self, sim: SimVLLM, port: int = 0):
        self.sim, self.port = sim, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simvllm", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        # stopped, it cancels what is in flight (a "timed out" request sleeps timeout_sleep_s)
        # instead of waiting for it, up to aiohttp's default of 60 s
        self._runner = web.AppRunner(self.sim.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulated VLLM did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m simvllm.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", help="ground truth: CSV/JSON/JSONL with sha256 or path, expression, ...")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--config", help="JSON file of SimConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one SimConfig field")
    ap.add_argument("--log", help="append every request to this JSONL file")
    a = ap.parse_args(argv)
    cfg = SimConfig()
    if a.config:
        cfg.update(json.loads(Path(a.config).read_text()))
    for kv in a.set:
        key, _, val = kv.partition("=")
        try:
            value = json.loads(val)
        except json.JSONDecodeError:
            value = val
        cfg.update({key: value})
    sim = SimVLLM(cfg, load_manifest(a.manifest), a.log)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("simulated VLLM on http://127.0.0.1:%d/v1 with %d known faces", a.port, len(sim.truth))
    web.run_app(sim.app(), host="127.0.0.1", port=a.port, access_log=None, print=None, backlog=1024)


__all__ = ["ServerThread", "SimConfig", "SimVLLM", "Truth", "load_manifest", "main"]


if __name__ == "__main__":
    main()
