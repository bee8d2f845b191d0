"""What an annotator is asked and what it answers: the data every layer passes around
(the response cache stores `CallResult`s, the method builds `Call`s, annotators answer them).

A `Call` asks for several samples (`indices`) of one request about one face crop; a
`CallResult` holds the raw text of each sample (`RawAnswer`). `WAIT` is what a pipelined call
feed gives when no call is ready yet (`tasks.annotators.base` has the contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field

WAIT = object()  # from a pipelined call feed: no call ready yet, more may come (tasks.method.sampling.Feed)


@dataclass(frozen=True)
class Call:
    request_id: str
    face_id: str
    messages: list[dict]  # image part: {"type": "image_ref", "sha256": ...}
    schema: dict
    ask: tuple[str, ...]
    image: bytes  # the JPEG crop the image_ref points to
    indices: tuple[int, ...]  # sample indices wanted
    seeds: tuple[int, ...]  # one per index
    face_frac: float | None = None  # detector box side / crop side (crop.margin); None = unknown


@dataclass
class RawAnswer:
    index: int
    seed: int
    text: str | None
    finish_reason: str | None = None
    refusal: str | None = None


@dataclass
class CallResult:
    call: Call
    answers: list[RawAnswer] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None  # the whole call failed (after the annotator's own retries)
