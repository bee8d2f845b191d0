"""Compare two FEID versions: git revisions, tags, or DVC experiment names.

Every file is read through DVC's API (`dvc.api.read` / `dvc.api.open`), so a version that
exists only in a DVC remote (a fresh clone) is read from the remote; `workspace` reads the
working tree. A version is its params.yaml and its FEID directory: the accepted rows
(`<feid>/*.parquet`) and the rejected faces with their reasons (`<feid>/.rejects/`).

The comparison: sizes and acceptance rates; rejection reasons; label distributions and
their shift (counts, Jensen-Shannon divergence, total variation); agreement on the faces
both FEIDs contain (Cohen's kappa for expression, per-AU agreement, VA mean absolute
difference); which faces changed label, entered or left; and the parameter differences.
"""

from __future__ import annotations

import io
import math
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tasks.core.knowledge import AUS, EXPRESSIONS
from tasks.core.yamlio import load_yaml

WORKSPACE = "workspace"
VERDICT_COLUMNS = ["face_id", "accepted", "reasons", "confidence", "expression", "valence", "arousal", "aus"]
FEID_COLUMNS = [
    "id",
    "source",
    "expression",
    "valence",
    "arousal",
    "aus",
    "confidence",
    "annotator",
    "model",
    "prompt_version",
    "params_hash",
    "knowledge_version",
]


class VersionError(ValueError):
    """A name that is not a git revision, tag, branch or DVC experiment, or a version
    without the files a comparison needs."""


@dataclass
class Version:
    name: str
    rev: str | None  # commit sha, None = workspace
    repo: str
    params: dict
    verdicts: list[dict] = field(default_factory=list)
    feid: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name if self.rev is None else f"{self.name} ({self.rev[:7]})"


def resolve(repo: str, name: str) -> str | None:
    """Commit sha of a git revision/tag/branch or DVC experiment name; None for the workspace."""
    if name in (WORKSPACE, ".", ""):
        return None
    r = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], cwd=repo, capture_output=True, text=True
    )
    if r.returncode == 0:
        return r.stdout.strip()
    try:
        from dvc.repo import Repo
        from dvc.repo.experiments.utils import resolve_name

        with Repo(repo) as dvc_repo:
            ref = resolve_name(dvc_repo.scm, name).get(name)
            if ref is not None:
                return dvc_repo.scm.get_ref(str(ref))
    except VersionError:
        raise
    except Exception as ex:  # not a DVC repo, ambiguous name...
        raise VersionError(f"{name!r}: {ex}") from ex
    raise VersionError(
        f"{name!r} is not a git revision, tag, branch or DVC experiment in {repo} "
        "(list experiments with `dvc exp show`, tags with `git tag`)"
    )


class Store:
    """The files of one version: the working tree (rev None) or a commit read through
    `dvc.api.DVCFileSystem` (git-tracked files from git, DVC outputs from the local cache or,
    in a fresh clone, the DVC remote)."""

    def __init__(self, repo: str, rev: str | None):
        self.repo, self.rev, self._fs = repo, rev, None

    @property
    def fs(self):
        if self._fs is None:
            from dvc.api import DVCFileSystem

            self._fs = DVCFileSystem(self.repo, rev=self.rev)
        return self._fs

    def read(self, path: str) -> bytes:
        if self.rev is None:
            p = Path(self.repo) / path
            if not p.exists():
                raise VersionError(f"{path} is not in the workspace: run `seke run` first")
            return p.read_bytes()
        try:
            with self.fs.open(path, "rb") as fh:
                return fh.read()
        except Exception as ex:
            raise VersionError(
                f"cannot read {path} at {self.rev[:7]}: {type(ex).__name__}: {ex}. If the data "
                "lives in a DVC remote, check `dvc remote list` and your credentials."
            ) from ex

    def ls(self, folder: str) -> list[str]:
        """Paths (relative to the repo) of the files directly in `folder`; [] if there is none."""
        folder = folder.strip("/")
        if self.rev is None:
            d = Path(self.repo) / folder
            return sorted(f"{folder}/{f.name}" for f in d.iterdir() if f.is_file()) if d.is_dir() else []
        try:
            entries = self.fs.ls(folder, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(f"{folder}/{Path(e['name']).name}" for e in entries if e.get("type") == "file")

    def parquet(self, path: str, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.read(path)), columns=columns)

    def feid(self, folder: str, columns: list[str] | None = None):
        """FEID as a directory dataset: every top-level `*.parquet` (the export stage's
        `feid.parquet`) concatenated."""
        import pyarrow as pa

        files = [f for f in self.ls(folder) if f.endswith(".parquet") and Path(f).name != "rejects.parquet"]
        if not files:
            raise VersionError(f"no FEID rows under {folder} at {self.rev[:7] if self.rev else 'workspace'}")
        return pa.concat_tables([self.parquet(f, columns) for f in files])

    def rejects(self, folder: str, columns: list[str] | None = None) -> list[dict]:
        """Rejected faces (Verdict rows): `<feid>/.rejects/*.parquet`, or the older `<feid>/rejects.parquet`."""
        files = [f for f in self.ls(f"{folder}/.rejects") if f.endswith(".parquet")]
        files += [f for f in self.ls(folder) if Path(f).name == "rejects.parquet"]
        rows: list[dict] = []
        for f in files:
            t = self.parquet(f)
            rows += t.select([c for c in (columns or t.column_names) if c in t.column_names]).to_pylist()
        return rows


def read_bytes(repo: str, rev: str | None, path: str) -> bytes:
    return Store(repo, rev).read(path)


def read_parquet(repo: str, rev: str | None, path: str, columns: list[str] | None = None):
    return Store(repo, rev).parquet(path, columns)


def load_version(repo: str, name: str, params_file: str = "params.yaml") -> Version:
    """params.yaml, the FEID rows and the verdicts (accepted FEID rows + rejected faces) of a version."""
    rev = resolve(repo, name)
    st = Store(repo, rev)
    params = load_yaml(st.read(params_file)) or {}
    folder = params.get("paths", {}).get("feid", "data/feid")
    v = Version(name=name, rev=rev, repo=repo, params=params)
    table = st.feid(folder)
    v.feid = table.select([c for c in FEID_COLUMNS if c in table.column_names]).to_pylist()
    rej = st.rejects(folder, VERDICT_COLUMNS)
    v.verdicts = [
        {
            "face_id": r["id"],
            "accepted": True,
            "reasons": [],
            "confidence": r["confidence"],
            "expression": r["expression"],
            "valence": r["valence"],
            "arousal": r["arousal"],
            "aus": r["aus"],
        }
        for r in v.feid
    ] + rej
    return v


# ---------------------------------------------------------------- statistics
def cohen_kappa(a: list, b: list) -> float:
    """Cohen's kappa. Perfect observed agreement is 1.0 even when both raters use a single
    class (where the textbook formula is 0/0)."""
    n = len(a)
    if n == 0:
        return math.nan
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    if po == 1.0:
        return 1.0
    return (po - pe) / (1 - pe) if pe < 1 else 0.0


def js_divergence(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint)."""
    keys = set(p) | set(q)
    sp, sq = sum(p.values()) or 1, sum(q.values()) or 1
    P = {k: p.get(k, 0) / sp for k in keys}
    Q = {k: q.get(k, 0) / sq for k in keys}
    M = {k: (P[k] + Q[k]) / 2 for k in keys}

    def kl(x):
        return sum(x[k] * math.log2(x[k] / M[k]) for k in keys if x[k] > 0)

    return 0.5 * kl(P) + 0.5 * kl(Q)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def param_diff(a: dict, b: dict) -> list[dict]:
    fa, fb = flatten(a), flatten(b)
    return [{"param": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _r(x, nd=4):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def _sizes(v: Version) -> dict:
    n = len(v.verdicts)
    acc = sum(1 for x in v.verdicts if x["accepted"])
    return {
        "faces": n,
        "accepted": acc,
        "rejected": n - acc,
        "acceptance_rate": _r(acc / n) if n else None,
        "feid_rows": len(v.feid),
        "reasons": dict(sorted(Counter(r for x in v.verdicts for r in (x["reasons"] or [])).items())),
    }


def _distribution(a: Version, b: Version) -> tuple[list[dict], dict]:
    """Per-class counts and shares in A and B, and their divergence."""
    da = Counter(r["expression"] for r in a.feid)
    db = Counter(r["expression"] for r in b.feid)
    classes = [e for e in EXPRESSIONS if da[e] or db[e]]
    na, nb = sum(da.values()) or 1, sum(db.values()) or 1
    dist = [
        {
            "expression": e,
            "a": da[e],
            "b": db[e],
            "a_share": _r(da[e] / na),
            "b_share": _r(db[e] / nb),
            "delta": db[e] - da[e],
        }
        for e in classes
    ]
    div = {
        "js_bits": _r(js_divergence(da, db)),
        "total_variation": _r(0.5 * sum(abs(da[e] / na - db[e] / nb) for e in classes)),
    }
    return dist, div


def _per_au(fa: dict, fb: dict, shared: list[str]) -> dict:
    per_au = {}
    for au in AUS:
        xs = [(au in (fa[i]["aus"] or []), au in (fb[i]["aus"] or [])) for i in shared]
        if xs and any(x or y for x, y in xs):
            per_au[au] = {
                "agreement": _r(sum(x == y for x, y in xs) / len(xs)),
                "kappa": _r(cohen_kappa([x for x, _ in xs], [y for _, y in xs])),
                "a_rate": _r(sum(x for x, _ in xs) / len(xs)),
                "b_rate": _r(sum(y for _, y in xs) / len(xs)),
            }
    return per_au


def _agreement(fa: dict, fb: dict, va_: dict, vb_: dict) -> dict:
    """Agreement of A and B on the faces both kept (and on every face both labelled)."""
    shared = sorted(set(fa) & set(fb))
    ea, eb = [fa[i]["expression"] for i in shared], [fb[i]["expression"] for i in shared]
    unchanged = [i for i in shared if fa[i]["expression"] == fb[i]["expression"]]
    both = sorted(i for i in set(va_) & set(vb_) if va_[i]["expression"] and vb_[i]["expression"])
    return {
        "shared_faces": len(shared),
        "expression_agreement": _r(sum(x == y for x, y in zip(ea, eb)) / len(shared)) if shared else None,
        "kappa": _r(cohen_kappa(ea, eb)),
        "kappa_unchanged": _r(
            cohen_kappa([fa[i]["expression"] for i in unchanged], [fb[i]["expression"] for i in unchanged])
        ),
        "kappa_all_verdicts": _r(
            cohen_kappa([va_[i]["expression"] for i in both], [vb_[i]["expression"] for i in both])
        ),
        "per_au": _per_au(fa, fb, shared),
        "va_mad": {
            d: _r(sum(abs(fa[i][d] - fb[i][d]) for i in shared) / len(shared)) if shared else None
            for d in ("valence", "arousal")
        },
    }


def _changes(fa: dict, fb: dict, vb_: dict, max_changed: int) -> dict:
    shared = sorted(set(fa) & set(fb))
    changed = [
        {"face_id": i, "a": fa[i]["expression"], "b": fb[i]["expression"]}
        for i in shared
        if fa[i]["expression"] != fb[i]["expression"]
    ]
    left, entered = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    reasons = Counter(r for i in left for r in (vb_.get(i, {}).get("reasons") or ["not in B"]))
    return {
        "n": len(changed),
        "faces": changed[:max_changed],
        "left": {"n": len(left), "reasons": dict(sorted(reasons.items())), "faces": left[:max_changed]},
        "entered": {"n": len(entered), "faces": entered[:max_changed]},
    }


PROVENANCE = ("annotator", "model", "prompt_version", "params_hash", "knowledge_version")


def compare(a: Version, b: Version, max_changed: int = 200) -> dict:
    """Everything `seke compare` reports about versions A and B."""
    sa, sb = _sizes(a), _sizes(b)
    dist, div = _distribution(a, b)
    fa, fb = {r["id"]: r for r in a.feid}, {r["id"]: r for r in b.feid}
    va_, vb_ = {x["face_id"]: x for x in a.verdicts}, {x["face_id"]: x for x in b.verdicts}
    return {
        "a": {"name": a.name, "rev": a.rev, **sa},
        "b": {"name": b.name, "rev": b.rev, **sb},
        "acceptance_change": _r((sb["acceptance_rate"] or 0) - (sa["acceptance_rate"] or 0)),
        "label_distribution": dist,
        "divergence": div,
        "agreement": _agreement(fa, fb, va_, vb_),
        "changed": _changes(fa, fb, vb_, max_changed),
        "params": param_diff(a.params, b.params),
        "provenance": {v.name: {k: sorted({str(r[k]) for r in v.feid}) for k in PROVENANCE} for v in (a, b)},
    }
