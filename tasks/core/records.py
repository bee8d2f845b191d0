"""The records each stage writes. One schema source: the Parquet schema and the Great
Expectations suites both derive their columns from these pydantic models.

Stage    file                                  record
ingest   data/ingest/images.parquet            ImageRecord
         data/ingest/quarantine.parquet        QuarantineRecord
crop     data/crop/faces.parquet               FaceRecord
         data/crop/images.parquet              CropStatus
prompt   data/prompt/requests.parquet          RequestRecord
sample   data/sample_runs/samples.parquet      SampleRecord
verify   data/verify/verdicts.parquet          Verdict
export   data/feid/feid.parquet                FeidRecord
         data/feid/.rejects/rejects.parquet             Verdict (accepted = false)
"""

from __future__ import annotations

import builtins
import json
import types
import typing
from typing import Literal, Optional, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, create_model

from tasks.core.knowledge import AUS


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        return pa.schema(
            [
                pa.field(n, _arrow_type(f.annotation), nullable=_nullable(f.annotation))
                for n, f in cls.model_fields.items()
            ]
        )

    @classmethod
    def columns(cls) -> list[str]:
        return list(cls.model_fields)


def _strip_optional(t):
    if get_origin(t) in (Union, types.UnionType):
        args = [a for a in get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def _nullable(t) -> bool:
    return get_origin(t) in (Union, types.UnionType) and type(None) in get_args(t)


def _arrow_type(t) -> pa.DataType:
    t = _strip_optional(t)
    origin = get_origin(t)
    if t is str or origin is Literal:
        return pa.string()
    if t is bool:
        return pa.bool_()
    if t is int:
        return pa.int64()
    if t is float:
        return pa.float64()
    if t is bytes:
        return pa.binary()
    if origin is list:
        (inner,) = get_args(t)
        return pa.list_(_arrow_type(inner))
    if isinstance(t, type) and issubclass(t, BaseModel):
        return pa.struct(
            [
                pa.field(f.alias or n, _arrow_type(f.annotation), nullable=_nullable(f.annotation))
                for n, f in t.model_fields.items()
            ]
        )
    raise TypeError(f"no Arrow type for {t!r}")


Granularity = Literal["expression", "va", "aus"]
GRANULARITIES: tuple[str, ...] = typing.get_args(Granularity)

QuarantineReason = Literal["unreadable", "not_an_image", "empty", "too_large", "duplicate", "outside_root"]


class ImageRecord(Record):
    id: str = Field(description="SHA-256 of the file's bytes")
    path: str = Field(description="path as listed, relative to the input root")
    uri: str = Field(description="full fsspec URL the bytes were read from")
    source: str
    subject: Optional[str] = None
    width: int
    height: int
    format: str
    n_bytes: int
    prior_expression: Optional[str] = None
    prior_valence: Optional[float] = None
    prior_arousal: Optional[float] = None
    prior_aus: Optional[list[str]] = Field(None, description="active AUs among au_set")
    label_set: list[str] = Field(description="expression classes of the source's labels ([] = none)")
    au_set: list[str] = Field(description="AUs the source annotates ([] = none)")
    label_warnings: list[str] = Field(
        default_factory=list, description="bad priors of the manifest row, each dropped on its own, and why"
    )
    conversion: str = Field("", description="how the image becomes 8-bit RGB for cropping ('' = it is already)")
    label_origin: Optional[Literal["source", "review"]] = Field(
        None, description="who gave the prior labels: the source's manifest, or a person in review (seke review)"
    )


class QuarantineRecord(Record):
    path: str
    reason: QuarantineReason
    detail: str


class FaceRecord(Record):
    face_id: str = Field(description="<image id>_<face index>")
    image_id: str
    face_index: int
    n_faces: int
    path: str
    source: str
    subject: Optional[str] = None
    box_x: float
    box_y: float
    box_w: float
    box_h: float
    score: float
    detector: str
    crop: bytes = Field(description="JPEG of the square crop with margin")
    crop_sha256: str
    crop_face_frac: float = Field(description="side of the detector box as a fraction of the crop side")
    prior_expression: Optional[str] = None
    prior_valence: Optional[float] = None
    prior_arousal: Optional[float] = None
    prior_aus: Optional[list[str]] = None
    label_set: list[str]
    au_set: list[str]
    label_origin: Optional[Literal["source", "review"]] = Field(
        None, description="who gave the prior labels: the source's manifest, or a person in review (seke review)"
    )


class CropStatus(Record):
    image_id: str
    path: str
    status: Literal["ok", "no_face", "decode_error"]
    n_faces: int
    detail: str = ""


class RequestRecord(Record):
    request_id: str = Field(description="SHA-256 of the canonical request (messages, schema, image hash)")
    face_id: str
    variant: Literal["primed", "blind", "plain"]
    ask: list[str]
    prompt_version: str
    messages_json: str = Field(description="OpenAI chat messages; the image part is {'type':'image_ref','sha256':...}")
    answer_schema: str = Field(description="JSON schema of the answer")
    image_sha256: str


class SampleRecord(Record):
    face_id: str
    request_id: str
    variant: str
    sample_index: int
    seed: int
    status: Literal["ok", "invalid", "refused", "truncated", "error"]
    error: Optional[str] = None
    raw: Optional[str] = None
    expression: Optional[str] = None
    valence: Optional[float] = None
    arousal: Optional[float] = None
    aus: Optional[list[str]] = None
    au_probs: Optional[list[Optional[float]]] = Field(None, description=f"aligned to {len(AUS)} AUs")
    rationale: Optional[str] = None
    annotator: str
    annotator_version: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    cached: bool = False
    cost_usd: float = Field(0.0, description="what this run paid for the answer (0 when it came from the cache)")
    paid_usd: float = Field(0.0, description="what the answer cost when it was paid for (this run or an earlier one)")


Status = Literal["prior", "accepted", "withheld", "missing"]


Guarantee = Literal["source", "pac", "fdr", "none"]
GUARANTEE_DOC = (
    "what backs the expression: source (a label the source or a person gave), pac (error <= verify.target_error "
    "with probability >= 1 - delta), fdr (expected error <= target_error), none (accepted by "
    "verify.min_confidence: no guarantee; `seke review export` draws faces to label for one)"
)


class Verdict(Record):
    face_id: str
    accepted: bool
    reasons: list[str] = Field(description="why the face is rejected (empty when accepted)")
    withheld: list[str] = Field(default_factory=list, description="'<granularity>:<reason>' for each withheld part")
    confidence: float
    expression: Optional[str] = None
    expression_source: Optional[Literal["prior", "annotator"]] = None
    expression_status: Status = "missing"
    expression_confidence: Optional[float] = Field(None, description="calibrated P(right) of a generated expression")
    guarantee: Optional[Guarantee] = Field(None, description=GUARANTEE_DOC)
    vote_share: Optional[float] = None
    entropy: Optional[float] = None
    n_samples: int
    n_failed: int
    valence: Optional[float] = None
    arousal: Optional[float] = None
    valence_std: Optional[float] = None
    arousal_std: Optional[float] = None
    va_source: Optional[Literal["prior", "annotator"]] = None
    va_status: Status = "missing"
    aus: Optional[list[str]] = None
    au_probs: Optional[list[Optional[float]]] = None
    au_withheld: list[str] = Field(default_factory=list, description="generated AUs whose occurrence is withheld")
    au_status: Literal["prior", "accepted", "partial", "withheld", "missing"] = "missing"
    au_entropy: Optional[float] = None
    au_source: Optional[Literal["prior", "annotator"]] = None
    prior_agreement: Optional[float] = None
    consistency: Optional[float] = None
    rationale: Optional[str] = Field(None, description="the annotator's verified rationale (tasks/method/rationale.py)")
    rationale_sample: Optional[str] = Field(None, description="<request_id>#<sample_index> the rationale came from")
    rationale_status: Optional[Literal["verified", "contradicts", "inconsistent", "none", "not_written"]] = None


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # `from`/`value` is the ShareGPT/LLaVA convention
    from_: str = Field(alias="from", serialization_alias="from")
    value: str


class Image(BaseModel):
    """The layout Hugging Face `datasets` decodes as an Image feature."""

    bytes: Optional[builtins.bytes] = None
    path: Optional[str] = None


AUProbs = create_model("AUProbs", **{a: (Optional[float], None) for a in AUS})  # type: ignore[call-overload]


class FeidRecord(Record):
    id: str
    image: Image
    source: str
    label_set: list[str]
    au_set: list[str]
    expression: str
    expression_confidence: float
    expression_status: Literal["prior", "accepted"]
    guarantee: Guarantee = Field("none", description=GUARANTEE_DOC)
    valence: Optional[float] = Field(description="null when withheld (va_status)")
    arousal: Optional[float]
    va_status: Status
    aus: list[str] = Field(description="active AUs among those kept (prior or accepted)")
    aus_withheld: list[str] = Field(description="AUs whose occurrence is not known (withheld)")
    au_status: Literal["prior", "accepted", "partial", "withheld", "missing"]
    au_probabilities: AUProbs  # type: ignore[valid-type]
    confidence: float
    conversations: list[Turn]
    description_source: Literal["annotator", "template"] = Field(
        description="annotator: the description turn is the annotator's verified rationale"
    )
    rationale_sample: Optional[str] = Field(None, description="<request_id>#<sample_index> of that rationale")
    instructions_version: str = Field(description="the instruction bank's version")
    label_origin: Optional[Literal["source", "review"]] = Field(
        None, description="who gave the prior labels: the source's manifest, or a person in review (seke review)"
    )
    annotator: str
    model: str
    prompt_version: str
    params_hash: str
    knowledge_version: str

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        """Nullable throughout (`datasets` applies the features in the metadata only to fields
        that match its own all-nullable schema), with the Hugging Face features metadata, so
        `load_dataset("parquet", data_dir=<feid>)` decodes `image` as an Image."""
        base = super().arrow_schema()
        schema = pa.schema([pa.field(f.name, all_nullable(f.type), nullable=True) for f in base])
        return schema.with_metadata({b"huggingface": json.dumps({"info": {"features": hf_features(schema)}}).encode()})


def all_nullable(t: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, all_nullable(f.type), nullable=True) for f in t])
    if pa.types.is_list(t):
        return pa.list_(pa.field(t.value_field.name, all_nullable(t.value_type), nullable=True))
    return t


_HF_DTYPE = {"string": "string", "bool": "bool", "int64": "int64", "double": "float64", "binary": "binary"}


def hf_features(schema: pa.Schema, images: tuple[str, ...] = ("image",)) -> dict:
    """Hugging Face `datasets` features, in the dict form every version from 2.16 (LLaMA-Factory's
    oldest) to today reads: a list is `[feature]`, a struct a dict of fields, an image `Image`."""

    def feat(t: pa.DataType):
        if pa.types.is_struct(t):
            return {x.name: feat(x.type) for x in t}
        if pa.types.is_list(t):
            return [feat(t.value_type)]
        return {"dtype": _HF_DTYPE[str(t)], "_type": "Value"}

    return {f.name: {"_type": "Image"} if f.name in images else feat(f.type) for f in schema}
