"""FEAB metrics: expression (accuracy, macro-F1, UAR, confusion), AU F1 over annotated items,
VA CCC/RMSE/r, and subject-bootstrap intervals, one code path for FEAB and `seke quality`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from tasks.core.knowledge import AUS, EXPRESSIONS

NONE = "none"  # column of the confusion matrix for "no answer"


# =============================================================== metrics
@dataclass
class Items:
    """Ground truth and predictions, aligned. Missing values: None (expression), NaN (VA),
    `annotated` False (AUs)."""

    ids: list[str]
    sources: list[str]
    subjects: list[str]
    truth: list[str | None]
    pred: list[str | None]
    t_va: np.ndarray  # (n, 2) valence, arousal; NaN = no ground truth
    p_va: np.ndarray  # (n, 2); NaN = no prediction
    t_au: np.ndarray  # (n, 17) bool
    p_au: np.ndarray  # (n, 17) bool
    annotated: np.ndarray  # (n, 17) bool: the item's source annotates this AU
    au_answered: np.ndarray  # (n,) bool: the prediction includes an AU answer

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Items":
        n = len(rows)

        def va(r, pre):
            v, a = r.get(f"{pre}valence"), r.get(f"{pre}arousal")
            ok = v is not None and a is not None and not (isinstance(v, float) and math.isnan(v))
            return [float(v), float(a)] if ok else [math.nan, math.nan]

        t_au, p_au, ann = np.zeros((n, len(AUS)), bool), np.zeros((n, len(AUS)), bool), np.zeros((n, len(AUS)), bool)
        answered = np.zeros(n, bool)
        for i, r in enumerate(rows):
            au_set = set(r.get("au_set") or [])
            if r.get("truth_aus") is not None:
                for j, a in enumerate(AUS):
                    ann[i, j] = a in au_set
                    t_au[i, j] = a in set(r["truth_aus"])
            if r.get("pred_aus") is not None:
                answered[i] = True
                p_au[i] = [a in set(r["pred_aus"]) for a in AUS]
        return cls(
            ids=[r["id"] for r in rows],
            sources=[r.get("source") or "" for r in rows],
            subjects=[r.get("subject") or r["id"] for r in rows],
            truth=[r.get("truth_expression") or None for r in rows],
            pred=[r.get("pred_expression") or None for r in rows],
            t_va=np.array([va(r, "truth_") for r in rows], float).reshape(n, 2),
            p_va=np.array([va(r, "pred_") for r in rows], float).reshape(n, 2),
            t_au=t_au,
            p_au=p_au,
            annotated=ann,
            au_answered=answered,
        )


def confusion(
    truth: list[str | None], pred: list[str | None], labels: Iterable[str] = EXPRESSIONS
) -> tuple[np.ndarray, list[str], list[str]]:
    """Rows: ground truth classes; columns: predicted classes + `none`. Items with no truth are skipped."""
    rows = list(labels)
    cols = rows + [NONE]
    ci = {c: i for i, c in enumerate(cols)}
    cm = np.zeros((len(rows), len(cols)), int)
    for t, p in zip(truth, pred):
        if t is None:
            continue
        cm[ci[t], ci.get(p, ci[NONE]) if p else ci[NONE]] += 1
    return cm, rows, cols


def expression_scores(cm: np.ndarray) -> dict[str, float]:
    """accuracy, macro-F1 and UAR from a confusion matrix (rows truth, the last column `none`);
    F1 and recall are averaged over the classes present in the ground truth."""
    n = cm.sum()
    if n == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan, "uar": math.nan}
    k = cm.shape[0]
    tp = np.diag(cm[:, :k]).astype(float)
    support = cm.sum(1)
    predicted = cm[:, :k].sum(0)
    present = support > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=(support + predicted) > 0)
    rec = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    return {"accuracy": float(tp.sum() / n), "macro_f1": float(f1[present].mean()), "uar": float(rec[present].mean())}


def macro_f1(truth: list[str | None], pred: list[str | None]) -> float:
    """Macro-F1 over the classes present in the ground truth (for scripts with label lists)."""
    return expression_scores(confusion(truth, pred)[0])["macro_f1"]


def au_f1(t: np.ndarray, p: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """F1 per AU over annotated items only; NaN where an AU has no annotated item or no positive at all."""
    tp = (t & p & annotated).sum(0).astype(float)
    fp = (~t & p & annotated).sum(0)
    fn = (t & ~p & annotated).sum(0)
    den = 2 * tp + fp + fn
    f = np.full(t.shape[1], math.nan)
    ok = (annotated.sum(0) > 0) & (den > 0)
    f[ok] = 2 * tp[ok] / den[ok]
    return f


def ccc(t: np.ndarray, p: np.ndarray) -> float:
    """Lin's concordance correlation coefficient (population moments)."""
    if len(t) < 2:
        return math.nan
    mt, mp = t.mean(), p.mean()
    vt, vp = t.var(), p.var()
    cov = ((t - mt) * (p - mp)).mean()
    den = vt + vp + (mt - mp) ** 2
    return float(2 * cov / den) if den > 0 else math.nan


def pearson(t: np.ndarray, p: np.ndarray) -> float:
    if len(t) < 2 or t.std() == 0 or p.std() == 0:
        return math.nan
    return float(np.corrcoef(t, p)[0, 1])


def rmse(t: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((t - p) ** 2))) if len(t) else math.nan


def _scalars(it: Items, idx: np.ndarray, codes: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Every scalar metric on the items `idx` (possibly with repeats, for the bootstrap)."""
    t_code, p_code = codes
    k = len(EXPRESSIONS)
    sel = idx[t_code[idx] >= 0]
    cm = np.bincount(t_code[sel] * (k + 1) + p_code[sel], minlength=k * (k + 1)).reshape(k, k + 1)
    out = {f"expression.{m}": v for m, v in expression_scores(cm).items()} if len(sel) else {}
    # an item whose answer has no AUs predicted none: it is not excused from the AUs it is annotated for
    ann = it.annotated[idx]
    if ann.any():
        f = au_f1(it.t_au[idx], it.p_au[idx], ann)
        for a, v in zip(AUS, f):
            if it.annotated[:, AUS.index(a)].any():
                out[f"au.f1.{a}"] = float(v)
        annotated_aus = [j for j in range(len(AUS)) if it.annotated[:, j].any() and not math.isnan(f[j])]
        out["au.mean_f1"] = float(np.mean(f[annotated_aus])) if annotated_aus else math.nan
    for d, name in enumerate(("valence", "arousal")):
        ok = idx[~np.isnan(it.t_va[idx, d]) & ~np.isnan(it.p_va[idx, d])]
        if len(ok):
            t, p = it.t_va[ok, d], it.p_va[ok, d]
            out[f"va.{name}.ccc"], out[f"va.{name}.rmse"], out[f"va.{name}.pearson_r"] = (
                ccc(t, p),
                rmse(t, p),
                pearson(t, p),
            )
    return out


def _codes(it: Items) -> tuple[np.ndarray, np.ndarray]:
    ci = {c: i for i, c in enumerate(EXPRESSIONS)}
    t = np.array([ci[x] if x in ci else -1 for x in it.truth], int)
    p = np.array([ci.get(x, len(EXPRESSIONS)) if x else len(EXPRESSIONS) for x in it.pred], int)
    return t, p


def bootstrap(it: Items, n_boot: int, level: float, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile interval of every scalar metric, resampling subjects with replacement."""
    if n_boot <= 0 or not it.ids:
        return {}
    codes = _codes(it)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(it.subjects):
        groups.setdefault(s, []).append(i)
    clusters = [np.array(v) for v in groups.values()]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(clusters), len(clusters))
        idx = np.concatenate([clusters[j] for j in pick])
        for key, v in _scalars(it, idx, codes).items():
            draws.setdefault(key, []).append(v)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for key, vs in draws.items():
        a = np.array(vs, float)
        a = a[~np.isnan(a)]
        out[key] = (float(np.percentile(a, lo_q)), float(np.percentile(a, hi_q))) if len(a) else (math.nan, math.nan)
    return out


def _nest(flat: dict[str, dict]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def _r(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def evaluate(rows: list[dict], n_boot: int = 1000, level: float = 0.95, seed: int = 0, by_source: bool = True) -> dict:
    """All FEAB metrics of aligned ground truth / prediction rows (see `Items.from_rows` for the
    keys). Each scalar is {"value", "lo", "hi"}; plus counts, the confusion matrix and, per
    source, the same metrics without intervals."""
    it = Items.from_rows(rows)
    codes = _codes(it)
    point = _scalars(it, np.arange(len(it.ids)), codes)
    ci = bootstrap(it, n_boot, level, seed)
    flat = {
        k: {"value": _r(v), "lo": _r(ci.get(k, (math.nan,))[0]), "hi": _r(ci.get(k, (math.nan, math.nan))[1])}
        for k, v in point.items()
    }
    out = _nest(flat)
    cm, rlabels, clabels = confusion(it.truth, it.pred)
    n_expr = int(sum(t is not None for t in it.truth))
    out.setdefault("expression", {}).update(
        n=n_expr,
        unanswered=int(sum(t is not None and p is None for t, p in zip(it.truth, it.pred))),
        classes=[c for c, s in zip(rlabels, cm.sum(1)) if s > 0],
    )
    out["confusion"] = {"rows": rlabels, "cols": clabels, "matrix": cm.tolist()}
    aus_annotated = [a for j, a in enumerate(AUS) if it.annotated[:, j].any()]
    out.setdefault("au", {}).update(
        n=int(it.annotated.any(1).sum()),
        unanswered=int((it.annotated.any(1) & ~it.au_answered).sum()),
        annotated=aus_annotated,
    )
    n_va = int((~np.isnan(it.t_va[:, 0]) & ~np.isnan(it.p_va[:, 0])).sum())
    out.setdefault("va", {}).update(n=n_va)
    out["n"] = len(it.ids)
    out["subjects"] = len(set(it.subjects))
    out["bootstrap"] = {"resamples": n_boot, "level": level, "unit": "subject", "seed": seed}
    if by_source and len(set(it.sources)) > 1:
        out["per_source"] = {}
        for s in sorted(set(it.sources)):
            sub = [r for r, src in zip(rows, it.sources) if src == s]
            m = evaluate(sub, 0, level, seed, by_source=False)
            aus = sorted({a for r in sub for a in (r.get("au_set") or [])})
            if aus:
                f = [m["au"]["f1"].get(a, {}).get("value") for a in aus]
                f = [x for x in f if x is not None]
                m["au"]["source_mean_f1"] = _r(float(np.mean(f))) if f else None
            out["per_source"][s] = {k: v for k, v in m.items() if k not in ("confusion", "bootstrap")}
    return out
