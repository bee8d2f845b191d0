"""`seke report`: a static HTML report of one FEID version, and `seke compare --html`: two
versions side by side.

The page (`reports/feid.html`) and the PNGs behind it (`reports/feid_files/`) need no network
at view time. It shows the label and AU distributions, a VA density plot, the confidence
histogram, a reliability diagram and the risk-coverage curve (from the run's calibration
faces, `<paths.verify>/trust.json`, when it has any), and a gallery of accepted faces per
class and rejected faces per reason, with their labels, confidence and reasons. A version is
read through `tasks.tools.compare.Store`, so any git rev or DVC experiment works as well as
the workspace.
"""

from __future__ import annotations

import html
import io
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.core.knowledge import AUS, EXPRESSIONS
from tasks.tools.compare import Store, VersionError, resolve

LIGHT = ["id", "expression", "expression_status", "expression_confidence", "valence", "arousal", "aus", "au_status"]
LIGHT += ["confidence", "description_source"]
VERDICT = ["face_id", "reasons", "confidence", "expression", "vote_share", "n_samples"]


@dataclass
class Version:
    """What the report shows of one FEID version."""

    name: str
    feid: list[dict]
    rejects: list[dict]
    scores: list[tuple[float, bool]]
    threshold: float | None
    calibration: dict
    paths: dict
    store: Store
    figures: dict[str, str] = field(default_factory=dict)  # name -> path relative to the page
    gallery: list[dict] = field(default_factory=list)


def load(repo: str, name: str) -> Version:
    """A version (`workspace`, a git rev, tag or DVC experiment) of the project at `repo`."""
    from tasks.core.yamlio import load_yaml

    st = Store(repo, resolve(repo, name))
    params = load_yaml(st.read("params.yaml")) or {}
    paths = {"feid": "data/feid", "crop": "data/crop", "verify": "data/verify", **params.get("paths", {})}
    table = st.feid(paths["feid"])
    feid = table.select([c for c in LIGHT if c in table.column_names]).to_pylist()
    rejects = st.rejects(paths["feid"], VERDICT)
    try:
        trust = json.loads(st.read(f"{paths['verify']}/trust.json"))
    except VersionError:
        trust = {}
    scores = [(float(s), bool(c)) for s, c in trust.get("calibration_scores", [])]
    return Version(name, feid, rejects, scores, trust.get("threshold"), trust.get("report", {}), paths, st)


# ---------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, counts: dict[str, int], title: str, xlabel: str) -> None:
    names = list(counts)
    ax.barh(names[::-1], [counts[n] for n in names][::-1], color="#4c72b0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def reliability(scores: list[tuple[float, bool]], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, n) per equal-mass bin of the calibration faces."""
    if not scores:
        return []
    s = sorted(scores)
    out = []
    for part in np.array_split(np.arange(len(s)), min(bins, len(s))):
        conf = [s[i][0] for i in part]
        ok = [s[i][1] for i in part]
        out.append((float(np.mean(conf)), float(np.mean(ok)), len(part)))
    return out


def risk_coverage(scores: list[tuple[float, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and error among the accepted, accepting the calibration faces from the most confident down."""
    if not scores:
        return np.array([]), np.array([])
    s = sorted(scores, key=lambda x: -x[0])
    wrong = np.cumsum([0 if ok else 1 for _, ok in s])
    n = np.arange(1, len(s) + 1)
    return n / len(s), wrong / n


def _figures(v: Version, d: Path, rel: str) -> dict[str, str]:
    plt = _plt()
    d.mkdir(parents=True, exist_ok=True)
    figs: dict[str, str] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(d / f"{name}.png", dpi=90)
        plt.close(fig)
        figs[name] = f"{rel}/{name}.png"

    fig, ax = plt.subplots(figsize=(5, 3.2))
    c = Counter(r["expression"] for r in v.feid)
    _bars(ax, {e: c.get(e, 0) for e in EXPRESSIONS}, "Expressions in FEID", "faces")
    save(fig, "label_distribution")

    fig, ax = plt.subplots(figsize=(5, 4))
    kept = [r for r in v.feid if r.get("au_status") in ("prior", "accepted", "partial")]
    au = Counter(a for r in kept for a in (r.get("aus") or []))
    _bars(ax, {a: au.get(a, 0) for a in AUS}, f"Active AUs ({len(kept)} faces with AUs)", "faces")
    save(fig, "au_distribution")

    fig, ax = plt.subplots(figsize=(4.2, 4))
    va = np.array([(r["valence"], r["arousal"]) for r in v.feid if r.get("valence") is not None])
    if len(va):
        ax.hist2d(va[:, 0], va[:, 1], bins=20, range=[[-1, 1], [-1, 1]], cmap="viridis")
    ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel="valence", ylabel="arousal", title=f"VA density ({len(va)} faces)")
    save(fig, "va_density")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    gen = [r["expression_confidence"] for r in v.feid if r.get("expression_status") == "accepted"]
    ax.hist([r["confidence"] for r in v.feid], bins=20, range=(0, 1), alpha=0.6, label="face confidence")
    ax.hist(gen, bins=20, range=(0, 1), alpha=0.6, label="generated expression")
    ax.set(xlabel="confidence", ylabel="faces", title="Confidence")
    ax.legend(loc="upper left")
    save(fig, "confidence")
    if v.scores:
        _calibration_figures(v, save, plt)
    return figs


def _calibration_figures(v: Version, save, plt) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    pts = reliability(v.scores)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (out of fold)", ylabel="accuracy")
    ax.set_title(f"Reliability ({len(v.scores)} calibration faces)")
    save(fig, "reliability")
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    cov, risk = risk_coverage(v.scores)
    ax.plot(cov, risk, label="error (calibration faces)")
    c = v.calibration
    fr = c.get("frontier") or []
    if fr:  # the smallest error certifiable at each coverage (Clopper-Pearson)
        ax.plot([p["coverage"] for p in fr], [p["bound"] for p in fr], "o:", color="grey", label="certifiable bound")
    if c.get("target_error"):
        ax.axhline(c["target_error"], ls="-.", color="green", label=f"target {c['target_error']}")
    if v.threshold is not None:
        at = sum(s >= v.threshold for s, _ in v.scores) / len(v.scores)
        kind = c.get("guarantee") if c.get("guaranteed") else "no guarantee"
        ax.axvline(at, ls="--", color="red", label=f"threshold {v.threshold:.2f} ({kind})")
    ax.legend(fontsize=7)
    top = max([0.05, float(risk.max()) if len(risk) else 0.05] + [min(p["bound"], 0.5) for p in fr])
    ax.set(xlim=(0, 1), ylim=(0, top), xlabel="coverage")
    ax.set(ylabel="error among accepted", title="Risk-coverage (calibration faces)")
    save(fig, "risk_coverage")


# ---------------------------------------------------------------- gallery
def _pick(groups: dict[str, list[dict]], per: int, seed: int) -> list[tuple[str, dict]]:
    r = random.Random(seed)
    out = []
    for g in sorted(groups):
        rows = sorted(groups[g], key=lambda x: x.get("id") or x.get("face_id"))
        out += [(g, x) for x in r.sample(rows, min(per, len(rows)))]
    return out


def _images(st: Store, path: str, key: str, col: str, ids: set[str]) -> dict[str, bytes]:
    """JPEG bytes of the rows `ids`, streamed from one Parquet file (workspace or a rev)."""
    import pyarrow.parquet as pq

    if not ids:
        return {}
    src = Path(st.repo) / path if st.rev is None else io.BytesIO(st.read(path))
    out = {}
    for b in pq.ParquetFile(src).iter_batches(columns=[key, col], batch_size=256):
        for r in b.to_pylist():
            if r[key] in ids:
                out[r[key]] = r[col]["bytes"] if isinstance(r[col], dict) else r[col]
    return out


def _gallery(v: Version, d: Path, rel: str, per: int, seed: int) -> list[dict]:
    acc = _pick(_group(v.feid, lambda r: r["expression"]), per, seed)
    rej = _pick(_group(v.rejects, lambda r: (r["reasons"] or ["rejected"])[0]), per, seed)
    files = [f for f in v.store.ls(v.paths["feid"]) if f.endswith(".parquet")]
    want = {r["id"] for _, r in acc}
    imgs: dict[str, bytes] = {}
    for f in files:
        imgs.update(_images(v.store, f, "id", "image", want - set(imgs)))
    rejected = {r["face_id"] for _, r in rej}
    try:
        imgs.update(_images(v.store, f"{v.paths['crop']}/faces.parquet", "face_id", "crop", rejected))
    except (VersionError, FileNotFoundError):
        pass  # crops of this version are not available: rejected faces are listed without pictures
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for kind, picked in (("accepted", acc), ("rejected", rej)):
        for group, r in picked:
            fid = r.get("id") or r["face_id"]
            img = None
            if fid in imgs:
                (d / f"{fid}.jpg").write_bytes(imgs[fid])
                img = f"{rel}/{fid}.jpg"
            out.append({"kind": kind, "group": group, "row": r, "img": img})
    return out


def _group(rows: list[dict], key) -> dict[str, list[dict]]:
    g: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        g[key(r)].append(r)
    return g


# ---------------------------------------------------------------- HTML
CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:.9em}
.figs img{max-width:100%;margin:4px}.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{width:150px;font-size:.75em;border:1px solid #ddd;padding:4px}.card img{width:142px;height:142px}
.rej{background:#fff3f3}.cols{display:grid;grid-template-columns:1fr 1fr;gap:2em}"""

SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script>"""


def _summary(v: Version) -> str:
    gen = [r for r in v.feid if r.get("expression_status") == "accepted"]
    desc = Counter(r.get("description_source") or "template" for r in v.feid)
    c = v.calibration
    rows = [
        ("faces in FEID", len(v.feid)),
        ("rejected faces", len(v.rejects)),
        ("generated expressions kept", len(gen)),
        ("descriptions from verified rationales", f"{desc.get('annotator', 0)} of {len(v.feid)}"),
        ("calibration", f"{c.get('source', 'n/a')}: {c.get('why', '')}"),
        ("calibration faces", c.get("calibration_faces", 0)),
        ("error target", c.get("selection") or "n/a"),
        ("guarantee", _guarantee_text(c)),
        ("threshold", v.threshold),
        ("out-of-fold ECE", c.get("oof_ece")),
    ]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(x))}</td></tr>" for k, x in rows)
    return f"<table>{body}</table>"


def _guarantee_text(c: dict) -> str:
    if c.get("guaranteed"):
        return f"{c.get('guarantee')}: error <= {c.get('target_error')} among kept generated expressions"
    more = f" {c['label_budget_line']}." if c.get("label_budget_line") else ""
    return (
        "NONE: generated expressions are kept by a calibrated confidence, not certified. "
        "`seke review export` draws a blind random sample to label for one." + more
    )


def _card(g: dict) -> str:
    r = g["row"]
    img = f'<img src="{html.escape(g["img"])}" alt="{html.escape(g["group"])}">' if g["img"] else "<i>no crop</i>"
    if g["kind"] == "accepted":
        va = f"VA {r['valence']:+.2f}/{r['arousal']:+.2f}" if r.get("valence") is not None else "VA withheld"
        text = f"<b>{r['expression']}</b> ({r['expression_status']}), conf {r['confidence']:.2f}<br>{va}"
        text += f"<br>AUs: {', '.join(r.get('aus') or []) or 'none'}"
        return f'<div class="card">{img}<br>{text}</div>'
    why = html.escape(", ".join(r.get("reasons") or []))
    text = f"<b>{r.get('expression') or '-'}</b>, conf {r['confidence']:.2f}<br>{why}"
    return f'<div class="card rej">{img}<br>{text}</div>'


def _body(v: Version) -> str:
    figs = "".join(f'<img src="{html.escape(p)}" alt="{n}">' for n, p in v.figures.items())
    parts = [f"<h2>{html.escape(v.name)}</h2>", _summary(v), f'<h2>Figures</h2><div class="figs">{figs}</div>']
    for kind, title in (("accepted", "Accepted faces, per class"), ("rejected", "Rejected faces, per reason")):
        cards = "".join(_card(g) for g in v.gallery if g["kind"] == kind)
        parts.append(f'<h2>{title}</h2><div class="grid">{cards or "<i>none</i>"}</div>')
    return "".join(parts)


def _page(title: str, body: str) -> str:
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style>'
    return f"<!doctype html><html><head>{head}</head><body><h1>{html.escape(title)}</h1>{body}{SCRIPT}</body></html>\n"


def prepare(v: Version, out_dir: Path, rel: str, per: int = 4, seed: int = 0) -> Version:
    """Write the version's figures and gallery images under `out_dir/rel`."""
    v.figures = _figures(v, out_dir / rel, rel)
    v.gallery = _gallery(v, out_dir / rel / "gallery", f"{rel}/gallery", per, seed)
    return v


def write(v: Version, html_path: Path, per: int = 4, seed: int = 0) -> Path:
    """`html_path` and, beside it, `<stem>_files/` with its PNGs and gallery images."""
    out = html_path.parent
    prepare(v, out, f"{html_path.stem}_files", per, seed)
    html_path.write_text(_page(f"FEID report: {v.name}", _body(v)))
    return html_path


def write_side_by_side(a: Version, b: Version, html_path: Path, per: int = 4, seed: int = 0) -> Path:
    out = html_path.parent
    prepare(a, out, f"{html_path.stem}_files/a", per, seed)
    prepare(b, out, f"{html_path.stem}_files/b", per, seed)
    body = f'<div class="cols"><div>{_body(a)}</div><div>{_body(b)}</div></div>'
    html_path.write_text(_page(f"FEID: {a.name} vs {b.name}", body))
    return html_path
