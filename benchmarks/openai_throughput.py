"""Throughput of OpenAIAnnotator against the simulated VLLM (200 ms latency).

    .venv/bin/python benchmarks/openai_throughput.py [--latency-ms 200] [--calls-per-slot 30]

Prints, for concurrency 8, 32 and 64, the achieved request rate over the ideal
(concurrency / latency; goal >= 0.9 at 32), the client's CPU time per request, and the
requests and image sends per face with `n` (one request for K samples) against one request
per sample (goal 1/K). The server runs in its own process so the client's CPU is measured
alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from simserver import make_call, params  # noqa: E402

from tasks.annotators.openai_compat import OpenAIAnnotator  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def start_sim(latency_ms: float) -> tuple[subprocess.Popen, str]:
    """The simulated VLLM in its own process on a free port (so the client's CPU is measured
    alone), with OPENAI_* pointing the SDK at it; returns the process and its root URL."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simvllm.server", "--port", str(port), "--set", f"latency_ms={latency_ms}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(OPENAI_BASE_URL=f"{root}/v1", OPENAI_API_KEY="sim", NO_PROXY="127.0.0.1,localhost")
    os.environ.update(no_proxy="127.0.0.1,localhost")
    os.environ.pop("AZURE_OPENAI_ENDPOINT", None)
    for _ in range(100):
        try:
            get(f"{root}/v1/models")
            break
        except OSError:
            time.sleep(0.1)
    return proc, root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=float, default=200)
    ap.add_argument("--calls-per-slot", type=int, default=30)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--faces", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    proc, root = start_sim(args.latency_ms)
    try:
        lat = args.latency_ms / 1000
        # warm-up (imports, connection pool)
        list(OpenAIAnnotator(*params(concurrency=4)).run([make_call(10_000 + i, k=1) for i in range(8)]))

        print(f"simulated VLLM, latency {args.latency_ms:.0f} ms; one sample per request")
        print(
            f"{'concurrency':>11} {'requests':>8} {'wall s':>7} {'req/s':>7} {'ideal':>7} {'ratio':>6} "
            f"{'client CPU ms/req':>18}"
        )
        for conc in (8, 32, 64):
            calls = [make_call(i, k=1) for i in range(conc * args.calls_per_slot)]
            post(f"{root}/sim/reset", {})
            ann = OpenAIAnnotator(*params(concurrency=conc, timeout_s=30))
            c0, t0 = time.process_time(), time.perf_counter()
            res = list(ann.run(calls))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert all(r.error is None for r in res), [r.error for r in res if r.error][:3]
            nreq = len(get(f"{root}/sim/log"))
            rate, ideal = nreq / wall, conc / lat
            print(
                f"{conc:>11} {nreq:>8} {wall:>7.2f} {rate:>7.1f} {ideal:>7.1f} {rate / ideal:>6.2f} "
                f"{cpu / nreq * 1e3:>18.2f}"
            )

        print(f"\nK={args.k} samples for each of {args.faces} faces, concurrency 32")
        for label, max_n in (("n=K (one request)", args.k), ("one request per sample", 1)):
            calls = [make_call(20_000 + i, k=args.k) for i in range(args.faces)]
            post(f"{root}/sim/reset", {})
            ann = OpenAIAnnotator(*params(concurrency=32, max_n=max_n, timeout_s=30))
            c0, t0 = time.process_time(), time.perf_counter()
            res = list(ann.run(calls))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert all(r.error is None and len(r.answers) == args.k for r in res)
            logged = get(f"{root}/sim/log")
            per_face = Counter(e["image_sha256"] for e in logged)
            sends = sum(per_face.values()) / len(per_face)
            print(
                f"  {label:<24} requests/face {sends:.2f}  image sends/face {sends:.2f}  "
                f"samples/request {args.k / sends:.2f}  prompt tokens billed/face "
                f"{sum(r.tokens_in for r in res) / len(res):.0f}  wall {wall:.2f} s  "
                f"client CPU {cpu / len(logged) * 1e3:.2f} ms/request"
            )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
