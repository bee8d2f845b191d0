"""verify + export at scale: peak memory and rows/s on synthetic sample rows.

    python benchmarks/scale.py                       # 100k and 1M sample rows, one process and Dask
    python benchmarks/scale.py --faces 10000 100000 --runners sequential dask

For each size, synthetic faces (one small JPEG crop each, no priors) and `--per-face` samples
per face (ok answers with an expression, VA and AUs) are written as the crop and sample stages
would write them. Then each configuration runs `verify` then `export` (flows.stages) in a
fresh subprocess, which reports its own peak RSS (`ru_maxrss`) and the wall time of the two
flows. Goals: peak memory grows < 2x while the data grows 10x; 1M rows in < 120 s.
"""

from __future__ import annotations

import argparse
import io as _io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synth(d: Path, faces: int, per_face: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from tasks.core.knowledge import AUS, EXPRESSIONS
    from tasks.core.records import FaceRecord, SampleRecord

    rng = np.random.default_rng(seed)
    buf = _io.BytesIO()
    Image.new("RGB", (64, 64), (120, 100, 90)).save(buf, "JPEG", quality=80)
    crop = buf.getvalue()
    (d / "crop").mkdir(parents=True, exist_ok=True)
    (d / "sample").mkdir(parents=True, exist_ok=True)
    chunk = 20_000
    fw = pq.ParquetWriter(d / "crop" / "faces.parquet", FaceRecord.arrow_schema(), compression="zstd")
    sw = pq.ParquetWriter(d / "sample" / "samples.parquet", SampleRecord.arrow_schema(), compression="zstd")
    exprs = np.array(EXPRESSIONS[:7])
    aus = np.array(AUS)
    for start in range(0, faces, chunk):
        n = min(chunk, faces - start)
        ids = [f"{i:064x}_0" for i in range(start, start + n)]
        fw.write_table(
            pa.Table.from_pydict(
                {
                    "face_id": ids,
                    "image_id": [i[:64] for i in ids],
                    "face_index": [0] * n,
                    "n_faces": [1] * n,
                    "path": [f"images/{i}.jpg" for i in range(start, start + n)],
                    "source": ["synthetic"] * n,
                    "subject": [None] * n,
                    "box_x": [0.0] * n,
                    "box_y": [0.0] * n,
                    "box_w": [64.0] * n,
                    "box_h": [64.0] * n,
                    "score": [1.0] * n,
                    "detector": ["none"] * n,
                    "crop": [crop] * n,
                    "crop_sha256": [i[:64] for i in ids],
                    "crop_face_frac": [0.625] * n,
                    "prior_expression": [None] * n,
                    "prior_valence": [None] * n,
                    "prior_arousal": [None] * n,
                    "prior_aus": [None] * n,
                    "label_set": [[]] * n,
                    "au_set": [[]] * n,
                },
                schema=FaceRecord.arrow_schema(),
            )
        )
        m = n * per_face
        top = rng.integers(0, len(exprs), n)
        agree = rng.random(m) < 0.8
        e = np.where(agree, np.repeat(top, per_face), rng.integers(0, len(exprs), m))
        au_lists = [list(aus[rng.random(len(aus)) < 0.15]) for _ in range(min(m, 4096))]
        sw.write_table(
            pa.Table.from_pydict(
                {
                    "face_id": np.repeat(ids, per_face).tolist(),
                    "request_id": [f"r{f}" for f in np.repeat(np.arange(start, start + n), per_face)],
                    "variant": ["primed"] * m,
                    "sample_index": np.tile(np.arange(per_face), n).tolist(),
                    "seed": list(range(m)),
                    "status": ["ok"] * m,
                    "error": [None] * m,
                    "raw": ["{}"] * m,
                    "expression": exprs[e].tolist(),
                    "valence": (rng.random(m) * 0.4 - 0.2).tolist(),
                    "arousal": (rng.random(m) * 0.4 - 0.2).tolist(),
                    "aus": [au_lists[i % len(au_lists)] for i in range(m)],
                    "au_probs": [None] * m,
                    "rationale": [None] * m,
                    "annotator": ["synthetic"] * m,
                    "annotator_version": ["0"] * m,
                    "model": ["synthetic"] * m,
                    "tokens_in": [0] * m,
                    "tokens_out": [0] * m,
                    "latency_ms": [0.0] * m,
                    "cached": [False] * m,
                    "cost_usd": [0.0] * m,
                },
                schema=SampleRecord.arrow_schema(),
            )
        )
    fw.close()
    sw.close()


def params_file(d: Path, runner: str, workers: int) -> Path:
    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["paths"].update(
        crop=str(d / "crop"),
        sample=str(d / "sample"),
        verify=str(d / f"verify-{runner}"),
        feid=str(d / f"feid-{runner}"),
        metrics=str(d / f"metrics-{runner}"),
        plots=str(d / f"plots-{runner}"),
    )
    p["runtime"].update(task_runner=runner, dask_workers=workers)
    p["expectations"].update(max_class_share=1.0)
    # the synthetic faces are unlabelled, so no error target can be certified on them: accept by
    # a plain threshold (this measures speed and memory, not trust)
    p["verify"].update(target_error=0.0)
    out = d / f"params-{runner}.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def one(params: str) -> None:
    """Child process: run verify + export, print JSON with seconds and peak RSS."""
    from flows import env

    env.apply()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.stages import stage_flow

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from prefect import flow

    @flow(name="warm-up")
    def warm() -> None:  # starts the temporary Prefect server, so it is not timed below
        pass

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        t = time.perf_counter()
        warm()
        print(f"prefect start-up {time.perf_counter() - t:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        v = stage_flow("verify")(params_path=params)
        t1 = time.perf_counter()
        e = stage_flow("export")(params_path=params)
        t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "verify_s": round(t1 - t0, 1),
                "export_s": round(t2 - t1, 1),
                "faces": v["faces"],
                "accepted": v["accepted"],
                "feid_rows": e["feid_rows"],
                "rss_start_mb": rss0 // 1024,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--per-face", type=int, default=10)
    ap.add_argument("--runners", nargs="+", default=["sequential", "dask"])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--work", default="")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        return one(a.one)
    base = Path(a.work or tempfile.mkdtemp(prefix="seke-scale-"))
    results = {}
    for n in a.faces:
        d = base / f"{n}"
        if not (d / "sample" / "samples.parquet").exists():
            t = time.perf_counter()
            synth(d, n, a.per_face)
            print(f"synthesised {n} faces x {a.per_face} samples in {time.perf_counter() - t:.1f} s", flush=True)
        for r in a.runners:
            pf = params_file(d, r, a.workers)
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(pf)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            wall = time.perf_counter() - t
            if out.returncode != 0:
                print(out.stdout[-2000:], out.stderr[-4000:])
                raise SystemExit(f"{r} at {n} faces failed")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows = n * a.per_face
            res.update(
                sample_rows=rows,
                process_wall_s=round(wall, 1),
                rows_per_s=round(rows / (res["verify_s"] + res["export_s"])),
            )
            results[(n, r)] = res
            print(
                f"{rows:>9,} sample rows  {r:<10}  verify {res['verify_s']:6.1f} s  export {res['export_s']:6.1f} s  "
                f"{res['rows_per_s']:>8,} rows/s  peak RSS {res['peak_rss_mb']:5} MB  "
                f"(process wall {res['process_wall_s']} s)",
                flush=True,
            )
    if len(a.faces) >= 2:
        small, big = min(a.faces), max(a.faces)
        for r in a.runners:
            if (small, r) in results and (big, r) in results:
                s, b = results[(small, r)], results[(big, r)]
                print(
                    f"{r}: data x{big / small:.0f} -> peak RSS x{b['peak_rss_mb'] / s['peak_rss_mb']:.2f}; "
                    f"{big * a.per_face:,} rows in {b['verify_s'] + b['export_s']:.1f} s"
                )
    if "sequential" in a.runners and "dask" in a.runners:
        for n in a.faces:
            s, d_ = results.get((n, "sequential")), results.get((n, "dask"))
            if s and d_:
                print(
                    f"{n * a.per_face:,} rows: dask / single process throughput "
                    f"x{d_['rows_per_s'] / s['rows_per_s']:.2f}"
                )


if __name__ == "__main__":
    main()
