"""Refit the expression -> VA centroids and spreads from labelled data (`seke knowledge refit`).

    from tasks.tools.refit import refit
    refit("s3://bucket/affectnet/manifest.parquet", "tasks/knowledge/va.yaml")

The manifest (CSV or Parquet, any fsspec URL) needs `expression`, `valence` and `arousal`
columns (an optional `label_scheme` column names a numeric scheme of labels.yaml). Per
expression with at least `min_n` rows: centroid = mean (valence, arousal); spread = the RMS
distance of the rows to it (the radius `Knowledge.consistency` uses). Expressions with fewer
rows keep their current values and their source. Every centroid records its source, and the
file's `source` lists the manifest and the row counts.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path

import yaml

from tasks.core.knowledge import KNOWLEDGE_DIR, PROJECT_DIR, UnknownLabel, knowledge_file, load
from tasks.core.yamlio import load_yaml


def _rows(manifest_url: str) -> tuple[list[dict], str]:
    import fsspec
    import pandas as pd

    with fsspec.open(manifest_url, "rb") as fh:
        data = fh.read()
    import io

    if manifest_url.lower().endswith((".parquet", ".pq")):
        df = pd.read_parquet(io.BytesIO(data))
    else:
        df = pd.read_csv(io.BytesIO(data))
    missing = {"expression", "valence", "arousal"} - set(df.columns)
    if missing:
        raise ValueError(f"{manifest_url}: no column(s) {sorted(missing)}")
    return df.to_dict("records"), hashlib.sha256(data).hexdigest()[:16]


def default_out() -> Path:
    """A project's `knowledge/va.yaml` when it has a knowledge folder (`seke init` makes one),
    else the package's own file (this repository)."""
    own = Path(PROJECT_DIR)
    return own / "va.yaml" if own.is_dir() else KNOWLEDGE_DIR / "va.yaml"


def refit(manifest_url: str, out_path: str | Path, min_n: int = 20) -> dict:
    """Write a refit va.yaml to `out_path`; returns {expression: (n, valence, arousal, spread)}."""
    k = load()
    rows, digest = _rows(manifest_url)
    pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    skipped = 0
    for r in rows:
        try:
            v, a = float(r["valence"]), float(r["arousal"])
            if math.isnan(v) or math.isnan(a) or not (-1 <= v <= 1 and -1 <= a <= 1):
                raise ValueError
            scheme = r.get("label_scheme")
            e = k.expression(r["expression"], scheme if isinstance(scheme, str) and scheme else None)
        except (ValueError, TypeError, UnknownLabel):
            skipped += 1
            continue
        pts[e].append((v, a))
    current = load_yaml(knowledge_file("va.yaml").read_text())
    centroids = {}
    fitted = {}
    for e in k.expressions:
        old = dict(current["centroids"][e])
        p = pts.get(e, [])
        if len(p) >= min_n:
            mv = sum(x for x, _ in p) / len(p)
            ma = sum(y for _, y in p) / len(p)
            spread = math.sqrt(sum((x - mv) ** 2 + (y - ma) ** 2 for x, y in p) / len(p))
            centroids[e] = {
                "valence": round(mv, 4),
                "arousal": round(ma, 4),
                "spread": round(max(spread, 0.05), 4),
                "n": len(p),
                "source": f"refit from {manifest_url} (sha256 {digest})",
            }
            fitted[e] = (len(p), mv, ma, spread)
        else:
            old.setdefault("source", current.get("source", "unknown"))
            centroids[e] = old
    out = {
        "version": int(current.get("version", 1)) + 1,
        "source": f"refit from {manifest_url} (sha256 {digest}): {len(rows)} rows, {skipped} skipped; "
        f"expressions with < {min_n} rows keep their previous values",
        "centroids": centroids,
        "au_directions": current["au_directions"],
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(
        "# Expression -> valence/arousal centroid and spread. Written by "
        "tasks.tools.refit.refit; see `source` per centroid.\n" + yaml.safe_dump(out, sort_keys=False)
    )
    return fitted
