"""Faults cost time, not faces: the sample stage's pipelined sampler (what the stage runs) on
the same faces against the simulated VLLM twice, side by side in one run: fault-free, then
with 20% of attempts or answers failing (429 with Retry-After, 500, timeouts, truncated JSON,
refusals).

For each run it prints the wall time; the ideal time (the server time of every attempt,
timed-out ones included, over the concurrency: what the concurrency window allows when no
slot is ever idle); the requests the server received, the faces left with
no usable answer to their generated request (they would end as `api_failure`), and the
successful requests the server answered more than once (a repeat is money paid twice).

    .venv/bin/python benchmarks/fault_tolerance.py [--faces 500] [--concurrency 32] [--latency-ms 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from openai_throughput import get, post, start_sim  # noqa: E402
from sample_throughput import faces  # noqa: E402

from tasks import annotators  # noqa: E402
from tasks.core.knowledge import load  # noqa: E402
from tasks.core.params import Annotator, Params, Paths, Runtime  # noqa: E402
from tasks.infra.cache import ResponseCache  # noqa: E402
from tasks.method.pipeline import sample_stream  # noqa: E402
from tasks.method.sampling import Tally  # noqa: E402

K = load()
FAULTS = {  # 20% in all: per attempt (429, 500, timeout) or per answer (truncated, refusal)
    "rate_429": 0.05,
    "retry_after_s": 1.0,
    "rate_500": 0.05,
    "rate_timeout": 0.02,
    "timeout_sleep_s": 10.0,
    "rate_truncated": 0.04,
    "rate_refusal": 0.04,
}
CLEAN = {k: 0.0 for k in FAULTS if k.startswith("rate_")}


def one(name: str, pairs, conc: int, root: str, config: dict, batch: int = 64, runtime: dict | None = None) -> dict:
    p = Params(
        paths=Paths(input="x"),
        annotator=Annotator(backend="openai", model="sim-vllm", temperature=1.0),
        # default timeout, retries and backoff unless --timeout-s / --retry-base-s say otherwise
        runtime=Runtime(concurrency=conc, batch_size=batch, progress_every_s=3600, **(runtime or {})),
    )
    post(f"{root}/sim/config", config)
    post(f"{root}/sim/reset", {})
    ann = annotators.build(p)
    with tempfile.TemporaryDirectory() as d:
        cache = ResponseCache(d, ann.signature_hash())
        tally, t0 = Tally(), time.perf_counter()
        window = max(p.runtime.batch_size, 4 * conc)  # as the sample stage sets it
        rows = list(sample_stream(iter(pairs), ann, cache, p, K, tally, window))
        wall = time.perf_counter() - t0
        cache.close()
    ann.close()
    log = get(f"{root}/sim/log")
    ok = Counter((e["fingerprint"], e["seed"], e["n"]) for e in log if e["status"] == 200)
    busy_s = sum(e.get("ms", 0) for e in log) / 1000  # server time of every attempt, timeouts included
    usable = {r["face_id"] for r in rows if r["status"] == "ok" and r["variant"] not in ("blind", "verify")}
    lost = sum(1 for f, _ in pairs if f["face_id"] not in usable)
    return {
        "run": name,
        "faces": len(pairs),
        "wall_s": round(wall, 1),
        "ideal_s": round(busy_s / conc, 1),
        "achieved_over_ideal": round(busy_s / conc / wall, 3),
        "requests": len(log),
        "faults": dict(Counter(e["fault"] for e in log if e["fault"])),
        "failed_samples": tally.failed,
        "sample_status": dict(Counter(r["status"] for r in rows)),
        "faces_lost": lost,
        "faces_lost_share": round(lost / len(pairs), 4),
        "repeated_successful_requests": sum(n - 1 for n in ok.values() if n > 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency-ms", type=float, default=300)
    ap.add_argument("--batch-size", type=int, default=64, help="runtime.batch_size (the window: max(this, 4 x conc))")
    ap.add_argument("--json", default="")
    ap.add_argument("--timeout-s", type=float, default=0, help="runtime.timeout_s (0 = the default, 60)")
    ap.add_argument("--retry-base-s", type=float, default=0, help="runtime.retry_base_s (0 = the default, 1)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    proc, root = start_sim(a.latency_ms)
    pairs = faces(a.faces, 0)
    rt = {k: v for k, v in (("timeout_s", a.timeout_s), ("retry_base_s", a.retry_base_s)) if v}
    try:
        clean = one("fault-free", pairs, a.concurrency, root, CLEAN, a.batch_size, rt)
        faulty = one("20% faults", pairs, a.concurrency, root, FAULTS, a.batch_size, rt)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"simulated VLLM, latency {a.latency_ms:.0f} ms, concurrency {a.concurrency}, {a.faces} faces, same seeds")
    print(f"runtime: {rt or 'the defaults (timeout_s 60, retry_base_s 1)'}")
    head = ("run", "wall s", "ideal s", "ratio", "requests", "lost", "lost %", "repeats")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (11, 7, 7, 6, 8, 5, 7, 7))))
    for r in (clean, faulty):
        print(
            f"{r['run']:>11} {r['wall_s']:>7} {r['ideal_s']:>7} {r['achieved_over_ideal']:>6} {r['requests']:>8} "
            f"{r['faces_lost']:>5} {100 * r['faces_lost_share']:>6.1f}% {r['repeated_successful_requests']:>7}"
        )
    print(f"faults injected: {faulty['faults']}; samples by status: {faulty['sample_status']}")
    ratio = faulty["wall_s"] / clean["wall_s"]
    print(f"wall time with faults / without: {ratio:.2f}")
    if a.json:
        out = {"latency_ms": a.latency_ms, "concurrency": a.concurrency, "runtime": rt}
        out.update(runs=[clean, faulty], wall_ratio=ratio)
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
