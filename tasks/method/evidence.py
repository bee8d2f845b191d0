"""verify (SV-UAMC): aggregate each face's Monte Carlo samples and accept or reject it.

Input: the face (its priors) and its SampleRecords. Output: a Verdict with the aggregated
labels, every uncertainty measure, and either `accepted` with a confidence in [0, 1] or the
reasons for rejection. The same aggregation drives the sample stage's adaptive stopping
(`tasks.method.stopping.settled`), so "certain enough to stop sampling" and "certain enough to accept" are
measured by one piece of code.

Samples of variant `primed`/`plain` provide the generated granularities; `blind` samples,
asked everything with no priors shown, are compared against the face's known labels
(self-verification against priors); `verify` samples are the verification round (the
annotator saw the aggregated answer and confirmed it, or corrected it: a sample whose
`expression` equals the aggregated answer is a confirmation, anything else is not).

The expression's confidence is P(right | evidence) from `tasks.method.uamc` (calibrated when
`verify.calibration` names a calibration file). Faces whose expression is a prior keep the
older certainty score of their generated granularities (VA spread, AU entropy), scaled by
prior agreement and consistency.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from tasks.core.knowledge import AUS, Knowledge
from tasks.method import uamc

REASONS = (
    "api_failure",
    "no_samples",
    "uncertain_expression",
    "va_spread",
    "au_entropy",
    "prior_disagreement",
    "knowledge_conflict",
    "failed_verification",
    "low_confidence",
    "no_guarantee",
    "expression_withheld",
    "incomplete",
)
VERIFY_VARIANT = "verify"
# the verification round on a labelled face's blind answers (its calibration mirror, see `mirror`)
MIRROR_VERIFY_VARIANT = "verify_blind"
VERIFY_VARIANTS = (VERIFY_VARIANT, MIRROR_VERIFY_VARIANT)


def entropy_bits(counts: Iterable[int]) -> float:
    c = [x for x in counts if x > 0]
    n = sum(c)
    return -sum(x / n * math.log2(x / n) for x in c) if n else 0.0


def binary_entropy(p: float) -> float:
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


@dataclass
class Stats:
    """Everything measured on one face's samples (before any decision)."""

    n_samples: int = 0
    n_ok: int = 0
    n_failed: int = 0
    expression: str | None = None
    expression_source: str | None = None
    vote_share: float | None = None
    entropy: float | None = None
    valence: float | None = None
    arousal: float | None = None
    valence_std: float | None = None
    arousal_std: float | None = None
    va_source: str | None = None
    au_probs: list[float | None] = field(default_factory=lambda: [None] * len(AUS))
    au_entropy: float | None = None
    au_source: str | None = None
    prior_agreement: float | None = None
    consistency: float | None = None
    # SV-UAMC evidence on the generated expression
    top_votes: int = 0
    n_votes: int = 0
    votes: dict = field(default_factory=dict)
    consistency_margin: float | None = None
    verified: bool | None = None  # None: no verification round answered
    n_verify: int = 0
    posterior: float | None = None  # the evidence model's probability of `expression` (when it chose it)
    # the evidence as the votes measured it, kept when the evidence model relabels the face,
    # so that its confidence reads the same features as a calibration face's
    measured: uamc.Evidence | None = None

    def evidence(self) -> uamc.Evidence:
        if self.measured is not None:
            return self.measured
        second = sorted(self.votes.values(), reverse=True)[1] if len(self.votes) > 1 else 0
        spread = max(self.valence_std, self.arousal_std or 0.0) if self.valence_std is not None else None
        return uamc.Evidence(
            top=self.top_votes,
            n=self.n_votes,
            second=second,
            consistency=self.consistency,
            va_spread=spread,
            au_entropy=self.au_entropy,
            consistency_margin=self.consistency_margin,
            verified=self.verified,
            prior_agreement=self.prior_agreement,
            posterior=self.posterior,
        )


def au_agreement(answered: set[str], prior: set[str]) -> float:
    """Jaccard agreement of one blind AU answer with the known active AUs (both empty: 1)."""
    u = answered | prior
    return len(answered & prior) / len(u) if u else 1.0


def _measure_expression(s: Stats, face: dict, gen: list[dict], ver: list[dict], k: Knowledge) -> None:
    if face.get("prior_expression"):
        s.expression, s.expression_source = face["prior_expression"], "prior"
        return
    votes = Counter(x["expression"] for x in gen if x.get("expression"))
    if not votes:
        return
    (label, top), n = votes.most_common(1)[0], sum(votes.values())
    # ties break towards the label set's order, so the result never depends on sample order
    tied = [lab for lab, c in votes.items() if c == top]
    label = min(tied, key=k.expressions.index)
    s.expression, s.expression_source = label, "annotator"
    s.vote_share, s.entropy = top / n, entropy_bits(votes.values())
    s.top_votes, s.n_votes, s.votes = top, n, dict(votes)
    if ver:
        s.n_verify = len(ver)
        # all verification answers must confirm the aggregated answer
        s.verified = all(x.get("expression") == label for x in ver)


def _measure_va(s: Stats, face: dict, gen: list[dict]) -> None:
    if face.get("prior_valence") is not None:
        s.valence, s.arousal, s.va_source = face["prior_valence"], face["prior_arousal"], "prior"
        return
    va = [(x["valence"], x["arousal"]) for x in gen if x.get("valence") is not None]
    if va:
        s.valence, s.valence_std = mean_std([v for v, _ in va])
        s.arousal, s.arousal_std = mean_std([a for _, a in va])
        s.va_source = "annotator"


def _measure_aus(s: Stats, au_set: set[str], prior_aus: set[str], gen: list[dict]) -> None:
    """Prior where the source annotates an AU, else its occurrence rate over the samples."""
    answered = [set(x["aus"]) for x in gen if x.get("aus") is not None]
    ents = []
    for i, a in enumerate(AUS):
        if a in au_set:
            s.au_probs[i] = 1.0 if a in prior_aus else 0.0
        elif answered:
            p = sum(a in x for x in answered) / len(answered)
            s.au_probs[i] = p
            ents.append(binary_entropy(p))
    if ents:
        s.au_entropy, s.au_source = sum(ents) / len(ents), "annotator"
    elif au_set:
        s.au_source = "prior"


def _prior_agreement(face: dict, blind: list[dict], au_set: set[str], prior_aus: set[str]) -> float | None:
    """Self-verification against priors: how well the blind answers match the known labels."""
    checks = []
    if face.get("prior_expression"):
        be = [x["expression"] for x in blind if x.get("expression")]
        if be:
            checks.append(sum(e == face["prior_expression"] for e in be) / len(be))
    if au_set:
        ba = [set(x["aus"]) & au_set for x in blind if x.get("aus") is not None]
        if ba:
            checks.append(sum(au_agreement(b, prior_aus & au_set) for b in ba) / len(ba))
    return sum(checks) / len(checks) if checks else None


def _measure_consistency(s: Stats, k: Knowledge) -> None:
    """Cross-granularity consistency from the knowledge, and its margin over the runner-up labels."""
    if not s.expression:
        return
    rates = {a: p for a, p in zip(AUS, s.au_probs) if p is not None}
    s.consistency = k.consistency(s.expression, rates or None, s.valence, s.arousal)
    others = [c for c in s.votes if c != s.expression]
    if s.consistency is not None and others:
        alt = [k.consistency(c, rates or None, s.valence, s.arousal) for c in others]
        s.consistency_margin = s.consistency - max(a for a in alt if a is not None)


def measure(face: dict, samples: list[dict], k: Knowledge) -> Stats:
    """Everything the samples of one face say: aggregated labels, their spread, agreement
    with the known labels, and consistency with the emotion knowledge."""
    ok = [x for x in samples if x["status"] == "ok"]
    gen = [x for x in ok if x["variant"] not in ("blind", *VERIFY_VARIANTS)]
    blind = [x for x in ok if x["variant"] == "blind"]
    ver = [x for x in ok if x["variant"] == VERIFY_VARIANT]
    s = Stats(n_samples=sum(1 for x in samples if x["variant"] not in VERIFY_VARIANTS))
    s.n_ok = len(ok) - len(ver)
    s.n_failed = s.n_samples - s.n_ok
    au_set, prior_aus = set(face.get("au_set") or []), set(face.get("prior_aus") or [])
    _measure_expression(s, face, gen, ver, k)
    _measure_va(s, face, gen)
    _measure_aus(s, au_set, prior_aus, gen)
    agreement = _prior_agreement(face, blind, au_set, prior_aus)
    if agreement is not None:
        s.prior_agreement = agreement
    _measure_consistency(s, k)
    return s


def uncertainty_reasons(
    s: Stats, min_vote_share: float, max_entropy: float, max_va_std: float, max_au_entropy: float
) -> list[str]:
    """Reasons that say 'the samples disagree' (the ones more samples can fix)."""
    r = []
    if s.vote_share is not None and (s.vote_share < min_vote_share or (s.entropy or 0) > max_entropy):
        r.append("uncertain_expression")
    if s.valence_std is not None and max(s.valence_std, s.arousal_std or 0) > max_va_std:
        r.append("va_spread")
    if s.au_entropy is not None and s.au_entropy > max_au_entropy:
        r.append("au_entropy")
    return r


def mirror(face: dict, samples: list[dict]) -> tuple[dict, list[dict]] | None:
    """A labelled face seen as if it were unlabelled: its blind answers (sampled with the
    same rule as an unlabelled face's request) and their verification round, with every
    prior removed. None if the face has no known expression or no blind answers."""
    if not face.get("prior_expression"):
        return None
    ms = [
        {**x, "variant": "primed"} if x["variant"] == "blind" else {**x, "variant": VERIFY_VARIANT}
        for x in samples
        if x["variant"] in ("blind", MIRROR_VERIFY_VARIANT)
    ]
    if not any(x["variant"] == "primed" for x in ms):
        return None
    mf = {
        **face,
        "prior_expression": None,
        "prior_valence": None,
        "prior_arousal": None,
        "prior_aus": None,
        "au_set": [],
    }
    return mf, ms
