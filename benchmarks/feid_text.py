"""FEID as training text: verified rationales and varied instructions, measured end to end.

A real `dvc repro` (every stage, Prefect flows, GX suites) of a project copy with the London
faces of the sample set, the `openai` backend against the simulated VLLM on 127.0.0.1, 30%
of the people labelled (calibration) and the rest unlabelled. The simulator writes its own
rationales, a share of which (`--contradict`) name another expression or an AU it did not
report. Prints, from the run's own outputs:

- the share of faces with a generated expression whose description turn is a verified
  rationale, and the share whose rationales were all rejected for contradicting the labels;
- of the rejected rationales' texts, how many the simulator really made contradictory
  (the simulator's own record: precision of the check);
- the number of distinct instruction phrasings in FEID, and single- vs multi-turn rows.

    .venv/bin/python benchmarks/feid_text.py [--faces 120] [--contradict 0.15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import polars as pl  # noqa: I001
from opsproj import env, london, make_project, run
from simserver import TEST_KEY

from simvllm.server import ServerThread, SimConfig, SimVLLM, Truth
from tasks.core.knowledge import load as load_knowledge


def build(tmp: Path, n: int, contradict: float) -> Path:
    rows = london(n)
    truth_of = {r["path"]: r["expression"] for r in rows}
    subjects = sorted({r["subject"] for r in rows})
    labelled = set(subjects[: len(subjects) * 3 // 10])
    rows = [{**r, "expression": r["expression"] if r["subject"] in labelled else ""} for r in rows]
    params = {
        "annotator": {"backend": "openai", "model": "sim-vllm", "temperature": 1.0},
        "runtime": {"concurrency": 16, "timeout_s": 5.0, "max_retries": 2},
        "verify": {"calibration": "", "min_calibration_faces": 20, "target_error": 0.0, "min_confidence": 0.5},
    }
    proj = make_project(tmp, rows, params)
    sim = SimVLLM(SimConfig(rationale_contradict=contradict))
    with ServerThread(sim) as server:
        e = env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
        run(proj, "dvc", "repro", "crop", env_=e)
        k = load_knowledge()
        for f in pl.read_parquet(proj / "data" / "crop" / "faces.parquet").iter_rows(named=True):
            t = truth_of[f["path"]]
            v, a, _ = k.va_centroid(t)
            sim.truth[f["crop_sha256"]] = Truth(t, v, a, k.prototype(t)[0])
        run(proj, "dvc", "repro", env_=e)
    return proj


def measure(proj: Path) -> dict:
    ver = json.loads((proj / "metrics" / "verify.json").read_text())["rationales"]
    exp = json.loads((proj / "metrics" / "export.json").read_text())["instructions"]
    feid = pl.read_parquet(proj / "data" / "feid" / "feid.parquet")
    gen = feid.filter(pl.col("expression_status") == "accepted")
    smp = pl.read_parquet(proj / "data" / "sample_runs" / "samples.parquet", columns=["request_id", "sample_index"])
    keys = {f"{r}#{i}" for r, i in zip(smp["request_id"], smp["sample_index"])}
    used = [s for s in feid["rationale_sample"] if s]
    g = ver["generated"]
    n = g["faces"]
    return {
        "faces_in_feid": feid.height,
        "generated_expressions_in_feid": gen.height,
        "generated_with_verified_rationale": round(g.get("verified", 0) / n, 3) if n else None,
        "generated_rationales_all_contradicting": round(g.get("contradicts", 0) / n, 3) if n else None,
        "generated_no_consistent_answer": round(g.get("inconsistent", 0) / n, 3) if n else None,
        "rationale_sources_found_in_samples": f"{sum(s in keys for s in used)}/{len(used)}",
        "distinct_instruction_phrasings": exp["distinct_phrasings"],
        "rows": exp["rows"],
        "description_source": exp["description_source"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=120)
    ap.add_argument("--contradict", type=float, default=0.15)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = {"faces": a.faces, "contradict": a.contradict, **measure(build(Path(d), a.faces, a.contradict))}
    for k, v in res.items():
        print(f"{k:42s} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
