"""The response cache at scale: start-up time and lookup rate for N cached answers (default
100,000), on local disk and on S3 (moto's server on 127.0.0.1), before and after compaction.

- before: the layout and loader of the cache up to commit 739e807, reproduced here
  (`legacy_load`): on S3 one JSONL object per call, read one after the other at start-up;
  on local disk one JSONL segment per process (4 here, as 4 Dask workers leave).
- uncompacted: the same files read by today's loader (batched reads).
- after: one Parquet pack, written by `ResponseCache.compact()` (its time is printed too).

Each answer is about 300 characters of JSON, 3 answers per call (the default `k0`). Lookups
ask for every key once in random order (a cache hit materialises the entry).

    .venv/bin/python benchmarks/cache_scale.py [--answers 100000] [--per-call 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import fsspec  # noqa: E402

from tasks.infra.cache import ResponseCache, sample_key  # noqa: E402

SIG = "bench"


def entries(n: int, per_call: int) -> list[list[dict]]:
    """The answers, grouped by call."""
    rng = random.Random(0)
    calls, i = [], 0
    while i < n:
        call = []
        rid = f"req{i // per_call:07d}"
        for j in range(min(per_call, n - i)):
            text = json.dumps(
                {
                    "expression": rng.choice(["happy", "sad", "neutral", "fear"]),
                    "valence": round(rng.uniform(-1, 1), 3),
                    "arousal": round(rng.uniform(-1, 1), 3),
                    "aus": ["AU6", "AU12"],
                    "rationale": "cheeks raised and lip corners pulled up, " * 4,
                }
            )
            call.append(
                {
                    "key": sample_key(SIG, rid, j, 7),
                    "request_id": rid,
                    "index": j,
                    "seed": 7,
                    "text": text,
                    "finish_reason": "stop",
                    "refusal": None,
                    "tokens_in": 300.0,
                    "tokens_out": 60.0,
                    "latency_ms": 900.0,
                    "cost_usd": 0.001,
                }
            )
            i += 1
        calls.append(call)
    return calls


def legacy_load(root: str) -> dict[str, dict]:
    """The start-up of the cache as of commit 739e807: glob the segments, open each in turn."""
    fs, path = fsspec.core.url_to_fs(f"{root}/{SIG}")
    out: dict[str, dict] = {}
    for seg in sorted(fs.glob(f"{path}/*.jsonl")):
        with fs.open(seg, "rt") as fh:
            for line in fh:
                if line.strip():
                    e = json.loads(line)
                    out[e["key"]] = e
    return out


def write_legacy(root: str, calls: list[list[dict]], local: bool) -> float:
    t = time.perf_counter()
    fs, path = fsspec.core.url_to_fs(f"{root}/{SIG}")
    if local:  # one segment per process: 4 workers
        os.makedirs(path, exist_ok=True)
        for w in range(4):
            with open(f"{path}/seg-{w}.jsonl", "w") as fh:
                for call in calls[w::4]:
                    fh.write("".join(json.dumps(e) + "\n" for e in call))
    else:  # one object per call (written in batches here, to keep the set-up short)
        blobs = {f"{path}/seg-{i:07d}.jsonl": "".join(json.dumps(e) + "\n" for e in c) for i, c in enumerate(calls)}
        items = list(blobs.items())
        for k in range(0, len(items), 2000):
            fs.pipe(dict(items[k : k + 2000]))
    return time.perf_counter() - t


def lookups(get, keys: list[tuple[str, int]]) -> float:
    t = time.perf_counter()
    hit = sum(get(rid, j) is not None for rid, j in keys)
    dt = time.perf_counter() - t
    assert hit == len(keys), f"{len(keys) - hit} lookups missed"
    return len(keys) / dt


def bench(root: str, calls: list[list[dict]], local: bool) -> dict:
    n = sum(len(c) for c in calls)
    keys = [(e["request_id"], e["index"]) for c in calls for e in c]
    random.Random(1).shuffle(keys)
    setup = write_legacy(root, calls, local)
    t = time.perf_counter()
    old = legacy_load(root)
    before = {"startup_s": time.perf_counter() - t}
    before["lookups_per_s"] = lookups(lambda rid, j: old.get(sample_key(SIG, rid, j, 7)), keys)
    assert len(old) == n
    old = None  # free it before the next layout is read
    t = time.perf_counter()
    c = ResponseCache(root, SIG)
    uncompacted = {"startup_s": time.perf_counter() - t}
    uncompacted["lookups_per_s"] = lookups(lambda rid, j: c.get(rid, j, 7), keys)
    t = time.perf_counter()
    comp = c.compact()
    compact_s = time.perf_counter() - t
    assert comp["entries"] == n
    t = time.perf_counter()
    c = ResponseCache(root, SIG)
    after = {"startup_s": time.perf_counter() - t}
    after["lookups_per_s"] = lookups(lambda rid, j: c.get(rid, j, 7), keys)
    return {
        "answers": n,
        "files_before": len(calls) if not local else 4,
        "setup_s": setup,
        "before": before,
        "uncompacted": uncompacted,
        "compact_s": compact_s,
        "after": after,
        "startup_speedup": before["startup_s"] / after["startup_s"],
    }


def moto_root() -> tuple[str, object]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    fs = fsspec.filesystem("s3")
    fs.mkdir("bench-cache")
    return "s3://bench-cache/cache", server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=int, default=100_000)
    ap.add_argument("--per-call", type=int, default=3)
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    calls = entries(a.answers, a.per_call)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        out["local"] = bench(d, calls, local=True)
    if not a.skip_s3:
        root, server = moto_root()
        try:
            out["s3 (moto, 127.0.0.1)"] = bench(root, calls, local=False)
        finally:
            server.stop()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{a.answers:,} cached answers, {a.per_call} per call")
    print(f"{'store':22} {'layout':34} {'start-up s':>10} {'lookups/s':>11}")
    for where, r in out.items():
        if not isinstance(r, dict):
            continue
        rows = [
            (f"before: {r['files_before']:,} JSONL files, old loader", r["before"]),
            ("uncompacted, today's loader", r["uncompacted"]),
            ("after: one Parquet pack", r["after"]),
        ]
        for name, m in rows:
            print(f"{where:22} {name:34} {m['startup_s']:10.2f} {m['lookups_per_s']:11,.0f}")
        print(f"{where:22} compaction {r['compact_s']:.2f} s; start-up before/after = {r['startup_speedup']:.1f}x")
    print(f"peak RSS of this process: {out['peak_rss_mb']:.0f} MB")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
