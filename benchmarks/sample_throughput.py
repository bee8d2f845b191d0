"""The sample stage's throughput against an endpoint with latency: pipelined sampling
(`tasks.method.pipeline.sample_stream`, what the stage runs) against the same faces sampled
batch by batch (`sample_batch` on 64 faces at a time, each batch waiting for its slowest face).

The simulated VLLM runs in its own process on 127.0.0.1 with a fixed latency (default 1 s);
the client is the project's OpenAI-compatible annotator with the default sampling params
(adaptive rounds, verification round). For each concurrency it prints the requests the
server received, the wall time, the ideal time (requests x latency / concurrency) and their
ratio, and the answers and requests per face.

    .venv/bin/python benchmarks/sample_throughput.py [--latency-ms 1000] [--faces 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from openai_throughput import get, post, start_sim  # noqa: E402
from simserver import face_image  # noqa: E402

from tasks import annotators  # noqa: E402
from tasks.core.knowledge import load  # noqa: E402
from tasks.core.params import Annotator, Params, Paths, Runtime, Sample  # noqa: E402
from tasks.core.records import FaceRecord  # noqa: E402
from tasks.infra.cache import ResponseCache  # noqa: E402
from tasks.method.pipeline import sample_batch, sample_stream  # noqa: E402
from tasks.method.sampling import Tally  # noqa: E402
from tasks.stages.prompt import requests_for  # noqa: E402

K = load()


def faces(n: int, start: int) -> list[tuple[dict, list[dict]]]:
    out = []
    for i in range(start, start + n):
        img = face_image(i)
        f = FaceRecord(
            face_id=f"f{i}",
            image_id=f"f{i}",
            face_index=0,
            n_faces=1,
            path=f"f{i}.jpg",
            source="bench",
            box_x=0,
            box_y=0,
            box_w=64,
            box_h=64,
            score=1,
            detector="none",
            crop=img,
            crop_sha256=hashlib.sha256(img).hexdigest(),
            crop_face_frac=1,
            label_set=[],
            au_set=[],
        )
        out.append((f.model_dump(), [r.model_dump() for r in requests_for(K, f, "v1", True, True)]))
    return out


def one(mode: str, pairs, conc: int, root: str, lat: float) -> dict:
    p = Params(
        paths=Paths(input="x"),
        annotator=Annotator(backend="openai", model="sim-vllm", temperature=1.0),
        runtime=Runtime(concurrency=conc, timeout_s=60, max_retries=2, progress_every_s=3600),
    )
    ann = annotators.build(p)
    post(f"{root}/sim/reset", {})
    with tempfile.TemporaryDirectory() as d:
        cache = ResponseCache(d, ann.signature_hash())
        tally, rows, t0 = Tally(), 0, time.perf_counter()
        if mode == "pipelined":
            window = max(p.runtime.batch_size, 4 * conc)
            rows = sum(1 for _ in sample_stream(iter(pairs), ann, cache, p, K, tally, window))
        else:
            for i in range(0, len(pairs), p.runtime.batch_size):
                chunk = pairs[i : i + p.runtime.batch_size]
                rows += sum(
                    1
                    for _ in sample_batch(
                        [f for f, _ in chunk], dict((f["face_id"], r) for f, r in chunk), ann, cache, p, K, tally
                    )
                )
        wall = time.perf_counter() - t0
        cache.close()
    ann.close()
    nreq = len(get(f"{root}/sim/log"))
    ideal = nreq * lat / conc
    return {
        "mode": mode,
        "concurrency": conc,
        "faces": len(pairs),
        "requests": nreq,
        "answers_per_face": round(rows / len(pairs), 2),
        "requests_per_face": round(nreq / len(pairs), 2),
        "wall_s": round(wall, 1),
        "ideal_s": round(ideal, 1),
        "achieved_over_ideal": round(ideal / wall, 3),
        "failed_samples": tally.failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=1000)
    ap.add_argument("--faces", type=int, default=1000)
    ap.add_argument(
        "--faces-at-8", type=int, default=300, help="fewer faces at concurrency 8 (the ratio is what counts)"
    )
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lat = a.latency_ms / 1000
    proc, root = start_sim(a.latency_ms)
    results = []
    try:
        sp = Sample()
        print(
            f"simulated VLLM, latency {a.latency_ms:.0f} ms; default sampling params (k0={sp.k0}, dk={sp.dk}, "
            f"kmax={sp.kmax}, verify_round={sp.verify_round})"
        )
        cols = [("mode", 10), ("conc", 5), ("faces", 6), ("requests", 8), ("req/face", 8), ("wall s", 7)]
        print(" ".join(f"{c:>{w}}" for c, w in cols + [("ideal s", 7), ("ratio", 6)]))
        plan = [
            (8, a.faces_at_8, ("pipelined",)),
            (32, a.faces, ("pipelined", "batches")),
            (128, a.faces, ("pipelined",)),
        ]
        start = 0
        for conc, n, modes in plan:
            pairs = faces(n, start)
            start += n  # new faces for every concurrency: nothing is answered from an earlier run
            for mode in modes:
                r = one(mode, pairs, conc, root, lat)
                results.append(r)
                print(
                    f"{mode:>10} {conc:>5} {n:>6} {r['requests']:>8} {r['requests_per_face']:>8} "
                    f"{r['wall_s']:>7} {r['ideal_s']:>7} {r['achieved_over_ideal']:>6}"
                )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak client memory {peak:.0f} MB")
    finally:
        proc.terminate()
        proc.wait(10)
    if a.json:
        Path(a.json).write_text(json.dumps({"latency_ms": a.latency_ms, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
