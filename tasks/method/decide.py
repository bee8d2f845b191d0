"""Per-granularity decisions for one face: is its expression trusted (the run's confidence
model and threshold, `tasks.method.trust`), and are its VA and each AU kept or withheld?

Input: the face, its samples and the evidence measured from them (`tasks.method.evidence`).
Output: a `Verdict`. A face is rejected only when nothing of it can be trusted.
"""

from __future__ import annotations

from tasks.core.knowledge import AUS, Knowledge
from tasks.core.params import Verify
from tasks.core.records import Verdict
from tasks.method import posterior, uamc
from tasks.method.evidence import VERIFY_VARIANTS, Stats, binary_entropy, measure, mirror
from tasks.method.trust import CalRow, Trust


def expression_gates(s: Stats, v: Verify, evidence_model: bool = False) -> list[str]:
    """Hard reasons to withhold a generated expression, whatever its confidence. With the
    evidence model, the knowledge check is part of the confidence (each answer's AUs and VA
    read against its stated label), so the coarse `knowledge_conflict` gate is not applied."""
    r = []
    if s.vote_share is not None and (s.vote_share < v.min_vote_share or (s.entropy or 0) > v.max_entropy):
        r.append("uncertain_expression")
    if not evidence_model and v.use_consistency and s.consistency is not None and s.consistency < v.min_consistency:
        r.append("knowledge_conflict")
    if v.use_verification and v.require_confirmation and s.verified is False:
        r.append("failed_verification")
    # with the evidence model, blind answers that miss the source's AUs withhold the generated
    # VA and AUs (`decide`), not the expression: its confidence is certified on calibration
    # faces, which have no such check, so the check would select unlabelled faces unlike them
    if (
        not evidence_model
        and v.use_priors
        and s.prior_agreement is not None
        and s.prior_agreement < v.min_prior_agreement
    ):
        r.append("prior_disagreement")
    return r


def expression_confidence(s: Stats, v: Verify, cal: uamc.Calibrator | None = None) -> float:
    """P(the generated expression is right | evidence), from `tasks.method.uamc` (or `cal`)."""
    f = uamc.features(
        s.evidence(), use_consistency=v.use_consistency, use_verification=v.use_verification, use_priors=v.use_priors
    )
    return (cal or uamc.calibrator(v.calibration))(f)


def calibration_row(
    face: dict, samples: list[dict], k: Knowledge, v: Verify, second: str | None = None
) -> CalRow | None:
    """One calibration face: the evidence of its blind (mirror) answers and whether their
    majority named its known expression. With `verify.evidence_model`, also the answers
    themselves (`tasks.method.posterior.FaceEvidence`), from which the run's evidence model
    is fitted and this face's label re-scored out of fold (`tasks.method.trust.build`)."""
    m = mirror(face, samples)
    if m is None:
        return None
    s = measure(m[0], m[1], k)
    if s.expression_source != "annotator" or not s.n_votes:
        return None
    f = uamc.features(
        s.evidence(), use_consistency=v.use_consistency, use_verification=v.use_verification, use_priors=v.use_priors
    )
    labels = tuple(k.expressions)
    ev = posterior.face_evidence(m[1], labels, s.expression, second=second) if v.evidence_model else None
    return CalRow(
        subject=face.get("subject") or face["face_id"],
        features=f,
        correct=s.expression == face["prior_expression"],
        gated=bool(expression_gates(s, v, v.evidence_model)),
        evidence=ev,
        truth=labels.index(face["prior_expression"]) if face["prior_expression"] in labels else -1,
        label=labels.index(s.expression),
    )


def apply_evidence(s: Stats, face: dict, samples: list[dict], k: Knowledge, model, second: str | None = None) -> Stats:
    """The evidence model's label and its probability, in place of the votes' answer. When
    the model picks another label than the votes, the face's VA and AUs are re-measured
    from the answers that state that label (the others' VA and AUs follow a label the
    model does not believe), and the verification round's confirmation no longer applies."""
    if s.expression_source != "annotator" or not s.n_votes or model is None:
        return s
    ev = posterior.face_evidence(samples, model.labels, s.expression, set(face.get("au_set") or []), second)
    post = model.posterior(ev)
    best = model.labels[int(post.argmax())]
    s.posterior = float(post.max())
    s.measured = s.evidence()
    if best == s.expression:
        return s
    agree = [x for x in samples if x["variant"] in ("blind", *VERIFY_VARIANTS) or x.get("expression") == best]
    s2 = measure(face, agree, k)
    if s.va_source == "annotator":
        for name in ("valence", "arousal", "valence_std", "arousal_std", "va_source"):
            setattr(s, name, getattr(s2, name))
    for name in ("au_probs", "au_entropy", "au_source"):
        setattr(s, name, getattr(s2, name))
    s.expression = best
    s.verified = False if s.verified is not None else None
    rates = {a: p for a, p in zip(AUS, s.au_probs) if p is not None}
    s.consistency = k.consistency(best, rates or None, s.valence, s.arousal)
    return s


def fallback_trust(v: Verify) -> Trust:
    """The trust verify applies without calibration faces: `verify.calibration` (or the
    built-in weights) and `verify.min_confidence`."""
    return Trust(uamc.calibrator(v.calibration), v.min_confidence, {"mode": "min_confidence"})


def confidence(s: Stats, v: Verify, cal: uamc.Calibrator | None = None) -> float:
    """Confidence in [0, 1]. A generated expression: its calibrated probability of being
    right. Otherwise: the mean certainty of the generated granularities, scaled by the
    annotator's demonstrated reliability on this face (blind agreement with priors) and by
    cross-granularity consistency, each where it exists and is enabled."""
    if s.expression_source == "annotator" and s.n_votes:
        return expression_confidence(s, v, cal)
    parts = []
    if s.vote_share is not None:
        parts.append(s.vote_share)
    if s.valence_std is not None:
        parts.append(max(0.0, 1.0 - max(s.valence_std, s.arousal_std or 0) / (2 * v.max_va_std)))
    if s.au_entropy is not None:
        parts.append(1.0 - s.au_entropy)
    c = sum(parts) / len(parts) if parts else 1.0
    if v.use_priors and s.prior_agreement is not None:
        c *= 0.5 + 0.5 * s.prior_agreement
    if v.use_consistency and s.consistency is not None:
        c *= 0.75 + 0.25 * s.consistency
    return min(1.0, max(0.0, c))


def _expression_decision(s: Stats, v: Verify, trust: Trust, conf: float) -> tuple[str, list[str]]:
    """(status, reasons to withhold) of the face's expression."""
    if s.expression_source == "prior":
        return "prior", []
    if s.expression_source != "annotator" or not s.n_votes:
        return "missing", []
    why = expression_gates(s, v, trust.evidence is not None)
    if not why and not trust.accepts(conf):
        why = ["low_confidence" if trust.threshold is not None else "no_guarantee"]
        if v.use_verification and s.verified is False:
            why.insert(0, "failed_verification")
    return ("withheld" if why else "accepted"), why


def _va_decision(s: Stats, v: Verify, taint: list[str]) -> tuple[str, list[str]]:
    """(status, reasons to withhold) of the face's valence-arousal."""
    if s.va_source != "annotator":
        return s.va_source or "missing", []
    why = list(taint)
    if s.valence_std is not None and max(s.valence_std, s.arousal_std or 0) > v.max_va_std:
        why.append("va_spread")
    return ("withheld" if why else "accepted"), why


def _au_decision(s: Stats, v: Verify, taint: list[str], au_set: set[str]) -> tuple[str, list[str], list[str]]:
    """(status, AUs withheld, reasons) of the face's generated AUs, one decision per AU."""
    if s.au_source != "annotator":
        return s.au_source or "missing", [], []
    generated = [(a, p) for a, p in zip(AUS, s.au_probs) if p is not None and a not in au_set]
    out = [a for a, p in generated if taint or binary_entropy(p) > v.max_au_entropy]
    status = "withheld" if len(out) == len(generated) else "partial" if out else "accepted"
    return status, out, ((taint or ["au_entropy"]) if out else [])


def decide(
    face: dict, samples: list[dict], k: Knowledge, v: Verify, trust: Trust | None = None, second: str | None = None
) -> Verdict:
    """Per-granularity acceptance. The expression is the anchor: a generated one is kept when
    its calibrated confidence passes `trust`'s threshold and no hard gate withholds it. A
    generated VA or AU is kept only when the expression is kept (prior or accepted), because
    a VLLM's AUs and VA follow the label it states; VA is then withheld if its samples are
    spread, and each AU if its occurrence rate is uncertain. The face is rejected only when
    its expression cannot be kept (or nothing was answered). With `verify.per_granularity`
    off, any withheld granularity rejects the whole face (the older rule, for ablation)."""
    trust = trust or fallback_trust(v)
    s = apply_evidence(measure(face, samples, k), face, samples, k, trust.evidence, second)
    conf = confidence(s, v, trust.calibrator) if s.n_ok else 0.0
    e_status, e_why = _expression_decision(s, v, trust, conf)
    disagree = v.use_priors and s.prior_agreement is not None and s.prior_agreement < v.min_prior_agreement
    taint = ["expression_withheld"] * (e_status not in ("prior", "accepted")) + ["prior_disagreement"] * disagree
    va_status, va_why = _va_decision(s, v, taint)
    au_status, au_withheld, au_why = _au_decision(s, v, taint, set(face.get("au_set") or []))
    withheld = [f"expression:{r}" for r in e_why] + [f"va:{r}" for r in va_why] + [f"aus:{r}" for r in au_why]
    reasons: list[str] = []
    if s.n_ok == 0:
        reasons.append("api_failure" if s.n_failed else "no_samples")
    elif e_status not in ("prior", "accepted"):
        reasons += e_why or ["incomplete"]
    elif not v.per_granularity and withheld:
        reasons += sorted({w.split(":", 1)[1] for w in withheld})
    if not reasons and s.expression is None:
        reasons.append("incomplete")
    return Verdict(
        face_id=face["face_id"],
        accepted=not reasons,
        reasons=reasons,
        withheld=withheld,
        confidence=conf,
        expression=s.expression,
        expression_source=s.expression_source,
        expression_status=e_status,
        expression_confidence=conf if s.expression_source == "annotator" and s.n_votes else None,
        guarantee="source" if e_status == "prior" else trust.guarantee if e_status == "accepted" else None,
        vote_share=s.vote_share,
        entropy=s.entropy,
        n_samples=s.n_samples,
        n_failed=s.n_failed,
        valence=s.valence,
        arousal=s.arousal,
        valence_std=s.valence_std,
        arousal_std=s.arousal_std,
        va_source=s.va_source,
        va_status=va_status,
        aus=[a for a, p in zip(AUS, s.au_probs) if p is not None and p >= v.au_threshold]
        if any(p is not None for p in s.au_probs)
        else None,
        au_probs=s.au_probs,
        au_withheld=au_withheld,
        au_status=au_status,
        au_entropy=s.au_entropy,
        au_source=s.au_source,
        prior_agreement=s.prior_agreement,
        consistency=s.consistency,
    )
