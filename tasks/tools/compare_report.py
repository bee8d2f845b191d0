"""`seke compare`'s outputs: the markdown report, the plots and the JSON beside them."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.tools.compare import Version


# ---------------------------------------------------------------- outputs
def _md_sizes(c: dict, la: str, lb: str) -> list[str]:
    A, B = c["a"], c["b"]
    L = ["## Sizes", "", f"| | {la} | {lb} |", "|---|---|---|"]
    L += [f"| {k} | {A[k]} | {B[k]} |" for k in ("faces", "accepted", "rejected", "acceptance_rate", "feid_rows")]
    L += ["", f"Acceptance change: {c['acceptance_change']:+.4f}", "", "Rejection reasons:", ""]
    L += [f"| reason | {la} | {lb} |", "|---|---|---|"]
    for r in sorted(set(A["reasons"]) | set(B["reasons"])):
        L.append(f"| {r} | {A['reasons'].get(r, 0)} | {B['reasons'].get(r, 0)} |")
    L += ["", "## Parameter differences", ""]
    if c["params"]:
        L += ["| param | A | B |", "|---|---|---|"] + [f"| `{p['param']}` | {p['a']} | {p['b']} |" for p in c["params"]]
    else:
        L.append("None: both versions have the same params.yaml.")
    return L


def _md_labels(c: dict) -> list[str]:
    L = ["## Label distribution", "", "| expression | A | B | A share | B share | delta |", "|---|---|---|---|---|---|"]
    L += [
        f"| {d['expression']} | {d['a']} | {d['b']} | {d['a_share']} | {d['b_share']} | {d['delta']:+d} |"
        for d in c["label_distribution"]
    ]
    dv = c["divergence"]
    return L + ["", f"Jensen-Shannon divergence {dv['js_bits']} bits; total variation {dv['total_variation']}."]


def _md_agreement(c: dict) -> list[str]:
    g = c["agreement"]
    L = [
        "## Agreement on shared faces",
        "",
        f"- shared faces: {g['shared_faces']}",
        f"- expression agreement: {g['expression_agreement']}; Cohen's kappa: {g['kappa']} "
        f"(faces whose label did not change: {g['kappa_unchanged']}; all faces labelled by both, accepted or not: "
        f"{g['kappa_all_verdicts']})",
        f"- VA mean absolute difference: valence {g['va_mad']['valence']}, arousal {g['va_mad']['arousal']}",
    ]
    if g["per_au"]:
        L += ["", "| AU | agreement | kappa | A rate | B rate |", "|---|---|---|---|---|"]
        L += [
            f"| {au} | {v['agreement']} | {v['kappa']} | {v['a_rate']} | {v['b_rate']} |"
            for au, v in g["per_au"].items()
        ]
    return L


def _md_changes(c: dict) -> list[str]:
    ch = c["changed"]
    L = [
        "## Changes",
        "",
        f"- faces whose label changed: {ch['n']}",
        f"- faces in A, not in B: {ch['left']['n']} (B's reasons: {ch['left']['reasons'] or '-'})",
        f"- faces in B, not in A: {ch['entered']['n']}",
    ]
    if ch["faces"]:
        L += ["", "| face | A | B |", "|---|---|---|"] + [
            f"| `{x['face_id'][:16]}…` | {x['a']} | {x['b']} |" for x in ch["faces"]
        ]
    return L


def markdown(c: dict) -> str:
    A, B = c["a"], c["b"]
    la = f"{A['name']}" + (f" ({A['rev'][:7]})" if A["rev"] else "")
    lb = f"{B['name']}" + (f" ({B['rev'][:7]})" if B["rev"] else "")
    L = [f"# FEID: {la} vs {lb}", ""] + _md_sizes(c, la, lb)
    for section in (_md_labels(c), _md_agreement(c), _md_changes(c)):
        L += [""] + section
    return "\n".join(L) + "\n"


def plots(c: dict, out: Path, a: Version, b: Version) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    with (out / "label_distribution.csv").open("w") as fh:
        fh.write("expression,version,count\n")
        for d in c["label_distribution"]:
            fh.write(f"{d['expression']},A,{d['a']}\n{d['expression']},B,{d['b']}\n")
    files.append(out / "label_distribution.csv")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return files
    dist = c["label_distribution"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    x = np.arange(len(dist))
    axes[0].bar(x - 0.2, [d["a"] for d in dist], 0.4, label=f"A: {a.name}")
    axes[0].bar(x + 0.2, [d["b"] for d in dist], 0.4, label=f"B: {b.name}")
    axes[0].set_xticks(x, [d["expression"] for d in dist], rotation=45, ha="right")
    axes[0].set_title("accepted faces per expression")
    axes[0].legend()
    reasons = sorted(set(c["a"]["reasons"]) | set(c["b"]["reasons"]))
    y = np.arange(len(reasons))
    axes[1].barh(y - 0.2, [c["a"]["reasons"].get(r, 0) for r in reasons], 0.4, label="A")
    axes[1].barh(y + 0.2, [c["b"]["reasons"].get(r, 0) for r in reasons], 0.4, label="B")
    axes[1].set_yticks(y, reasons)
    axes[1].set_title("rejection reasons")
    axes[1].legend()
    fa = {r["id"]: r for r in a.feid}
    shared = [(fa[r["id"]], r) for r in b.feid if r["id"] in fa]
    for d, m in (("valence", "o"), ("arousal", "^")):
        axes[2].scatter([p[d] for p, _ in shared], [q[d] for _, q in shared], s=10, marker=m, alpha=0.6, label=d)
    axes[2].plot([-1, 1], [-1, 1], "k--", lw=0.8)
    axes[2].set(xlim=(-1, 1), ylim=(-1, 1), xlabel="A", ylabel="B", title="VA of shared faces")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=100)
    plt.close(fig)
    files.append(out / "compare.png")
    return files


def write(c: dict, out: Path, a: Version, b: Version) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(c, indent=2, default=str) + "\n")
    md = markdown(c)
    figs = plots(c, out, a, b)
    if any(f.suffix == ".png" for f in figs):
        md += "\n![comparison](compare.png)\n"
    (out / "compare.md").write_text(md)
    return {"json": str(out / "compare.json"), "markdown": str(out / "compare.md"), "plots": [str(f) for f in figs]}
