"""The second opinion: the local models' label for every crop, as independent evidence for the
evidence model (`tasks.method.posterior`) of a run whose answers come from a VLLM.

The local classifiers (fer + facex, `tasks.annotators.local`) look at the face itself. They
never see the prompt or the VLLM's stated label, so they cannot rationalise it, and a
disagreement with the VLLM carries information no number of the VLLM's own samples can. The
evidence model learns how far to trust them from the calibration faces (a confusion matrix).

Offline and free, about 0.1-0.2 s per face on a CPU; each crop's label is cached by its
SHA-256 and the models' signature (`<runtime.cache>/second_opinion/<signature>.jsonl`), so a
re-run pays nothing. When the `local` extra's model files are not installed, there is no
second opinion, and the run says why (`status`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from tasks.infra import models


def wanted(p) -> bool:
    """Whether this run reads a second opinion: the evidence model is on and lists it, and the
    answers come from another annotator than the local models themselves."""
    from tasks.annotators import backend_class

    v = p.verify
    return (
        v.evidence_model
        and "second_opinion" in v.evidence_signals
        and not backend_class(p.annotator.backend).is_local_models
    )


def status() -> str | None:
    """None when the local models can run, else why not (and the fix)."""
    try:
        for name in ("fer", "facex"):
            models.path(name)
        import ai_edge_litert  # noqa: F401
    except (models.ModelMissing, ImportError) as e:
        return f"no second opinion: {e} (install the local models: pip install 'seke[local]')"
    return None


class Opinions:
    """label(crop_sha256, crop bytes) with a JSON-lines cache beside the response cache."""

    def __init__(self, cache_root: str):
        from tasks.annotators.local import LocalAnnotator
        from tasks.core.params import Annotator

        self.ann = LocalAnnotator(Annotator(backend="local"))
        sig = json.dumps({"classifiers": list(self.ann.classifiers), "files": self.ann.signature()["files_sha256"]})
        self.path = Path(cache_root) / "second_opinion" / f"{hashlib.sha256(sig.encode()).hexdigest()[:16]}.jsonl"
        self.known: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    self.known[d["sha"]] = d["label"]
                except (ValueError, KeyError):
                    continue  # a line cut short by a kill: that crop is asked again
        self.fresh = 0

    def label(self, sha: str, crop: bytes, face_frac: float | None = None) -> str | None:
        if sha not in self.known:
            try:
                lab = self.ann.opinion(crop, face_frac)
            except Exception:  # an unreadable crop has no second opinion; the VLLM's answers stand
                return None
            self.known[sha] = lab
            self.fresh += 1
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"sha": sha, "label": lab}) + "\n")
        return self.known[sha]

    def for_faces(self, faces: Iterable[dict]) -> dict[str, str]:
        """face_id -> label for faces with a crop."""
        out = {}
        for f in faces:
            if f.get("crop"):
                lab = self.label(f["crop_sha256"], f["crop"], f.get("crop_face_frac"))
                if lab is not None:
                    out[f["face_id"]] = lab
        return out
