"""Dry run: what the sample stage would send and cost, without sending anything.

Needs the prompt stage's output (ingest, crop and prompt cost no API calls: run
`dvc repro prompt` first). For every request it counts the samples not already in the
response cache, at the two ends of adaptive sampling: every face stopping after `k0`
(the floor) and every face going on to `kmax` (the ceiling).
"""

from __future__ import annotations

from tasks.core.params import Params
from tasks.infra import io
from tasks.infra.cache import ResponseCache
from tasks.method.sampling import call_of, seed_for


def _calls(p: Params, cache: ResponseCache, lo: int, hi: int):
    """Calls for sample indices lo..hi-1 of every request, minus cached samples."""
    faces = {}
    for f in io.iter_rows(io.join(p.paths.crop, "faces.parquet"), columns=["face_id", "crop", "crop_face_frac"]):
        faces[f["face_id"]] = f
    for req in io.iter_rows(io.join(p.paths.prompt, "requests.parquet")):
        idx = [
            i
            for i in range(lo, hi)
            if cache.get(req["request_id"], i, seed_for(p.sample.seed, req["request_id"], i)) is None
        ]
        if not idx:
            continue
        yield call_of(faces[req["face_id"]], req, idx, [seed_for(p.sample.seed, req["request_id"], i) for i in idx])


def dry_run(p: Params) -> dict:
    """{'floor': {...}, 'ceiling': {...}} with calls, requests, image sends, samples, tokens
    and cost in USD for the annotator of `params.annotator`; cached samples are free."""
    from tasks import annotators

    ann = annotators.build(p)
    cache = ResponseCache(p.runtime.cache, ann.signature_hash())
    sp = p.sample
    rounds = [(0, sp.k0)] + [(k, min(k + sp.dk, sp.kmax)) for k in range(sp.k0, sp.kmax, sp.dk)]
    out = {}
    for name, rs in (("floor", rounds[:1]), ("ceiling", rounds)):
        total: dict = {}
        for lo, hi in rs:  # adaptive sampling sends one call per request per round
            calls = list(_calls(p, cache, lo, hi))
            est = (
                ann.estimate(calls)
                if hasattr(ann, "estimate")
                else {  # local: costs only time
                    "calls": len(calls),
                    "samples": sum(len(c.indices) for c in calls),
                    "cost_usd": 0.0,
                }
            )
            for key, v in est.items():
                total[key] = total.get(key, 0) + v
        total["k_per_request"] = rs[-1][1]
        out[name] = total
    out["cached_samples"] = len(cache.entries)
    ann.close()
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tasks.core.params import load

    ap = argparse.ArgumentParser(
        prog="python -m tasks.tools.estimate",
        description="Estimate calls, tokens and cost of the sample stage; sends nothing.",
    )
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    p = load(a.params)
    try:
        est = dry_run(p)
    except FileNotFoundError as e:
        raise SystemExit(
            f"{e}\nrun `dvc repro prompt` first: ingest, crop and prompt make no annotator calls"
        ) from None
    print(f"annotator: {p.annotator.backend} / {p.annotator.model}; {est['cached_samples']} samples already cached")
    for name in ("floor", "ceiling"):
        e = est[name]
        print(
            f"{name:8s} (k={e['k_per_request']} per request): {e['calls']} calls, {e.get('image_sends', e['calls'])} "
            f"image sends, {e['samples']} samples, {e.get('tokens_in', 0):,} tokens in, "
            f"{e.get('tokens_out', 0):,} out, ${e['cost_usd']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
