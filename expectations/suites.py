"""The suites. Each stage maps to frames; each frame to a list of expectations.

The column sets come from the records (tasks.core.records), the value sets from the knowledge
files, and the bounds from params.yaml (`expectations` section), so nothing is written
twice.
"""

from __future__ import annotations

import logging
from typing import Callable

import pandas as pd

from tasks.core.knowledge import AUS, EXPRESSIONS
from tasks.core.params import Params
from tasks.core.records import (
    FaceRecord,
    FeidRecord,
    ImageRecord,
    RequestRecord,
    SampleRecord,
    Verdict,
)

log = logging.getLogger(__name__)


class ExpectationsFailed(RuntimeError):
    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


def _va(gxe, cols=("valence", "arousal")):
    return [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=-1.0, max_value=1.0) for c in cols]


def _kept_va(gxe):
    """VA is present exactly where it is kept (prior or accepted), and absent where withheld."""
    kept = 'va_status in ["prior", "accepted"]'
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=c, row_condition=kept, condition_parser="pandas")
        for c in ("valence", "arousal")
    ] + [
        gxe.ExpectColumnValuesToBeNull(column=c, row_condition=f"not ({kept})", condition_parser="pandas")
        for c in ("valence", "arousal")
    ]


def _unit(gxe, col):
    return gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0.0, max_value=1.0)


# Byte and long-text columns are not loaded into the frames GX validates.
HEAVY = ("crop", "raw", "messages_json", "answer_schema", "conversations", "image")


def _columns(gxe, record):
    return gxe.ExpectTableColumnsToMatchSet(
        column_set=[c for c in record.columns() if c not in HEAVY], exact_match=False
    )


def _ingest(gxe, p: Params, n: dict):
    return {
        "images": [
            _columns(gxe, ImageRecord),
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            gxe.ExpectColumnValuesToNotBeNull(column="id"),
            gxe.ExpectColumnValuesToBeInSet(column="prior_expression", value_set=list(EXPRESSIONS)),
            *_va(gxe, ("prior_valence", "prior_arousal")),
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        ],
        "quarantine": [
            gxe.ExpectColumnValuesToNotBeNull(column="reason"),
            gxe.ExpectColumnValuesToNotBeNull(column="detail"),
        ],
        "au_codes": [gxe.ExpectColumnValuesToBeInSet(column="au", value_set=list(AUS))],
    }


def _crop(gxe, p: Params, n: dict):
    return {
        "faces": [
            _columns(gxe, FaceRecord),
            gxe.ExpectColumnValuesToBeUnique(column="face_id"),
            _unit(gxe, "score"),
            gxe.ExpectColumnValuesToBeBetween(column="box_w", min_value=0, strict_min=True),
        ],
        "images": [
            gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "no_face", "decode_error"]),
            gxe.ExpectColumnValuesToBeUnique(column="image_id"),
            gxe.ExpectTableRowCountToEqual(value=n["images"]),
        ],
    }


def _prompt(gxe, p: Params, n: dict):
    return {
        "requests": [
            _columns(gxe, RequestRecord),
            gxe.ExpectColumnValuesToBeUnique(column="request_id"),
            gxe.ExpectColumnValuesToBeInSet(column="variant", value_set=["primed", "blind", "plain"]),
        ]
    }


def _sample(gxe, p: Params, n: dict):
    return {
        "samples": [
            _columns(gxe, SampleRecord),
            gxe.ExpectColumnValuesToBeInSet(column="expression", value_set=list(EXPRESSIONS)),
            *_va(gxe),
            gxe.ExpectColumnValuesToBeBetween(column="sample_index", min_value=0),
            gxe.ExpectColumnValuesToBeInSet(
                column="status", value_set=["ok", "invalid", "refused", "truncated", "error"]
            ),
        ],
        "au_codes": [gxe.ExpectColumnValuesToBeInSet(column="au", value_set=list(AUS))],
    }


def _verify(gxe, p: Params, n: dict):
    return {
        "verdicts": [
            _columns(gxe, Verdict),
            gxe.ExpectColumnValuesToBeUnique(column="face_id"),
            gxe.ExpectTableRowCountToEqual(value=n["faces"]),
            _unit(gxe, "confidence"),
            gxe.ExpectColumnValuesToBeInSet(column="expression", value_set=list(EXPRESSIONS)),
            _unit(gxe, "expression_confidence"),
            gxe.ExpectColumnValuesToBeInSet(
                column="expression_status", value_set=["prior", "accepted", "withheld", "missing"]
            ),
            *_va(gxe),
        ],
        "au_codes": [gxe.ExpectColumnValuesToBeInSet(column="au", value_set=list(AUS))],
    }


def _export(gxe, p: Params, n: dict):
    e = p.expectations
    return {
        "feid": [
            _columns(gxe, FeidRecord),
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            gxe.ExpectColumnValuesToNotBeNull(column="expression"),
            gxe.ExpectColumnValuesToBeInSet(column="expression", value_set=list(EXPRESSIONS)),
            *_va(gxe),
            *_kept_va(gxe),
            gxe.ExpectColumnValuesToBeInSet(column="expression_status", value_set=["prior", "accepted"]),
            _unit(gxe, "confidence"),
            _unit(gxe, "expression_confidence"),
            gxe.ExpectTableRowCountToEqual(value=n["accepted"]),
            gxe.ExpectTableRowCountToBeBetween(min_value=p.export.min_rows),
        ],
        "rejects": [gxe.ExpectTableRowCountToEqual(value=n["faces"] - n["accepted"])],
        "au_codes": [gxe.ExpectColumnValuesToBeInSet(column="au", value_set=list(AUS))],
        # a distribution bound on a handful of faces is noise, not a finding
        "label_distribution": [
            gxe.ExpectColumnValuesToBeBetween(column="share", min_value=0.0, max_value=e.max_class_share),
            gxe.ExpectTableRowCountToBeBetween(min_value=e.min_classes),
        ]
        if n.get("accepted", 0) >= e.min_faces_for_distribution
        else [],
    }


SUITES: dict[str, Callable] = {
    "ingest": _ingest,
    "crop": _crop,
    "prompt": _prompt,
    "sample": _sample,
    "verify": _verify,
    "export": _export,
}


def au_frame(df: pd.DataFrame, col: str = "aus") -> pd.DataFrame:
    """One row per AU code named in a list column (GX expectations work on scalar columns)."""
    codes = [a for lst in df[col].dropna() for a in lst] if col in df else []
    return pd.DataFrame({"au": pd.Series(codes, dtype="object")})


def label_distribution(df: pd.DataFrame, col: str = "expression") -> pd.DataFrame:
    vc = df[col].value_counts(normalize=True) if len(df) else pd.Series(dtype=float)
    return pd.DataFrame({"expression": vc.index.astype(str), "share": vc.values.astype(float)})


def check(stage: str, frames: dict[str, pd.DataFrame], params: Params, counts: dict | None = None) -> dict:
    """Validate a stage's frames; return {suite, success, evaluated, failed: [...]} or raise."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)  # GX announces its temp Data Docs dir at INFO
    suites = SUITES[stage](gxe, params, counts or {})
    ctx = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ds = ctx.data_sources.add_pandas(name=f"seke_{stage}")
    failed: list[str] = []
    results: list[dict] = []
    for frame, expectations in suites.items():
        if not expectations:
            continue
        if frame not in frames:
            raise KeyError(f"suite {stage} expects a frame {frame!r}; got {sorted(frames)}")
        asset = ds.add_dataframe_asset(name=frame)
        batch = asset.add_batch_definition_whole_dataframe(f"{frame}_all").get_batch(
            batch_parameters={"dataframe": frames[frame]}
        )
        suite = gx.ExpectationSuite(name=f"{stage}.{frame}", expectations=expectations)
        for r in batch.validate(suite).results:
            cfg = r.expectation_config
            kw = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
            detail = {k: r.result.get(k) for k in OBSERVED if r.result.get(k) is not None}
            results.append(
                {"frame": frame, "expectation": cfg.type, "kwargs": kw, "success": bool(r.success), **detail}
            )
            if not r.success:
                failed.append(f"{stage}.{frame}: {cfg.type} {kw} -> {detail}")
    summary = {"suite": stage, "success": not failed, "evaluated": len(results), "failed": len(failed)}
    report = {
        **summary,
        "results": _jsonable(results),
        "not_enforced": not_enforced(stage, frames, params, counts or {}),
    }
    if failed:
        raise ExpectationsFailed(
            f"{len(failed)} of {len(results)} expectations failed for stage {stage!r}:\n  " + "\n  ".join(failed),
            report,
        )
    summary["report"] = report
    return summary


OBSERVED = ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "partial_unexpected_list")


def _jsonable(x):
    """GX results hold numpy scalars and tuples: plain JSON types."""
    import json

    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def not_enforced(stage: str, frames: dict, params: Params, counts: dict) -> list[dict]:
    """Checks a stage reports but does not enforce: the label distribution of FEID below
    `expectations.min_faces_for_distribution` accepted faces (a bound on a handful is noise)."""
    e, n = params.expectations, counts.get("accepted", 0)
    if stage != "export" or n >= e.min_faces_for_distribution or "label_distribution" not in frames:
        return []
    ld = frames["label_distribution"]
    shares = dict(zip(ld["expression"], (round(float(x), 4) for x in ld["share"])))
    return [
        {
            "check": "label distribution",
            "why": f"{n} accepted faces < expectations.min_faces_for_distribution = {e.min_faces_for_distribution}",
            "observed_shares": shares,
            "would_fail": max(shares.values(), default=0) > e.max_class_share or len(shares) < e.min_classes,
        }
    ]
