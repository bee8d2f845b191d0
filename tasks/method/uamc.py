"""SV-UAMC's numbers: the sequential stopping rule and the confidence model.

Kept apart from `tasks.method.evidence` (which measures the samples and decides) so that each rule
is a small pure function with its own tests.

Stopping rule ("bayes")
    The face's answers are draws from an unknown distribution over labels. With a uniform
    Beta(1, 1) prior on the share p of the current top answer, after t of n votes name it,
    P(p > 1/2 | votes) = P(Binomial(n + 1, 1/2) <= t)   (the Beta-Binomial identity).
    p > 1/2 means the top answer is the face's majority answer, i.e. what K -> infinity
    majority voting would return; so more samples cannot change the vote. Stop once this
    probability reaches `sample.stop_confidence` (3 of 3: 0.9375; 4 of 4: 0.969; 4 of 5:
    0.891; 6 of 7: 0.965). Optionally also stop hopeless faces early (`stop_futility`), and
    require the top answer to fit the sampled AUs/VA (`stop_min_consistency`).

Confidence
    P(the face's final expression is right) from evidence features (`features`): the vote
    posterior's log-odds, the knowledge consistency of the top answer and its margin over
    the voted alternatives (diagnostic only), the verification round's verdict and the blind
    samples' agreement with known labels. Without a calibration file it is a fixed,
    hand-set logistic combination (`DEFAULT`), honest only in its ranking; with one
    (`verify.calibration`, fit on a labelled, person-disjoint held-out split by
    `benchmarks/quality_study.py`) it is a Platt/logistic fit, optionally followed by an
    isotonic map, and measured for calibration (ECE) on data it was not fit on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FEATURES = (
    "vote_logodds",
    "vote_share",
    "vote_lead",
    "consistency",
    "verified",
    "refuted",
    "prior_agreement",
    "va_spread",
    "au_entropy",
    "evidence_logodds",
)
# features that more agreeing evidence can only raise: their weights must be >= 0, so that
# adding samples that agree never lowers a face's confidence (a tested property)
MONOTONE = ("vote_logodds", "vote_share", "vote_lead", "consistency", "prior_agreement", "evidence_logodds")
# features whose growth means the samples disagree more: their weights must be <= 0
ANTITONE = ("va_spread", "au_entropy")

# hand-set, uncalibrated weights (used when no calibration file is given)
DEFAULT = {
    "intercept": -0.5,
    "coef": {
        "vote_logodds": 0.8,
        "vote_share": 1.0,
        "consistency": 1.0,
        "verified": 0.8,
        "refuted": -1.5,
        "prior_agreement": 2.0,
    },
}


def majority_posterior(top: int, n: int) -> float:
    """P(share of the top answer > 1/2 | `top` of `n` votes), Beta(1, 1) prior."""
    if n <= 0:
        return 0.5
    top = max(0, min(top, n))
    m = n + 1
    return sum(math.comb(m, i) for i in range(top + 1)) / 2**m


def logodds(p: float, clip: float = 8.0) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return max(-clip, min(clip, math.log(p / (1 - p))))


@dataclass(frozen=True)
class Evidence:
    top: int  # votes for the top answer
    n: int  # votes in all
    second: int = 0  # votes for the runner-up
    consistency: float | None = None
    consistency_margin: float | None = None
    verified: bool | None = None  # None: no verification round
    prior_agreement: float | None = None
    va_spread: float | None = None  # the larger of the valence and arousal std across samples
    au_entropy: float | None = None  # mean binary entropy of the sampled AUs
    posterior: float | None = None  # the evidence model's P(label | every signal), `tasks.method.posterior`


def features(
    e: Evidence, use_consistency: bool = True, use_verification: bool = True, use_priors: bool = True
) -> dict[str, float]:
    """Evidence as numbers; a switched-off or missing signal is 0 (its neutral value)."""
    f = {name: 0.0 for name in FEATURES}
    if e.n > 0:
        f["vote_logodds"] = logodds(majority_posterior(e.top, e.n))
        f["vote_share"] = e.top / e.n
        f["vote_lead"] = float(e.top - e.second)
    if use_consistency and e.consistency is not None:
        f["consistency"] = e.consistency - 0.5
    if use_verification and e.verified is not None:
        f["verified"] = 1.0 if e.verified else 0.0
        f["refuted"] = 0.0 if e.verified else 1.0
    if use_priors and e.prior_agreement is not None:
        f["prior_agreement"] = e.prior_agreement - 0.5
    if e.va_spread is not None:
        f["va_spread"] = e.va_spread
    if e.au_entropy is not None:
        f["au_entropy"] = e.au_entropy
    if e.posterior is not None:
        f["evidence_logodds"] = logodds(e.posterior)
    return f


@dataclass(frozen=True)
class Calibrator:
    intercept: float
    coef: dict[str, float]
    iso_x: tuple[float, ...] = ()
    iso_y: tuple[float, ...] = ()
    source: str = "default"
    annotator: str = ""

    def __call__(self, f: dict[str, float]) -> float:
        z = self.intercept + sum(self.coef.get(k, 0.0) * v for k, v in f.items())
        p = 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
        if self.iso_x:
            p = _interp(p, self.iso_x, self.iso_y)
        return min(1.0, max(0.0, p))

    def to_json(self) -> dict:
        return {
            "intercept": self.intercept,
            "coef": self.coef,
            "isotonic": {"x": list(self.iso_x), "y": list(self.iso_y)},
            "source": self.source,
            "annotator": self.annotator,
            "features": list(FEATURES),
        }


def _interp(x: float, xs: tuple[float, ...], ys: tuple[float, ...]) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    lo, hi = 0, len(xs) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid
    if xs[hi] == xs[lo]:
        return ys[hi]
    t = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + t * (ys[hi] - ys[lo])


def _resolve(path: str) -> Path:
    """A calibration file: relative to the working directory, else one shipped with the
    package (`tasks/calibration/...`), so a project outside this repository finds it too."""
    p = Path(path)
    shipped = Path(__file__).resolve().parents[2] / path
    return p if p.exists() or p.is_absolute() or not shipped.exists() else shipped


@lru_cache(maxsize=8)
def calibrator(path: str = "") -> Calibrator:
    """The confidence model: `path` (a JSON written by the quality study) or the default."""
    if not path:
        return Calibrator(DEFAULT["intercept"], dict(DEFAULT["coef"]))
    d = json.loads(_resolve(path).read_text())
    unknown = set(d["coef"]) - set(FEATURES)
    if unknown:
        raise ValueError(f"{path}: unknown features {sorted(unknown)}")
    neg = [k for k in MONOTONE if d["coef"].get(k, 0.0) < 0] + [k for k in ANTITONE if d["coef"].get(k, 0.0) > 0]
    if neg:
        raise ValueError(f"{path}: weights of {neg} have the wrong sign (more agreement may never lower confidence)")
    iso = d.get("isotonic") or {}
    return Calibrator(
        float(d["intercept"]),
        {k: float(v) for k, v in d["coef"].items()},
        tuple(iso.get("x") or ()),
        tuple(iso.get("y") or ()),
        source=path,
        annotator=d.get("annotator", ""),
    )
