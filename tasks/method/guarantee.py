"""What backs the labels a run keeps: the expectation guarantee (conformal selection), the
frontier of what can be certified, what more labels would buy, and, when nothing can be
certified, a dataset all the same (`settle`). The high-probability guarantee itself
(Learn-then-Test) and the confidence model are `tasks.method.trust`.

`finish` runs them in order, once the run's unlabelled faces have been scored.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.method.trust import Trust, _chain, _upper, cp_upper, need_faces, walks


def finish(tr: Trust, v, unlabelled_scores: list[float]) -> None:
    """Frontier and label budget from the calibration scores, conformal selection over the
    unlabelled scores, then `settle`."""
    if tr.report.get("mode") == "target_error" and tr.report.get("source") != "earlier_run":
        live = [(s, ok) for (s, ok), g in zip(tr.scores, tr.gated or [False] * len(tr.scores)) if not g]
        sc, ok = [s for s, _ in live], [c for _, c in live]
        tr.report["frontier"] = frontier(sc, ok, v.delta)
        tr.report["label_budget"] = label_budget(sc, ok, v.target_error, v.delta)
        apply_fdr(tr, v, unlabelled_scores)
    settle(tr, v)


def apply_fdr(tr: Trust, v, unlabelled_scores: list[float]) -> None:
    """The expectation guarantee (`select_fdr`) over the run's unlabelled faces, reported
    always and applied when `verify.guarantee` is `fdr`."""
    if v.target_error <= 0 or tr.report.get("mode") != "target_error" or tr.report.get("source") == "earlier_run":
        return
    live = [(s, ok) for (s, ok), g in zip(tr.scores, tr.gated or [False] * len(tr.scores)) if not g]
    sel = select_fdr([s for s, _ in live], [ok for _, ok in live], unlabelled_scores, v.target_error)
    tr.report["fdr"] = sel
    if v.guarantee == "fdr":
        tr.threshold = sel["threshold"]
        tr.report.update(
            guarantee="fdr",
            threshold=sel["threshold"],
            selection=f"conformal selection (Benjamini-Hochberg at {v.target_error}): {sel['selected']} of "
            f"{sel['faces']} generated expressions selected; expected error among them <= {v.target_error}",
        )


# ------------------------------------------------------------------ the expectation guarantee
def conformal_pvalues(cal_scores: list[float], cal_correct: list[bool], scores: list[float]) -> np.ndarray:
    """Conformal p-values of "this face's label is wrong" (Jin & Candes 2023): for a face with
    score s, (1 + #{calibration faces that are wrong and score >= s}) / (n + 1). Ties count
    against the face, so the p-value is conservative."""
    wrong = np.sort(np.asarray(cal_scores, float)[~np.asarray(cal_correct, bool)])
    s = np.asarray(scores, float)
    above = len(wrong) - np.searchsorted(wrong, s, side="left")  # wrong calibration scores >= s
    return (1.0 + above) / (len(cal_scores) + 1.0)


def select_fdr(cal_scores: list[float], cal_correct: list[bool], scores: list[float], alpha: float) -> dict:
    """Conformal selection (Jin & Candes 2023; conformal alignment, Gui et al. 2024): the
    Benjamini-Hochberg procedure at level `alpha` over the conformal p-values of the
    unlabelled faces. Under exchangeability the expected share of wrong labels among the
    selected faces is <= alpha. Returns the score threshold it implies (None: nothing
    selected) and how many faces it selects."""
    m = len(scores)
    if not m or not cal_scores:
        return {"threshold": None, "selected": 0, "faces": m}
    p = conformal_pvalues(cal_scores, cal_correct, scores)
    order = np.argsort(p, kind="stable")
    ok = np.flatnonzero(p[order] <= alpha * np.arange(1, m + 1) / m)
    if not len(ok):
        return {"threshold": None, "selected": 0, "faces": m}
    chosen = order[: ok[-1] + 1]
    t = float(np.asarray(scores, float)[chosen].min())
    # every face scoring >= t has a p-value <= that of the selected face with score t
    return {"threshold": t, "selected": int((np.asarray(scores) >= t).sum()), "faces": m}


# ------------------------------------------------------------------ what can be certified, and what labels buy
def frontier(scores: list[float], correct: list[bool], delta: float, points: int = 10) -> list[dict]:
    """The smallest error that can be certified at each coverage: for the top c of the
    calibration faces by out-of-fold score, the Clopper-Pearson upper bound (level 1 - delta)
    on their error. Each point alone is a valid bound for a coverage fixed in advance; the
    points together are not simultaneous (a run certifies one of them, by Learn-then-Test)."""
    n = len(scores)
    if not n:
        return []
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    wrong = np.cumsum(~np.asarray(correct, bool)[order])
    out = []
    for i in range(1, points + 1):
        c = i / points
        mm = max(1, int(round(c * n)))
        k = int(wrong[mm - 1])
        out.append({"coverage": round(c, 3), "error": round(k / mm, 4), "bound": round(cp_upper(k, mm, delta), 4)})
    return out


def label_budget(
    scores: list[float], correct: list[bool], target_error: float, delta: float, extra: tuple[int, ...] = ()
) -> list[dict]:
    """What more labelled faces would buy: the coverage Learn-then-Test (`select_threshold`, its
    three walks and their stops) would certify with n + N calibration faces, if the run's
    calibration curve stayed as measured on its n faces: at each depth of the ranking, the
    accepted and wrong counts are scaled by (n + N) / n. An estimate, not a promise: the
    curve's own noise at n faces is in it (tested against runs with that many labels)."""
    n = len(scores)
    if not n:
        return []
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    wrong = np.cumsum(~np.asarray(correct, bool)[order]).astype(float)
    depth = np.arange(1, n + 1, dtype=float)
    extra = extra or tuple(sorted({max(50, n // 2), n, 2 * n, 4 * n}))
    out = []
    for N in extra:
        f = (n + N) / n
        m, k = np.round(depth * f), np.round(wrong * f)
        need = need_faces(target_error, delta)
        best = 0.0
        for start, share in walks(n + N, need):
            j = _chain(m, k, _upper(k, m, share * delta), target_error, start)
            if j is not None:
                best = max(best, float(depth[j] / n))
        out.append({"more_labels": int(N), "calibration_faces": int(n + N), "coverage": round(best, 4)})
    return out


# ------------------------------------------------------------------ the guarantee when possible, a dataset always
HOW_TO_CERTIFY = (
    "to get a guarantee, label a blind random sample of this run's faces: `seke review export` draws it, "
    "`seke review import` brings the labels back, then run again"
)


def min_labels(v) -> int:
    """The fewest labelled faces with which any threshold can pass: Learn-then-Test's strictest
    walk needs `need_faces` accepted calibration faces with no error at all; conformal
    selection needs a p-value 1 / (n + 1) <= target_error."""
    if v.target_error <= 0:
        return 0
    if v.guarantee == "fdr":
        return max(1, math.ceil(1 / v.target_error - 1))
    return need_faces(v.target_error, v.delta)


def budget_line(rep: dict) -> str:
    """'label about N more faces ... to certify about X% coverage', from the label budget."""
    for b in rep.get("label_budget") or []:
        if b["coverage"] > 0:
            return (
                f"label about {b['more_labels']} more faces to certify about {b['coverage']:.0%} coverage at the "
                f"target (an estimate from this run's calibration curve)"
            )
    return ""


def settle(tr: Trust, v) -> None:
    """Which threshold applies, and what backs the generated expressions it accepts.
    `verify.guarantee` (pac | fdr) applies when it certifies the target. When it cannot
    (no labelled faces, too few, or a target no threshold meets): with `guarantee_mode:
    auto`, generated expressions are accepted by `verify.min_confidence` and every report
    says there is no guarantee and how to get one; with `required`, none is accepted (the
    verify stage then stops the run with the reason)."""
    rep = tr.report
    if rep.get("source") == "earlier_run":  # its threshold was certified on that run's labelled faces
        tr.guarantee = (rep.get("guarantee") or "pac") if tr.threshold is not None else "none"
        rep["guaranteed"] = tr.guarantee != "none"
        return
    if v.target_error <= 0:
        tr.guarantee = "none"
        rep.update(guaranteed=False, guarantee="none")
        return
    kind = v.guarantee
    t = (rep.get("pac") or {}).get("threshold") if kind == "pac" else (rep.get("fdr") or {}).get("threshold")
    rep["guarantee_mode"] = v.guarantee_mode
    if t is not None:
        tr.threshold, tr.guarantee = t, kind
        rep.update(guaranteed=True, guarantee=kind, threshold=t)
        rep.pop("warning", None)
        return
    why = rep.get("selection", "") if kind == "pac" else f"conformal selection selects none at {v.target_error}"
    more = budget_line(rep)
    tr.guarantee = "none"
    rep.update(guaranteed=False, guarantee="none", how_to_certify=HOW_TO_CERTIFY, label_budget_line=more)
    if v.guarantee_mode == "required":
        tr.threshold = None
        rep.update(threshold=None, warning=f"verify.guarantee_mode is required and the run cannot certify: {why}")
        return
    tr.threshold = v.min_confidence
    rep.update(
        threshold=v.min_confidence,
        warning=f"NO GUARANTEE: {why}. Generated expressions are accepted by verify.min_confidence "
        f"{v.min_confidence} (calibrated confidence, not certified); {HOW_TO_CERTIFY}" + (f"; {more}" if more else ""),
    )


def certifiable_with(v, labelled: int) -> str | None:
    """None when `labelled` faces could certify `verify.target_error`; else why not. Known before
    the first paid call, from the count of labelled faces alone."""
    need = min_labels(v)
    if v.target_error <= 0 or labelled >= need:
        return None
    return (
        f"{labelled} labelled faces: no threshold can certify an error of {v.target_error} ({v.guarantee}, "
        f"delta {v.delta}) with fewer than {need}"
    )


def labelled_faces(p, faces_url: str) -> int:
    """Faces whose expression is known and that get a blind request (a calibration face each)."""
    from tasks.infra import io

    if not (p.prompt.blind and p.verify.use_priors):
        return 0
    return sum(1 for f in io.iter_rows(faces_url, columns=["prior_expression"]) if f["prior_expression"])
