"""sample (Monte Carlo, adaptive): answer each face's requests K times, K chosen per face.

Input: FaceRecord (crop bytes, priors) and that face's RequestRecords. Output: one
SampleRecord per sample drawn: parsed answer, raw answer, seed, index, status, annotator.

A face's first round draws `k0` samples of each of its requests; then, while the face is
not `stopping.settled` and has fewer than `kmax` samples, `dk` more. Then the verification
round (`sample.verify_round`): faces whose generated expression is not certain enough
(`stopping.wants_verification`) get one more call that shows the annotator its aggregated
answer with the knowledge about it (`tasks.method.verification.verification_request`); its answer is recorded
as a sample of variant `verify` (expression = the confirmed or corrected label). Seeds are a
pure function of (sample.seed, request id, index), and every raw answer goes through the
response cache first, so `dvc repro` is reproducible and a re-run, or a run resumed after a
crash, pays for nothing that had already succeeded.

Annotators answer verification requests if they say so (`supports_verification`); the
OpenAI-compatible one does (any chat model can), others are skipped.

This module holds the steps of one face; `tasks.method.pipeline` runs them for many faces
at once, with no barrier between faces.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from tasks.annotators.base import Annotator
from tasks.core.answer import parse
from tasks.core.calls import Call, CallResult
from tasks.core.knowledge import AUS, Knowledge
from tasks.core.params import Params
from tasks.core.records import SampleRecord
from tasks.infra.cache import ResponseCache
from tasks.method.evidence import MIRROR_VERIFY_VARIANT, VERIFY_VARIANT, measure, mirror
from tasks.method.stopping import settled, wants_verification
from tasks.method.verification import VERIFY_ASK, parse_verification, verification_request

log = logging.getLogger(__name__)


def seed_for(base: int, request_id: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}|{request_id}|{index}".encode()).digest()[:4], "big") >> 1


@dataclass
class Tally:
    calls: int = 0
    cached: int = 0
    fresh: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    per_face_k: list[int] = field(default_factory=list)
    verify_calls: int = 0


def _base(ann: Annotator, face_id: str, req: dict, index: int, seed: int, cached: bool) -> dict:
    """The fields every SampleRecord of this request and index has, answered or not."""
    return dict(
        face_id=face_id,
        request_id=req["request_id"],
        variant=req["variant"],
        sample_index=index,
        seed=seed,
        annotator=ann.name,
        annotator_version=ann.version,
        model=ann.model,
        cached=cached,
    )


def _record(
    ann: Annotator, face_id: str, req: dict, entry: dict | None, index: int, seed: int, error: str | None, cached: bool
) -> dict:
    base = _base(ann, face_id, req, index, seed, cached)
    if entry is None:
        return SampleRecord(**base, status="error", error=error or "no answer").model_dump()
    p = parse(entry.get("text"), tuple(req["ask"]), entry.get("finish_reason"), entry.get("refusal"))
    au_probs = None
    if p.aus is not None:
        au_probs = [1.0 if a in p.aus else 0.0 for a in AUS]
    return SampleRecord(
        **base,
        status=p.status,
        error=p.error,
        raw=entry.get("text"),
        expression=p.expression,
        valence=p.valence,
        arousal=p.arousal,
        aus=p.aus,
        au_probs=au_probs,
        rationale=p.rationale,
        tokens_in=round(entry.get("tokens_in", 0)),
        tokens_out=round(entry.get("tokens_out", 0)),
        latency_ms=entry.get("latency_ms", 0.0),
        cost_usd=0.0 if cached else entry.get("cost_usd", 0.0),
        paid_usd=entry.get("cost_usd", 0.0),
    ).model_dump()


def cap(req: dict, sp, face: dict) -> int:
    """Samples a request may get: `kmax`. A blind request of a face whose expression is known
    is its calibration mirror (`tasks.method.evidence.mirror`) and is sampled exactly like an
    unlabelled face's request; other blind requests (AU priors only) get `blind_k`."""
    if req["variant"] == "blind" and not face.get("prior_expression"):
        return min(sp.kmax, sp.blind_k)
    return sp.kmax


def call_for(f: dict, req: dict, idx: tuple, sp, ann, cache, drawn, tally) -> Call | None:
    """The call for the sample indices `idx` of one request: cached answers are taken from
    the cache (recorded in `drawn`); the call asks only for the others (None: nothing left)."""
    seeds = tuple(seed_for(sp.seed, req["request_id"], i) for i in idx)
    missing_i, missing_s = [], []
    for i, s in zip(idx, seeds):
        e = cache.get(req["request_id"], i, s)
        if e is not None:
            tally.cached += 1
            drawn[f["face_id"]].append(_record(ann, f["face_id"], req, e, i, s, None, True))
        else:
            missing_i.append(i)
            missing_s.append(s)
    return call_of(f, req, missing_i, missing_s) if missing_i else None


def call_of(face: dict, req: dict, indices, seeds) -> Call:
    """The annotator call for some sample indices of one request about one face."""
    return Call(
        request_id=req["request_id"],
        face_id=face["face_id"],
        messages=json.loads(req["messages_json"]),
        schema=json.loads(req["answer_schema"]),
        ask=tuple(req["ask"]),
        image=face["crop"],
        indices=tuple(indices),
        seeds=tuple(seeds),
        face_frac=face.get("crop_face_frac"),
    )


def limit(req: dict, sp, face: dict, got: list[dict]) -> int:
    """Sample indices a request may use: its `cap`, plus one per failed answer so far, up to
    `sample.retry_failed` (a failed answer never counts towards kmax)."""
    failed = sum(1 for x in got if x["request_id"] == req["request_id"] and x["status"] != "ok")
    return cap(req, sp, face) + min(failed, sp.retry_failed)


def is_open(f: dict, reqs: list[dict], got: list[dict], sp, k: Knowledge) -> bool:
    """Whether a face may take more answers: below its limit, and not settled (or every
    answer failed so far while a request may still replace failures)."""
    used = {r["request_id"]: sum(1 for x in got if x["request_id"] == r["request_id"]) for r in reqs}
    if all(used[r["request_id"]] >= limit(r, sp, f, got) for r in reqs):
        return False
    failed = {r["request_id"]: 0 for r in reqs}
    for x in got:
        if x["status"] != "ok" and x["request_id"] in failed:
            failed[x["request_id"]] += 1
    all_failed = bool(got) and not any(x["status"] == "ok" for x in got)
    # ... i.e. while a request has drawn fewer than its first round plus its replacements
    first = {r["request_id"]: min(sp.k0, cap(r, sp, f)) for r in reqs}
    retrying = all_failed and any(used[r] < first[r] + min(failed[r], sp.retry_failed) for r in failed)
    return retrying or not settled(f, got, k, sp)


def supports_verification(ann: Annotator) -> bool:
    return bool(ann.supports_verification)


def _proposal(s) -> dict:
    """The aggregated answer shown to the annotator in the verification round."""
    proposed: dict = {"expression": s.expression}
    if s.va_source == "annotator":
        proposed.update(valence=round(s.valence, 2), arousal=round(s.arousal, 2))
    if s.au_source == "annotator":
        proposed["aus"] = [a for a, p in zip(AUS, s.au_probs) if p is not None and p >= 0.5]
    return proposed


def _views(f: dict, reqs: list[dict], got: list[dict]) -> list[tuple[str, dict, list[dict]]]:
    """(variant, face as measured, its samples) to verify: the face's own generated
    expression, and for a labelled face its calibration mirror (verified exactly like an
    unlabelled face)."""
    gen = [r for r in reqs if r["variant"] != "blind" and "expression" in r["ask"]]
    views = [(VERIFY_VARIANT, f, got)] if gen else []
    m = mirror(f, got)
    if m is not None:
        views.append((MIRROR_VERIFY_VARIANT, *m))
    return views


def verification_calls(
    f: dict, reqs: list[dict], got: list[dict], ann: Annotator, cache: ResponseCache, params: Params, k, pipe
) -> list[Call]:
    """The verification calls of one face whose sampling is over (cached answers are taken
    at once); `pipe.meta` records what each call verifies."""
    sp = params.sample
    if sp.verify_round == "none" or not supports_verification(ann) or not reqs:
        return []
    calls: list[Call] = []
    for variant, face, samples in _views(f, reqs, got):
        s = measure(face, samples, k)
        if not wants_verification(s, sp, face, samples, k):
            continue
        vid, messages, schema = verification_request(
            k, f["crop_sha256"], _proposal(s), reqs[0]["prompt_version"], params.prompt.knowledge
        )
        req = {"request_id": vid, "variant": variant, "ask": list(VERIFY_ASK)}
        seed = seed_for(sp.seed, vid, 0)
        e = cache.get(vid, 0, seed)
        if e is not None:
            pipe.tally.cached += 1
            got.append(_verify_record(ann, f["face_id"], req, e, seed, None, True, s.expression, k))
        elif vid not in pipe.meta:
            pipe.meta[vid] = (f["face_id"], s.expression, variant)
            call = Call(vid, f["face_id"], messages, schema, VERIFY_ASK, f["crop"], (0,), (seed,))
            calls.append(call)
    return calls


def absorb_verification(res: CallResult, meta: dict, ann, cache, drawn, k: Knowledge, tally: Tally) -> str:
    """Cache a verification answer and record it as its face's `verify` sample; the face's id."""
    tally.calls += 1
    tally.verify_calls += 1
    fid, proposed_label, variant = meta[res.call.request_id]
    entries = {e["index"]: e for e in cache.put(res)}
    tally.fresh += len(entries)
    tally.cost_usd += res.cost_usd
    tally.tokens_in += res.tokens_in
    tally.tokens_out += res.tokens_out
    e = entries.get(0)
    if e is None:
        tally.failed += 1
    req = {"request_id": res.call.request_id, "variant": variant, "ask": list(VERIFY_ASK)}
    drawn[fid].append(
        _verify_record(ann, fid, req, e, res.call.seeds[0], res.error or "no answer", False, proposed_label, k)
    )
    return fid


def _verify_record(
    ann: Annotator,
    face_id: str,
    req: dict,
    entry: dict | None,
    seed: int,
    error: str | None,
    cached: bool,
    proposed: str,
    k: Knowledge,
) -> dict:
    base = _base(ann, face_id, req, 0, seed, cached)
    if entry is None:
        return SampleRecord(**base, status="error", error=error).model_dump()
    if entry.get("refusal"):
        status, label, err = "refused", None, f"refusal: {entry['refusal'][:200]}"
    else:
        status, label, err = parse_verification(entry.get("text"), proposed, k)
    return SampleRecord(
        **base,
        status=status,
        error=err,
        raw=entry.get("text"),
        expression=label,
        tokens_in=round(entry.get("tokens_in", 0)),
        tokens_out=round(entry.get("tokens_out", 0)),
        latency_ms=entry.get("latency_ms", 0.0),
        cost_usd=0.0 if cached else entry.get("cost_usd", 0.0),
        paid_usd=entry.get("cost_usd", 0.0),
    ).model_dump()


def absorb(
    res: CallResult, req: dict, ann: Annotator, cache: ResponseCache, drawn: dict[str, list[dict]], tally: Tally
) -> None:
    tally.calls += 1
    fid = res.call.face_id
    entries = {e["index"]: e for e in cache.put(res)}
    tally.fresh += len(entries)
    tally.cost_usd += res.cost_usd
    tally.tokens_in += res.tokens_in
    tally.tokens_out += res.tokens_out
    for i, s in zip(res.call.indices, res.call.seeds):
        e = entries.get(i)
        if e is None:
            tally.failed += 1
        drawn[fid].append(
            _record(ann, fid, req, e, i, s, res.error or "the annotator returned no answer for this index", False)
        )
