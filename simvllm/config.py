"""The simulated VLLM's settings (`SimConfig`), its ground truth (`Truth`, `load_manifest`) and seeded draws."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.knowledge import load as load_knowledge


@dataclass
class SimConfig:
    model: str = "sim-vllm"
    seed: int = 0
    # answer quality
    accuracy: float = 0.75  # mean single-sample expression accuracy
    difficulty_spread: float = 0.3  # per-face accuracy = accuracy +- this (uniform), clipped
    systematic: float = 0.7  # share of wrong answers naming the face's fixed distractor
    va_noise: float = 0.15  # std of Gaussian noise on valence and arousal
    au_flip: float = 0.05  # chance that each AU's occurrence is flipped
    follow_stated: float = (
        0.85  # share of AUs/VA that follow the stated expression, not the truth (real VLLMs rationalise)
    )
    rationale_contradict: float = 0.15  # share of rationales that name another expression or an AU not reported
    # protocol behaviour
    n_mode: str = "honour"  # honour | ignore (always 1 choice) | cap (at most n_cap)
    n_cap: int = 4
    reject_json_schema: bool = False  # 400 on response_format json_schema
    reject_json_object: bool = False  # 400 on response_format json_object
    reject_seed: bool = False  # 400 when `seed` is sent
    require_key: str = ""  # if set, other bearer keys get a 401 that echoes them
    # timing
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # faults, per attempt (request level) or per choice (answer level)
    rate_429: float = 0.0
    retry_after_s: float = 0.05  # sent as Retry-After (seconds, rounded up) and retry-after-ms
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    timeout_sleep_s: float = 30.0  # how long a "timed out" request sleeps before answering
    fault_max_attempt: int = 0  # request-level faults only on attempts < this; 0 = any attempt
    rate_truncated: float = 0.0
    rate_refusal: float = 0.0
    rate_out_of_range: float = 0.0
    # self-verification hook (default handler)
    verify_confirm_correct: float = 0.9
    verify_confirm_wrong: float = 0.3
    verify_confirm_distractor: float = -1.0  # confirm rate when the claim is the face's distractor; <0 = as wrong
    tokens_per_image: int = 255
    # the Batch API (simvllm.batch)
    batch_latency_s: float = 1.0  # a batch completes this long after it was created
    batch_fail_rate: float = 0.0  # a batch fails validation (nothing answered or billed)
    batch_expire_rate: float = 0.0  # a batch expires with only its first half answered
    batch_line_error_rate: float = 0.0  # a line of a batch ends as a 500 in the error file

    def update(self, d: dict) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown sim config keys {sorted(bad)}")
        for k, v in d.items():
            cur = getattr(self, k)
            if isinstance(cur, bool) and isinstance(v, str):
                v = v.lower() in ("1", "true", "yes")
            setattr(self, k, type(cur)(v))


@dataclass
class Truth:
    expression: str
    valence: float
    arousal: float
    aus: list[str]
    accuracy: float | None = None


def _u(*parts: Any) -> float:
    """A deterministic uniform [0, 1) from any parts."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest())


def _clip(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def load_manifest(path: str | Path | None) -> dict[str, Truth]:
    """sha256 -> Truth from a CSV/JSON/JSONL manifest (`path` rows are hashed from disk)."""
    if not path:
        return {}
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".json":
        rows = json.loads(text)
        rows = [dict(sha256=k, **v) for k, v in rows.items()] if isinstance(rows, dict) else rows
    elif p.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    k = load_knowledge()
    out: dict[str, Truth] = {}
    for r in rows:
        sha = r.get("sha256") or ""
        if not sha and r.get("path"):
            f = (p.parent / r["path"]) if not Path(r["path"]).is_absolute() else Path(r["path"])
            if not f.is_file():
                continue
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
        if not sha or not r.get("expression"):
            continue
        expr = k.expression(r["expression"])
        cv, ca, _ = k.va_centroid(expr)
        aus = r.get("aus")
        if isinstance(aus, str):
            aus = [a for a in re.split(r"[;,\s]+", aus) if a]
        if aus is None or aus == "":
            aus = k.prototype(expr)[0]
        val = r.get("valence")
        aro = r.get("arousal")
        acc = r.get("accuracy")
        out[sha] = Truth(
            expr,
            float(val) if val not in (None, "") else cv,
            float(aro) if aro not in (None, "") else ca,
            sorted(k.au_code(a) for a in aus),
            float(acc) if acc not in (None, "") else None,
        )
    return out
