"""Pipelined adaptive sampling: every face advances on its own (`Pipeline`), so the
annotator's concurrency window stays full while faces are measured and decided.

The steps of one face (its rounds, its stopping rule, its verification call, the records)
are `tasks.method.sampling`; this module schedules them. `sample_stream` runs over a
stream of faces with a bounded window; `sample_batch` over one list of faces.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterator

from tasks.annotators.base import Annotator
from tasks.core.calls import WAIT, Call
from tasks.core.knowledge import Knowledge
from tasks.core.params import Params
from tasks.infra.cache import ResponseCache
from tasks.method.evidence import VERIFY_VARIANTS
from tasks.method.sampling import (
    Tally,
    absorb,
    absorb_verification,
    call_for,
    is_open,
    limit,
    verification_calls,
)


class Feed:
    """The calls of a pipelined run, handed to `Annotator.run` as they are made. Thread-safe:
    the sampler puts calls while the annotator (maybe in its own thread) takes them.
    `next()` gives a call, `WAIT` when none is ready yet but more may come, and stops once
    the feed is closed and empty."""

    def __init__(self):
        self._q: collections.deque[Call] = collections.deque()
        self.closed = False

    def put(self, calls: list[Call]) -> None:
        self._q.extend(calls)

    def close(self) -> None:
        self.closed = True

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self._q.popleft()
        except IndexError:
            if self.closed and not self._q:
                raise StopIteration from None
            return WAIT


@dataclass
class _Face:
    face: dict
    reqs: list[dict]
    rounds: int = 0
    pending: int = 0
    verifying: bool = False
    done: bool = False


class Pipeline:
    """Adaptive Monte Carlo sampling with no round barrier: each face advances on its own.
    When a face's answers are in, it is measured at once and either stops, asks for `dk`
    more, or goes to its verification call, while other faces' calls keep the annotator's
    concurrency window full. A face's sequence of sample indices and seeds depends only on
    its own answers, so the samples are exactly those of round-by-round sampling."""

    def __init__(self, faces, ann: Annotator, cache: ResponseCache, params: Params, k: Knowledge, tally: Tally, window):
        self.src, self.ann, self.cache, self.p, self.k, self.tally = iter(faces), ann, cache, params, k, tally
        self.window, self.feed = max(1, window), Feed()
        self.state: dict[str, _Face] = {}
        self.order: collections.deque[str] = collections.deque()  # admitted, in input order
        self.drawn: dict[str, list[dict]] = {}
        self.meta: dict[str, tuple[str, str, str]] = {}  # verification request id -> (face, proposal, variant)
        self.exhausted = False

    def run(self) -> Iterator[dict]:
        self._admit()
        yield from self._emit()
        if self.feed.closed:
            return
        for res in self.ann.run(self.feed):
            if res.call.request_id in self.meta:
                fid = absorb_verification(res, self.meta, self.ann, self.cache, self.drawn, self.k, self.tally)
            else:
                fid = res.call.face_id
                st = self.state[fid]
                req = next(r for r in st.reqs if r["request_id"] == res.call.request_id)
                absorb(res, req, self.ann, self.cache, self.drawn, self.tally)
            st = self.state[fid]
            st.pending -= 1
            if st.pending == 0:
                self._advance(fid)
            self._admit()
            yield from self._emit()

    def _admit(self) -> None:
        """Take new faces while fewer than `window` are active (and the buffer of finished
        faces waiting for an earlier one stays bounded); close the feed when all are done."""
        active = sum(1 for f in self.order if not self.state[f].done)
        while not self.exhausted and active < self.window and len(self.order) < 8 * self.window:
            nxt = next(self.src, None)
            if nxt is None:
                self.exhausted = True
                break
            f, reqs = nxt
            fid = f["face_id"]
            self.state[fid], self.drawn[fid] = _Face(f, reqs or []), []
            self.order.append(fid)
            self._advance(fid)
            active += not self.state[fid].done
        if self.exhausted and all(self.state[f].done for f in self.order):
            self.feed.close()

    def _advance(self, fid: str) -> None:
        """A face with no call in flight: its next round, its verification call, or done."""
        st, sp = self.state[fid], self.p.sample
        while not st.done:
            got = self.drawn[fid]
            if not st.verifying and st.reqs and (st.rounds == 0 or is_open(st.face, st.reqs, got, sp, self.k)):
                size = sp.k0 if st.rounds == 0 else sp.dk
                st.rounds += 1
                calls = self._round(st, size)
            elif not st.verifying:
                st.verifying = True
                calls = verification_calls(st.face, st.reqs, got, self.ann, self.cache, self.p, self.k, self)
            else:
                st.done = True
                return
            if calls:
                st.pending = len(calls)
                self.feed.put(calls)
                return

    def _round(self, st: _Face, size: int) -> list[Call]:
        """`size` more answers per request of one face (cached answers are taken at once)."""
        calls, fid, sp = [], st.face["face_id"], self.p.sample
        for req in st.reqs:
            got = self.drawn[fid]
            have = sum(1 for x in got if x["request_id"] == req["request_id"])
            idx = tuple(range(have, min(have + size, limit(req, sp, st.face, got))))
            if idx and (c := call_for(st.face, req, idx, sp, self.ann, self.cache, self.drawn, self.tally)):
                calls.append(c)
        return calls

    def _emit(self) -> Iterator[dict]:
        """The finished faces at the head of the input order, each face's answers grouped."""
        while self.order and self.state[self.order[0]].done:
            fid = self.order.popleft()
            got = sorted(self.drawn.pop(fid), key=lambda x: (x["variant"], x["request_id"], x["sample_index"]))
            del self.state[fid]
            self.tally.per_face_k.append(
                max((x["sample_index"] + 1 for x in got if x["variant"] not in VERIFY_VARIANTS), default=0)
            )
            yield from got


def sample_stream(faces, ann: Annotator, cache: ResponseCache, params: Params, k: Knowledge, tally: Tally, window: int):
    """Pipelined adaptive sampling over (face, its requests) pairs; yields SampleRecord dicts
    grouped by face, in the faces' order (`Pipeline`). At most `window` faces are active."""
    return Pipeline(faces, ann, cache, params, k, tally, window).run()


def sample_batch(
    faces: list[dict],
    requests: dict[str, list[dict]],
    ann: Annotator,
    cache: ResponseCache,
    params: Params,
    k: Knowledge,
    tally: Tally,
) -> Iterator[dict]:
    """`sample_stream` over one batch of faces, all of them active at once."""
    pairs = [(f, requests.get(f["face_id"]) or []) for f in faces]
    return sample_stream(pairs, ann, cache, params, k, tally, window=len(pairs))
