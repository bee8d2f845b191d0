"""SV-UAMC's stopping rule, in one place: when a face stops sampling, which faces get the
verification round, and the round schedule (`schedule`) that sampling and `seke estimate`
both follow. The thresholds are the `sample.*` params (kept apart from `verify.*` so that
changing a verify threshold never re-runs sampling).

Rules (`sample.stop_rule`):
- `lead` (the default): stop once the top answer leads the runner-up by `stop_lead` votes, or
  can no longer reach that lead within `kmax` (`stop_lead`).
- `evidence`: stop once the evidence model with its knowledge priors
  (`tasks.method.posterior.initial`) gives the best label `stop_posterior` (`best_posterior`).
- `bayes`: the Beta-posterior sequential test on the top answer (`stop_now`).
- `naive`: the `stop_*` thresholds on vote share, entropy, VA std and AU entropy.
"""

from __future__ import annotations

from collections import Counter

from tasks.core.knowledge import Knowledge
from tasks.core.params import Sample as SampleParams
from tasks.method import uamc
from tasks.method.evidence import VERIFY_VARIANTS, Stats, measure, mirror, uncertainty_reasons


def schedule(sp: SampleParams) -> list[tuple[int, int]]:
    """The sample indices each round may draw: [0, k0), then `dk` more at a time up to `kmax`."""
    return [(0, min(sp.k0, sp.kmax))] + [(lo, min(lo + sp.dk, sp.kmax)) for lo in range(sp.k0, sp.kmax, sp.dk)]


def stop_now(
    top: int,
    n: int,
    min_samples: int,
    confidence: float,
    futility: float = 0.0,
    futility_after: int = 5,
    consistency: float | None = None,
    min_consistency: float = 0.0,
) -> tuple[bool, str]:
    """The sequential rule for one face's expression votes. Returns (stop?, why)."""
    if n < min_samples:
        return False, "too_few"
    post = uamc.majority_posterior(top, n)
    if post >= confidence:
        if min_consistency > 0 and consistency is not None and consistency < min_consistency:
            return False, "knowledge_conflict"
        return True, "certain"
    if futility > 0 and n >= futility_after and post < futility:
        return True, "hopeless"
    return False, "uncertain"


def stop_lead(
    top: int, second: int, n: int, min_samples: int, lead: int, cap: int, futility: float = 0.0, futility_after: int = 5
) -> tuple[bool, str]:
    """The lead rule: stop once the top answer leads the runner-up by `lead` votes, or once it
    can no longer reach that lead within `cap` answers (hopeless: more samples are wasted).

    Why the lead: when a face's wrong answers mostly name one fixed distractor (systematic
    errors), the likelihood ratio of "the top answer is right, the runner-up is the
    distractor" against the reverse is (a / d) ** (top - second), whatever the other votes.
    So the lead, not the share, is the evidence; a sequential test on it (Wald's SPRT for a
    race between two answers) stops early on clear faces and spends its samples on the
    contested ones. `futility` also stops a face whose top answer is unlikely to be its
    majority answer (`majority_posterior` below it) after `futility_after` answers."""
    if n < min_samples:
        return False, "too_few"
    if top - second >= lead:
        return True, "certain"
    if top - second + (cap - n) < lead:
        return True, "hopeless"
    if futility > 0 and n >= futility_after and uamc.majority_posterior(top, n) < futility:
        return True, "hopeless"
    return False, "uncertain"


def settled(face: dict, samples: list[dict], k: Knowledge, sp: SampleParams) -> bool:
    """Adaptive stopping for a face: its own requests, and (for a labelled face) its blind
    request measured as its calibration mirror, by the same rule as an unlabelled face."""
    samples = [x for x in samples if x["variant"] not in VERIFY_VARIANTS]
    m = mirror(face, samples)
    if m is None:
        return _settled(face, samples, k, sp)
    own = [x for x in samples if x["variant"] != "blind"]
    return (not own or _settled(face, own, k, sp)) and _settled(m[0], m[1], k, sp)


def _settled(face: dict, samples: list[dict], k: Knowledge, sp: SampleParams) -> bool:
    """Adaptive stopping: may this face stop sampling?

    Every request needs at least `stop_min_samples` answers. Then, with `stop_rule: bayes`,
    the generated expression's votes decide by the sequential Beta-posterior rule of
    `stop_now` (optionally also requiring knowledge consistency), and faces with
    no generated expression (it is a prior) fall back to the VA/AU spread thresholds; with
    `stop_rule: naive`, the `stop_*` thresholds on vote share, entropy, VA std and AU
    entropy. Thresholds are `sample.*` (kept apart from `verify`'s so that changing a
    verify threshold never re-runs sampling).
    Faces whose answers all fail also stop: more samples of a failing call cost money and
    the failure is recorded.
    """
    per_req = Counter(x["request_id"] for x in samples if x["status"] == "ok")
    reqs = {x["request_id"]: x["variant"] for x in samples}
    if reqs and not per_req:
        return True
    need = {r: min(sp.stop_min_samples, sp.blind_k) if v == "blind" else sp.stop_min_samples for r, v in reqs.items()}
    if not reqs or any(per_req.get(r, 0) < n for r, n in need.items()):
        return False
    s = measure(face, samples, k)
    if sp.stop_rule in ("bayes", "lead", "evidence"):
        spread = uncertainty_reasons(s, 0.0, float("inf"), sp.stop_max_va_std, sp.stop_max_au_entropy)
        if s.expression_source != "annotator" or not s.n_votes:
            return not spread
        if sp.stop_rule == "evidence":
            return best_posterior(face, samples, k) >= sp.stop_posterior
        if sp.stop_rule == "lead":
            e = s.evidence()
            return stop_lead(
                e.top,
                e.second,
                e.n,
                sp.stop_min_samples,
                sp.stop_lead,
                sp.kmax,
                sp.stop_futility,
                sp.stop_futility_after,
            )[0]
        stop, why = stop_now(
            s.top_votes,
            s.n_votes,
            sp.stop_min_samples,
            sp.stop_confidence,
            sp.stop_futility,
            sp.stop_futility_after,
            s.consistency,
            sp.stop_min_consistency,
        )
        return stop
    return not uncertainty_reasons(
        s, sp.stop_vote_share, sp.stop_max_entropy, sp.stop_max_va_std, sp.stop_max_au_entropy
    )


_PRIOR_MODELS: dict = {}


def _prior_model(k: Knowledge):
    from tasks.method import posterior

    if k.digest not in _PRIOR_MODELS:
        _PRIOR_MODELS[k.digest] = posterior.initial(k)
    return _PRIOR_MODELS[k.digest]


def best_posterior(face: dict, samples: list[dict], k: Knowledge) -> float:
    """The stopping rule's evidence: the probability of the best label under the evidence
    model's knowledge priors (`tasks.method.posterior.initial`), from every answer's stated
    label, AUs and VA. The run's own fit comes later, in verify, once all calibration faces
    are answered; the rule needs only a ranking of how settled each face is."""
    from tasks.method import posterior

    ev = posterior.face_evidence(samples, tuple(k.expressions), None, set(face.get("au_set") or []))
    return float(_prior_model(k).posterior(ev).max())


def wants_verification(
    s: Stats, sp: SampleParams, face: dict | None = None, samples: list[dict] | None = None, k: Knowledge | None = None
) -> bool:
    """Does this face get a verification round? Only a generated expression is verified:
    `all` of them; the `uncertain` ones, whose best label's probability under the evidence
    model's knowledge priors (`best_posterior`: votes, AUs and VA) is below `verify_below`;
    or the `leaders`: faces whose top answer reached the lead rule's `stop_lead` (or, with
    `stop_rule: evidence`, `stop_posterior`)."""
    if sp.verify_round == "none" or s.expression_source != "annotator" or not s.n_votes:
        return False
    if sp.verify_round == "all":
        return True
    if sp.verify_round == "uncertain":
        return best_posterior(face, samples, k) < sp.verify_below
    if sp.stop_rule == "evidence":
        return best_posterior(face, samples, k) >= sp.stop_posterior
    e = s.evidence()
    return e.top - e.second >= sp.stop_lead
