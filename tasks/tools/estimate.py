"""Dry run: what the sample stage would send and cost, without sending anything.

Needs the prompt stage's output (ingest, crop and prompt cost no API calls: run
`dvc repro prompt` first). For every request it counts the samples not already in the
response cache, at the two ends of adaptive sampling: every face stopping after `k0`
(the floor) and every face going on to `kmax` (the ceiling).
"""

from __future__ import annotations

from tasks.core.calls import Call
from tasks.core.params import Params
from tasks.infra import io
from tasks.infra.cache import ResponseCache
from tasks.method.sampling import call_of, cap, seed_for, supports_verification
from tasks.method.verification import VERIFY_ASK, verification_request


def _faces(p: Params) -> dict[str, dict]:
    cols = ["face_id", "crop", "crop_sha256", "crop_face_frac", "prior_expression", "label_set"]
    return {f["face_id"]: f for f in io.iter_rows(io.join(p.paths.crop, "faces.parquet"), columns=cols)}


def _calls(p: Params, faces: dict, cache: ResponseCache, lo: int, hi: int):
    """Calls for sample indices lo..hi-1 of every request (up to the request's own cap: a
    blind request of a face with no known expression gets `blind_k`), minus cached samples."""
    for req in io.iter_rows(io.join(p.paths.prompt, "requests.parquet")):
        f = faces[req["face_id"]]
        top = min(hi, cap(req, p.sample, f))
        idx = [
            i
            for i in range(lo, top)
            if cache.get(req["request_id"], i, seed_for(p.sample.seed, req["request_id"], i)) is None
        ]
        if idx:
            yield call_of(f, req, idx, [seed_for(p.sample.seed, req["request_id"], i) for i in idx])


def _verification_calls(p: Params, faces: dict, k) -> list[Call]:
    """One verification call per face with a generated expression, and one more per
    labelled face (its calibration mirror), each with a stand-in proposal of the same shape."""
    views: dict[str, int] = {}
    for req in io.iter_rows(io.join(p.paths.prompt, "requests.parquet"), columns=["face_id", "variant", "ask"]):
        f = faces[req["face_id"]]
        if req["variant"] != "blind" and "expression" in req["ask"]:
            views[f["face_id"]] = views.get(f["face_id"], 0) + 1
        elif req["variant"] == "blind" and f.get("prior_expression"):
            views[f["face_id"]] = views.get(f["face_id"], 0) + 1
    out = []
    for fid, n in views.items():
        f = faces[fid]
        label = (f.get("label_set") or list(k.expressions))[0]
        proposal = {"expression": label, "valence": 0.0, "arousal": 0.0, "aus": ["AU6", "AU12"]}
        vid, messages, schema = verification_request(
            k, f["crop_sha256"], proposal, p.prompt.version, p.prompt.knowledge
        )
        out += [Call(vid, fid, messages, schema, VERIFY_ASK, f["crop"], (0,), (0,))] * min(n, 2)
    return out


def pilot(p: Params, ann, cache: ResponseCache, k, n: int, seed: int = 0) -> dict:
    """Sample `n` random faces that have nothing cached yet, for real, exactly as the sample
    stage would (their answers are cached, so the run does not pay for them again), and
    extrapolate their calls, image sends, tokens and cost per face to every uncached face."""
    import random

    from tasks.method.pipeline import sample_stream
    from tasks.method.sampling import Tally

    by_face: dict[str, list[dict]] = {}
    for req in io.iter_rows(io.join(p.paths.prompt, "requests.parquet")):
        by_face.setdefault(req["face_id"], []).append(req)
    uncached = sorted(
        fid
        for fid, reqs in by_face.items()
        if all(cache.get(r["request_id"], 0, seed_for(p.sample.seed, r["request_id"], 0)) is None for r in reqs)
    )
    pick = set(random.Random(seed).sample(uncached, min(n, len(uncached))))
    faces = [f for f in io.iter_rows(io.join(p.paths.crop, "faces.parquet")) if f["face_id"] in pick]
    if not faces:
        return {"faces": 0, "uncached_faces": len(uncached)}
    stats0 = dict(getattr(ann, "stats", {}))
    tally = Tally()
    window = max(p.runtime.batch_size, 4 * p.runtime.concurrency)
    for _ in sample_stream(((f, by_face[f["face_id"]]) for f in faces), ann, cache, p, k, tally, window):
        pass
    stats = getattr(ann, "stats", {})
    paid = {
        "calls": tally.calls,
        "requests": stats.get("requests", tally.calls) - stats0.get("requests", 0),
        "image_sends": stats.get("image_sends", tally.calls) - stats0.get("image_sends", 0),
        "samples": tally.fresh,
        "tokens_in": tally.tokens_in,
        "tokens_out": tally.tokens_out,
        "cost_usd": tally.cost_usd,
    }
    scale = len(uncached) / len(faces)
    return {
        "faces": len(faces),
        "uncached_faces": len(uncached),
        "paid": paid,
        "expected": {key: v * scale for key, v in paid.items()},
    }


def _guarantee_note(p: Params) -> dict:
    """Whether the run's labelled faces could certify verify.target_error: known before any call."""
    from tasks.method import guarantee

    n_labelled = guarantee.labelled_faces(p, io.join(p.paths.crop, "faces.parquet"))
    why = guarantee.certifiable_with(p.verify, n_labelled)
    after = (
        "the run will stop before sampling"
        if p.verify.guarantee_mode == "required"
        else "generated labels will be accepted by verify.min_confidence, with no guarantee"
    )
    return {
        "labelled_faces": n_labelled,
        "needed": guarantee.min_labels(p.verify),
        "possible": why is None,
        "note": f"{why}; {after}" if why else None,
    }


def dry_run(p: Params, pilot_faces: int = 0) -> dict:
    """{'floor': {...}, 'ceiling': {...}} with calls, requests, image sends, samples, tokens
    and cost in USD for the annotator of `params.annotator`; cached samples are free.

    floor: every face stops after `k0`, and no verification round unless it is `all`.
    ceiling: every face goes on to `kmax` (blind requests to their cap), and every face
    that can be verified is (its generated expression, and a labelled face's mirror). Failed
    answers are not counted: each one adds a replacement, up to `sample.retry_failed` per request.

    With `pilot_faces`, that many random uncached faces are sampled for real first (`pilot`):
    'pilot' then holds what they cost and the expected total for every uncached face. The
    floor and ceiling are computed after the pilot, so its answers count as cached there."""
    from tasks import annotators
    from tasks.core import knowledge
    from tasks.method.stopping import schedule

    ann = annotators.build(p)
    k = knowledge.load()
    cache = ResponseCache(p.runtime.cache, ann.signature_hash())
    out: dict = {}
    if pilot_faces:
        out["pilot"] = pilot(p, ann, cache, k, pilot_faces)
    faces = _faces(p)
    out["guarantee"] = _guarantee_note(p)
    sp = p.sample
    rounds = schedule(sp)
    verifies = sp.verify_round != "none" and supports_verification(ann)
    verify = _verification_calls(p, faces, k) if verifies else []
    for name, rs in (("floor", rounds[:1]), ("ceiling", rounds)):
        total: dict = {}
        batches = [list(_calls(p, faces, cache, lo, hi)) for lo, hi in rs]  # one call per request per round
        if verify and (name == "ceiling" or sp.verify_round == "all"):
            batches.append(verify)
            total["verification_calls"] = len(verify)
        for calls in batches:
            est = ann.estimate(calls)
            for key, v in est.items():
                total[key] = total.get(key, 0) + v
        total["k_per_request"] = rs[-1][1]
        out[name] = total
    out["cached_samples"] = len(cache)
    if ann.estimate_warning():
        out["warning"] = ann.estimate_warning()
    ann.close()
    cache.close()
    return out
