"""Trust: a confidence fitted on the run's own labelled faces, and a threshold with a guaranteed error rate.

Calibration faces
    A face with a known expression (a source label, or a label a person gave in review) has
    its blind request sampled exactly like an unlabelled face's request: the same k0/dk/kmax,
    stopping rule and verification round (`tasks.method.sampling`). `tasks.method.evidence.mirror` measures
    those blind samples as if the face were unlabelled, so its evidence has the distribution
    of an unlabelled face's evidence, and its known label says whether the generated answer
    was right. Each such face is one `CalRow`.

Confidence model (`fit`)
    A Platt (logistic) fit over the evidence features of `tasks.method.uamc` (scikit-learn), with
    the weights of the monotone features kept >= 0. Cross-fitted by subject: every
    calibration face's out-of-fold score comes from a model that saw none of its person's
    faces. The model fitted on all calibration faces scores the unlabelled ones.

Threshold with a guarantee (`select_threshold`)
    Learn-then-Test (Angelopoulos et al., 2021) with fixed-sequence testing over a fixed grid
    of thresholds, strict to lenient. At each threshold the error among accepted calibration
    faces gets a Clopper-Pearson upper bound at level 1 - delta; the walk goes on while the
    bound is <= target_error and stops at the first failure. Three such walks start at
    different depths, with delta split between them; each start depends on the scores
    only, never on whether a label was right. The most lenient threshold that passed
    is used; if none passes, no generated expression is accepted. Under exchangeability of
    calibration and unlabelled faces, P(error among accepted unlabelled faces <= target_error) >= 1 - delta.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tasks.method import uamc

# features of the self-fitted model: the ones an unlabelled face and a calibration face have alike
# (prior_agreement needs a known label, so it would differ between the two)
SELF_FEATURES = tuple(f for f in uamc.FEATURES if f != "prior_agreement")
GRID = tuple(round(1 - i / 400, 4) for i in range(401))  # 1.0, 0.9975, ..., 0.0


@dataclass(frozen=True)
class CalRow:
    subject: str
    features: dict[str, float]
    correct: bool
    gated: bool = False  # a hard gate (knowledge conflict, ...) would reject it whatever its score
    evidence: Any = None  # its `tasks.method.posterior.FaceEvidence` (for the evidence model)
    truth: int = -1  # index of its known expression
    label: int = -1  # index of its votes' answer


@dataclass(frozen=True)
class Selection:
    threshold: float | None  # None: no threshold meets the target; accept no generated expression
    bound: float | None  # Clopper-Pearson upper bound on the error at the chosen threshold
    n_accepted: int  # calibration faces accepted at the threshold
    errors: int  # wrong ones among them
    coverage: float  # share of calibration faces accepted (the expected coverage)
    n: int
    reason: str


def cp_upper(k: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson upper limit at level 1 - delta for k errors in n trials."""
    return float(_upper(np.array([k]), np.array([n]), delta)[0])


def _counts(s: np.ndarray, ok: np.ndarray, live: np.ndarray, grid: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, wrong among them) at each threshold of `grid`."""
    order = np.argsort(-s[live], kind="stable")
    sd, wrong = s[live][order], np.cumsum(~ok[live][order])
    m = np.searchsorted(-sd, -np.asarray(grid), side="right")  # faces with s >= t
    k = np.where(m > 0, wrong[np.maximum(m - 1, 0)] if len(wrong) else 0, 0)
    return m, k


def _upper(k: np.ndarray, m: np.ndarray, delta: float) -> np.ndarray:
    from scipy.stats import beta

    with np.errstate(all="ignore"):
        u = beta.ppf(1 - delta, k + 1, np.maximum(m - k, 1))
    return np.where((m <= 0) | (k >= m), 1.0, u)


def _chain(m: np.ndarray, k: np.ndarray, u: np.ndarray, target_error: float, start: int) -> int | None:
    """Fixed-sequence testing down the grid from the first threshold accepting >= `start`
    faces; the index of the last threshold that passed."""
    best = None
    for j in np.flatnonzero(m >= start):
        if u[j] > target_error:
            break
        best = int(j)
    return best


# (where a walk starts, its share of delta). Chosen on simulator seeds 1, 4, 5 and 11-34 at 30%
# labelled (docs/method.md, "How the walks were chosen"): the walk from half the calibration
# faces is where a run certifies the coverage the method aims at, so it gets most of delta.
WALKS = (("need", 0.2), ("quarter", 0.1), ("half", 0.7))


def need_faces(target_error: float, delta: float, table=WALKS) -> int:
    """The fewest accepted calibration faces that can pass with no error at all, on the
    strictest walk (its share of delta)."""
    if not 0 < target_error < 1:
        return 1
    return math.ceil(math.log(table[0][1] * delta) / math.log(1 - target_error))


def walks(n: int, need: int, table=WALKS) -> list[tuple[int, float]]:
    """Where each walk starts (the depth: calibration faces first accepted) and its share of
    delta. One walk from the strictest thresholds stops at its first unlucky step (a few
    faces, one error), so three walks run: from where the threshold first accepts `need`
    faces, a quarter and a half of the `n`. Each start depends on the scores only, never on
    whether a label was right."""
    depth = {"need": need, "quarter": max(need, n // 4), "half": max(need, n // 2)}
    return [(depth[name], share) for name, share in table]


def select_threshold(
    scores: list[float],
    correct: list[bool],
    target_error: float,
    delta: float,
    gated: list[bool] | None = None,
    grid: tuple[float, ...] = GRID,
    table=WALKS,
) -> Selection:
    """Learn-then-Test over `grid` (strict to lenient) with fixed-sequence testing, along the
    walks of `walks` (a union bound over them keeps the guarantee). The most lenient
    threshold that any walk passes is chosen. `table`: where the walks start and their
    shares of delta (`WALKS`; benchmarks/ltt_walks.py compares others)."""
    n = len(scores)
    gated = gated or [False] * n
    s = np.asarray(scores, float)
    ok = np.asarray(correct, bool)
    live = ~np.asarray(gated, bool)
    n_live = int(live.sum())
    need = need_faces(target_error, delta, table)
    m, k = _counts(s, ok, live, grid)
    found = []
    for start, share in walks(n_live, need, table):
        u = _upper(k, m, share * delta)
        j = _chain(m, k, u, target_error, start)
        if j is not None:
            found.append((j, float(u[j])))
    if not found:
        why = (
            f"no threshold keeps the error of accepted generated labels <= {target_error} with probability "
            f">= {1 - delta}: {n} calibration faces"
            + (f" (at least {need} must be accepted and nearly all right)" if n < 3 * need else "")
        )
        return Selection(None, None, 0, 0, 0.0, n, why)
    j, u = max(found)
    t, m, k = grid[j], int(m[j]), int(k[j])
    return Selection(
        t,
        u,
        m,
        k,
        m / n if n else 0.0,
        n,
        f"threshold {t:.4f}: {k} wrong of {m} accepted calibration faces, error <= {u:.4f} "
        f"with probability >= {1 - delta}",
    )


def _matrix(rows: list[CalRow], names: tuple[str, ...]) -> np.ndarray:
    return np.array([[r.features.get(f, 0.0) for f in names] for r in rows], float).reshape(len(rows), len(names))


def fit_platt(
    X: np.ndarray, y: np.ndarray, names: tuple[str, ...] = uamc.FEATURES, source: str = "platt"
) -> uamc.Calibrator:
    """Logistic fit over the evidence features; while a feature's weight has the wrong sign
    (negative for agreement, positive for spread), the worst one is dropped and the model
    refit, so more agreement never lowers confidence."""
    from sklearn.linear_model import LogisticRegression

    keep = [i for i in range(len(names)) if len(X) and X[:, i].std() > 0]
    ev = names.index("evidence_logodds") if "evidence_logodds" in names else -1
    if len(set(y.tolist())) < 2 and ev in keep:
        # every calibration face right (or wrong): nothing to fit a slope on, so the evidence
        # model's own posterior is the confidence (it still ranks; the threshold is certified on it)
        return uamc.Calibrator(0.0, {"evidence_logodds": 1.0}, source=source)
    while True:
        if len(set(y.tolist())) < 2 or not keep:
            p = float(np.clip(y.mean() if len(y) else 0.5, 1e-3, 1 - 1e-3))
            return uamc.Calibrator(math.log(p / (1 - p)), {}, source=source)
        m = LogisticRegression(C=1.0, max_iter=2000).fit(X[:, keep], y)
        coef = dict(zip([names[i] for i in keep], m.coef_[0]))
        sign = {**{f: 1 for f in uamc.MONOTONE}, **{f: -1 for f in uamc.ANTITONE}}
        bad = [f for f, w in coef.items() if sign.get(f, 0) * w < 0]
        if not bad:
            return uamc.Calibrator(float(m.intercept_[0]), {k: float(v) for k, v in coef.items()}, source=source)
        # drop only the worst one: collinear vote features often share one signal
        worst = min(bad, key=lambda f: sign[f] * coef[f])
        keep = [i for i in keep if names[i] != worst]


def folds_by_subject(subjects: list[str], k: int, seed: int) -> list[int]:
    people = sorted(set(subjects))
    random.Random(seed).shuffle(people)
    fold = {p: i % k for i, p in enumerate(people)}
    return [fold[s] for s in subjects]


def crossfit(
    rows: list[CalRow], k: int, seed: int, names: tuple[str, ...] = SELF_FEATURES
) -> tuple[uamc.Calibrator, list[float]]:
    """(model fitted on all rows, out-of-fold score of every row), folds split by subject."""
    X = _matrix(rows, names)
    y = np.array([r.correct for r in rows], float)
    fold = folds_by_subject([r.subject for r in rows], max(2, min(k, len({r.subject for r in rows}))), seed)
    oof = [0.0] * len(rows)
    for f in sorted(set(fold)):
        tr = [i for i, g in enumerate(fold) if g != f]
        model = fit_platt(X[tr], y[tr], names)
        for i, g in enumerate(fold):
            if g == f:
                oof[i] = model(rows[i].features)
    return fit_platt(X, y, names, source="self"), oof


def ece(conf: list[float], correct: list[bool], bins: int = 10) -> float:
    """Expected calibration error over `bins` equal-mass bins (tied confidences share a bin)."""
    if not conf:
        return float("nan")
    c = np.asarray(conf, float)
    y = np.asarray(correct, float)
    edges = np.unique(np.quantile(c, np.linspace(0, 1, bins + 1)[1:-1]))
    idx = np.searchsorted(edges, c, side="right")
    return float(sum(abs(c[idx == b].mean() - y[idx == b].mean()) * (idx == b).sum() for b in np.unique(idx)) / len(c))


@dataclass
class Trust:
    """What verify applies to every generated expression, and the report it writes."""

    calibrator: uamc.Calibrator
    threshold: float | None  # None: no generated expression is accepted
    report: dict = field(default_factory=dict)
    scores: list[tuple[float, bool]] = field(default_factory=list)  # (out-of-fold confidence, right) per labelled face
    evidence: Any = None  # the fitted `tasks.method.posterior.EvidenceModel`, or None: votes' label, Platt features
    gated: list[bool] = field(default_factory=list)  # per labelled face, as `scores`: a hard gate holds
    guarantee: str = "none"  # what backs an accepted generated expression: pac | fdr | none (see `settle`)

    def accepts(self, confidence: float) -> bool:
        return self.threshold is not None and confidence >= self.threshold


def load_saved(path: str, run: dict) -> "Trust | None":
    """The trust an earlier run wrote (`<paths.verify>/trust.json`), if it exists and was fitted
    for the same annotator, model and prompt version as this run."""
    import json

    from tasks.infra import io

    try:
        d = json.loads(io.read_bytes(path))
    except (OSError, ValueError):
        return None
    rep = d.get("report", {})
    if any(run.get(k) and rep.get(k) != run[k] for k in ("annotator", "model", "prompt_version")):
        return None
    m = d["model"]
    iso = m.get("isotonic") or {}
    cal = uamc.Calibrator(
        float(m["intercept"]),
        {k: float(v) for k, v in m["coef"].items()},
        tuple(iso.get("x") or ()),
        tuple(iso.get("y") or ()),
        source=path,
        annotator=m.get("annotator", ""),
    )
    ev = None
    if d.get("evidence_model"):
        from tasks.method import posterior

        try:
            ev = posterior.EvidenceModel.from_state(d["evidence_model"])
        except (KeyError, TypeError, ValueError):  # written by an older evidence model: fit anew
            return None
    return Trust(cal, d.get("threshold"), dict(rep), evidence=ev)


def _fallback(rows: list[CalRow], v, annotator: str) -> tuple[uamc.Calibrator, list[float], dict]:
    """`verify.calibration` (if fitted for this annotator) or the built-in weights, and why."""
    n = len(rows)
    cal = uamc.calibrator(v.calibration) if v.calibration else uamc.calibrator("")
    note = ""
    if v.calibration and cal.annotator and annotator and cal.annotator != annotator:
        note = f"{v.calibration} was fitted for annotator {cal.annotator!r}; "
        cal = uamc.calibrator("")
    if not v.self_calibrate:
        why = "self-calibration is off (verify.self_calibrate)"
    elif n < v.min_calibration_faces:
        why = f"only {n} labelled faces (verify.min_calibration_faces = {v.min_calibration_faces})"
    else:
        why = "all labelled faces were answered alike (right or wrong)"
    using = cal.source if cal.source != "default" else "the built-in, uncalibrated weights"
    rep = {"source": "file" if cal.source != "default" else "default", "why": f"{note}{why}; using {using}"}
    return cal, [cal(r.features) for r in rows], rep


def _threshold(rows: list[CalRow], scores: list[float], v, rep: dict) -> float | None:
    """The threshold for `verify.target_error` (Learn-then-Test), or `verify.min_confidence`."""
    if v.target_error <= 0:
        rep.update(
            mode="min_confidence",
            threshold=v.min_confidence,
            selection="verify.min_confidence (a plain threshold: no error guarantee)",
        )
        return v.min_confidence
    sel = select_threshold(scores, [r.correct for r in rows], v.target_error, v.delta, [r.gated for r in rows])
    rep["pac"] = {"threshold": sel.threshold, "bound": None if sel.bound is None else round(sel.bound, 4)}
    rep.update(
        guarantee="pac",
        mode="target_error",
        target_error=v.target_error,
        delta=v.delta,
        threshold=sel.threshold,
        bound=None if sel.bound is None else round(sel.bound, 4),
        accepted_calibration=sel.n_accepted,
        errors_calibration=sel.errors,
        expected_coverage=round(sel.coverage, 4),
        selection=sel.reason,
    )
    return sel.threshold


def build(rows: list[CalRow], v, annotator: str = "", run: dict | None = None) -> Trust:
    """The run's confidence model and threshold from its calibration faces (`verify` params
    `v`). With too few of them: the trust of an earlier run of the same annotator, model and
    prompt (`verify.trust_from`), else `verify.calibration`, else the built-in weights."""
    n = len(rows)
    rep: dict = {
        "calibration_faces": n,
        "subjects": len({r.subject for r in rows}),
        "calibration_accuracy": round(float(np.mean([r.correct for r in rows])), 4) if rows else None,
    }
    enough = v.self_calibrate and n >= v.min_calibration_faces and len({r.correct for r in rows}) == 2
    saved = load_saved(v.trust_from, {"annotator": annotator, **(run or {})}) if not enough and v.trust_from else None
    if saved is not None:
        saved.report.update(
            rep,
            source="earlier_run",
            why=f"only {n} labelled faces in this run; using the "
            f"confidence model and threshold of {v.trust_from} (same annotator, model and prompt)",
        )
        saved.report["confidence_model"] = saved.calibrator.to_json()
        return saved
    model = None
    if enough and getattr(v, "evidence_model", False) and all(r.evidence is not None for r in rows):
        model, rows = _crossfit_evidence(rows, v)
        rep["evidence_model"] = model.to_json()
        rep["evidence_best_guess_accuracy_oof"] = round(float(np.mean([r.correct for r in rows])), 4)
    if enough:
        cal, scores = crossfit(rows, v.calibration_folds, v.calibration_seed)
        cal = uamc.Calibrator(cal.intercept, cal.coef, source="self", annotator=annotator)
        rep.update(
            source="self",
            why=f"fitted on this run's {n} labelled faces (cross-fitted by subject, {v.calibration_folds} folds)",
        )
    else:
        cal, scores, more = _fallback(rows, v, annotator)
        rep.update(more)
    if rows:
        rep.update(oof_ece=round(ece(scores, [r.correct for r in rows]), 4), ece_bins=10)
    rep["confidence_model"] = cal.to_json()
    pairs = [(float(s), bool(r.correct)) for s, r in zip(scores, rows)]
    return Trust(cal, _threshold(rows, scores, v, rep), rep, pairs, evidence=model, gated=[r.gated for r in rows])


def _crossfit_evidence(rows: list[CalRow], v) -> tuple[Any, list[CalRow]]:
    """The evidence model fitted on all calibration faces, and the rows re-scored out of fold:
    each face's label (the posterior's best guess), whether it is right, and its
    `evidence_logodds`, from a model fitted on the other folds' people (the same folds as the
    Platt fit, so no calibration face is scored by a model that saw its person)."""
    from tasks.core import knowledge
    from tasks.method import posterior

    k = knowledge.load()
    sig = tuple(v.evidence_signals)
    data = [(r.evidence, r.truth) for r in rows]
    subjects = [r.subject for r in rows]
    fold = folds_by_subject(subjects, max(2, min(v.calibration_folds, len(set(subjects)))), v.calibration_seed)
    out = list(rows)
    for g in sorted(set(fold)):
        m = posterior.fit([d for d, h in zip(data, fold) if h != g], k, sig)
        for i, h in enumerate(fold):
            if h == g:
                post = m.posterior(rows[i].evidence)
                best = int(post.argmax())
                f = dict(rows[i].features, evidence_logodds=uamc.logodds(float(post[best])))
                out[i] = replace(rows[i], features=f, correct=best == rows[i].truth, label=best)
    return posterior.fit(data, k, sig), out
