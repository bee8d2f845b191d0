"""FEAB outputs: DVC metrics and plots, figures and the markdown report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from tasks.core.knowledge import AUS
from tasks.tools.feab.metrics import NONE


# =============================================================== outputs
def write_outputs(
    result: dict,
    rows: list[dict],
    *,
    metrics: str | Path,
    plots: str | Path,
    report: str | Path,
    title: str,
    meta: dict,
) -> dict[str, str]:
    """DVC metrics (JSON), DVC plots (CSV) + PNG figures, and a markdown report."""
    plots = Path(plots)
    plots.mkdir(parents=True, exist_ok=True)
    m = {k: v for k, v in result.items() if k != "confusion"}
    m["meta"] = {k: v for k, v in meta.items() if not isinstance(v, dict)}  # the rest goes to the report
    Path(metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    # plots: one row per item for DVC's confusion template
    with (plots / "confusion.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["actual", "predicted"])
        for r in rows:
            if r.get("truth_expression"):
                w.writerow([r["truth_expression"], r.get("pred_expression") or NONE])
    f1 = result.get("au", {}).get("f1", {})
    with (plots / "au_f1.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["au", "f1", "lo", "hi"])
        for a in AUS:
            if a in f1 and f1[a]["value"] is not None:
                w.writerow([a, f1[a]["value"], f1[a]["lo"], f1[a]["hi"]])
    with (plots / "va.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dimension", "truth", "predicted"])
        for r in rows:
            for d in ("valence", "arousal"):
                t, pr = r.get(f"truth_{d}"), r.get(f"pred_{d}")
                if t is not None and pr is not None:
                    w.writerow([d, t, pr])
    figs = _figures(result, rows, plots)
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(markdown(result, title, meta, figs, Path(report).parent))
    return {"metrics": str(metrics), "plots": str(plots), "report": str(report)}


def _figures(result: dict, rows: list[dict], d: Path) -> dict[str, Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # figures are optional; the CSV plots are the DVC ones
        return {}
    figs = {}
    c = result["confusion"]
    keep = [i for i, s in enumerate(np.array(c["matrix"]).sum(1)) if s > 0]
    if keep:
        mat = np.array(c["matrix"])[keep]
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(keep) + 2))
        ax.imshow(mat / np.clip(mat.sum(1, keepdims=True), 1, None), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(c["cols"])), c["cols"], rotation=45, ha="right")
        ax.set_yticks(range(len(keep)), [c["rows"][i] for i in keep])
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        fig.tight_layout()
        figs["confusion"] = d / "confusion.png"
        fig.savefig(figs["confusion"], dpi=100)
        plt.close(fig)
    f1 = {a: v["value"] for a, v in result.get("au", {}).get("f1", {}).items() if v["value"] is not None}
    if f1:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(f1) + 1.5))
        ax.barh(list(f1), list(f1.values()))
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1")
        fig.tight_layout()
        figs["au_f1"] = d / "au_f1.png"
        fig.savefig(figs["au_f1"], dpi=100)
        plt.close(fig)
    pts = {
        dim: [
            (r[f"truth_{dim}"], r[f"pred_{dim}"])
            for r in rows
            if r.get(f"truth_{dim}") is not None and r.get(f"pred_{dim}") is not None
        ]
        for dim in ("valence", "arousal")
    }
    if any(pts.values()):
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        for ax, (dim, xy) in zip(axes, pts.items()):
            if xy:
                a = np.array(xy)
                ax.scatter(a[:, 0], a[:, 1], s=8, alpha=0.6)
            ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
            ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel=f"true {dim}", ylabel=f"predicted {dim}")
        fig.tight_layout()
        figs["va"] = d / "va.png"
        fig.savefig(figs["va"], dpi=100)
        plt.close(fig)
    return figs


def _fmt(v: dict | None) -> str:
    if not v or v.get("value") is None:
        return "n/a"
    s = f"{v['value']:.3f}"
    if v.get("lo") is not None and v.get("hi") is not None:
        s += f" [{v['lo']:.3f}, {v['hi']:.3f}]"
    return s


def _md_expression(e: dict, c: dict) -> list[str]:
    L: list[str] = []
    L += [
        "## Expression",
        "",
        f"n = {e.get('n', 0)} (unanswered {e.get('unanswered', 0)}); classes in the ground "
        f"truth: {', '.join(e.get('classes', [])) or 'none'}",
        "",
        "| metric | value [CI] |",
        "|---|---|",
    ]
    L += [f"| {m} | {_fmt(e.get(m))} |" for m in ("accuracy", "macro_f1", "uar")]
    keep = [i for i, row in enumerate(c["matrix"]) if sum(row) > 0]
    if keep:
        L += [
            "",
            "Confusion matrix (rows: ground truth, columns: predicted):",
            "",
            "| | " + " | ".join(c["cols"]) + " |",
            "|---" * (len(c["cols"]) + 1) + "|",
        ]
        L += [f"| **{c['rows'][i]}** | " + " | ".join(str(x) for x in c["matrix"][i]) + " |" for i in keep]
    return L


def _md_aus(au: dict) -> list[str]:
    L: list[str] = []
    L += ["", "## Action units", ""]
    if au.get("annotated"):
        L += [
            f"n = {au.get('n', 0)}; annotated AUs: {', '.join(au['annotated'])}. Only items whose source "
            "annotates an AU count for it (not annotated is never read as absent).",
            "",
            f"Mean F1: {_fmt(au.get('mean_f1'))}",
            "",
            "| AU | F1 [CI] |",
            "|---|---|",
        ]
        L += [f"| {a} | {_fmt(au.get('f1', {}).get(a))} |" for a in au["annotated"]]
    else:
        L += ["No source in this set annotates action units: no AU metrics."]
    return L


def _md_va(result: dict, va: dict) -> list[str]:
    L: list[str] = []
    L += ["", "## Valence / arousal", ""]
    if va.get("n"):
        L += [f"n = {va['n']}", "", "| | CCC | RMSE | Pearson r |", "|---|---|---|---|"]
        L += [
            f"| {d} | " + " | ".join(_fmt(va.get(d, {}).get(m)) for m in ("ccc", "rmse", "pearson_r")) + " |"
            for d in ("valence", "arousal")
        ]
    else:
        L += ["No valence/arousal ground truth in this set: no VA metrics."]
    sel = result.get("selective")
    if sel and sel.get("coverage") is not None:
        L += [
            "",
            f"Selective: verify would accept {sel['coverage']:.3f} of the faces; expression accuracy on "
            f"those {sel['accuracy_accepted'] if sel['accuracy_accepted'] is not None else 'n/a'}.",
        ]
    return L


def _md_per_source(result: dict) -> list[str]:
    L: list[str] = []
    if "per_source" in result:
        L += [
            "",
            "## Per source",
            "",
            "| source | n | accuracy | macro-F1 | UAR | AU mean F1 | valence CCC | arousal CCC |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s, m in result["per_source"].items():

            def g(*ks, m=m):
                return _fmt(_get(m, ks))

            L.append(
                f"| {s} | {m['n']} | {g('expression', 'accuracy')} | {g('expression', 'macro_f1')} | "
                f"{g('expression', 'uar')} | {g('au', 'mean_f1')} | {g('va', 'valence', 'ccc')} | "
                f"{g('va', 'arousal', 'ccc')} |"
            )
    return L


def markdown(result: dict, title: str, meta: dict, figs: dict[str, Path], base: Path) -> str:
    import os

    e, au, va = result.get("expression", {}), result.get("au", {}), result.get("va", {})
    level = int(round(result["bootstrap"]["level"] * 100))
    L = [f"# {title}", ""]
    L += [f"- {k}: `{v}`" for k, v in meta.items() if not isinstance(v, dict)]
    L += [
        f"- items: {result['n']} ({result['subjects']} subjects); bootstrap {result['bootstrap']['resamples']} "
        f"resamples of subjects, {level}% percentile intervals",
        "",
    ]
    L += _md_expression(e, result["confusion"]) + _md_aus(au) + _md_va(result, va) + _md_per_source(result)
    for k, v in meta.items():
        if isinstance(v, dict):
            L += ["", f"## {k}", "", "```json", json.dumps(v, indent=2, sort_keys=True), "```"]
    if figs:
        L += ["", "## Figures", ""]
        L += [f"![{name}]({os.path.relpath(p, base)})" for name, p in figs.items()]
    return "\n".join(L) + "\n"


def _get(d: dict, keys: tuple) -> dict | None:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d
