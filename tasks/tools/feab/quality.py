"""Annotation quality of a FEID version against ground truth the annotator was not shown
(`seke quality`): the version's verdicts matched to the truth by image bytes, scored with
FEAB's metrics on the accepted faces and on all faces, written as quality.json / .md / plots
and quality_all.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.core.knowledge import load as load_knowledge
from tasks.tools.feab.metrics import evaluate
from tasks.tools.feab.predict import quality_rows, truth_from_manifest
from tasks.tools.feab.report import write_outputs


class QualityError(ValueError):
    """A version or ground truth that cannot be scored (the message says why)."""


@dataclass
class Quality:
    version: str
    rows: list[dict]  # one per matched face (`quality_rows`)
    scores: dict  # {"accepted": evaluate(...) | None, "all": evaluate(...) | None}

    @property
    def meta(self) -> dict:
        return {
            "version": self.version,
            "matched_faces": len(self.rows),
            "accepted": sum(r["accepted"] for r in self.rows),
        }


def verdicts_at(rev: str, repo: str = ".") -> tuple:
    """(version, its verdict rows) of a git rev, tag, DVC experiment or `workspace`."""
    from tasks.tools import compare as C

    try:
        v = C.load_version(repo, rev)
        verify = v.params.get("paths", {}).get("verify", "data/verify")
        return v, C.Store(repo, v.rev).parquet(f"{verify}/verdicts.parquet").to_pylist()
    except C.VersionError as ex:
        raise QualityError(str(ex)) from None


def score(rev: str, truth: Path, root: Path | None, bench, repo: str = ".") -> Quality:
    """Match version `rev`'s faces to `truth` (a manifest or a `seke split` CSV) and score them
    with `bench`'s bootstrap settings (`params.bench`)."""
    if not Path(truth).exists():
        raise QualityError(f"{truth} not found")
    v, verdicts = verdicts_at(rev, repo)
    rows = quality_rows(verdicts, truth_from_manifest(Path(truth), root, load_knowledge()))
    if not rows:
        raise QualityError(f"no FEID face of {rev} matches an image of {truth} (matched by SHA-256 of the bytes)")
    scores = {}
    for name, sub in (("accepted", [r for r in rows if r["accepted"]]), ("all", rows)):
        scores[name] = evaluate(sub, bench.bootstrap, bench.ci, bench.seed) if sub else None
    return Quality(v.label, rows, scores)


def write(q: Quality, truth: Path, out_dir: Path) -> list[Path]:
    """The report files: quality.json/.md/plots (accepted faces, when any) and quality_all.json."""
    meta = {**q.meta, "truth": str(truth)}
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if q.scores["accepted"]:
        write_outputs(
            q.scores["accepted"],
            [r for r in q.rows if r["accepted"]],
            metrics=out_dir / "quality.json",
            plots=out_dir / "plots",
            report=out_dir / "quality.md",
            title=f"Annotation quality: {q.version} (accepted faces)",
            meta=meta,
        )
        files += [out_dir / "quality.json", out_dir / "quality.md", out_dir / "plots"]
    path = out_dir / "quality_all.json"
    path.write_text(json.dumps({"meta": meta, **(q.scores["all"] or {})}, indent=2, sort_keys=True, default=str))
    return files + [path]
