"""Response cache: raw answers keyed by the full request, on any fsspec URL.

Key of one sample = sha256(annotator signature, request id, sample index, seed). The
request id already hashes the messages, the schema and the image bytes. Raw text is stored,
not parsed fields, so a parser change re-parses without paying again.

Storage is append-only JSONL segments under `<root>/<signature hash>/`. On a local disk one
segment per process is appended and flushed after every call, so `kill -9` loses nothing
that had succeeded. On object stores (no append) each call's entries become one small
segment object. Both are read by the same loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Iterable

import fsspec

from tasks.annotators.base import CallResult


def sample_key(signature_hash: str, request_id: str, index: int, seed: int) -> str:
    return hashlib.sha256(f"{signature_hash}|{request_id}|{index}|{seed}".encode()).hexdigest()


class ResponseCache:
    def __init__(self, root: str, signature_hash: str):
        self.root = f"{root.rstrip('/')}/{signature_hash}"
        self.signature_hash = signature_hash
        self.fs, self.path = fsspec.core.url_to_fs(self.root)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.entries: dict[str, dict] = {}
        self._fh = None
        self._load()

    def _load(self) -> None:
        if not self.fs.exists(self.path):
            return
        for seg in sorted(self.fs.glob(f"{self.path}/*.jsonl")):
            with self.fs.open(seg, "rt") as fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line after a crash
                    self.entries[e["key"]] = e

    def get(self, request_id: str, index: int, seed: int) -> dict | None:
        return self.entries.get(sample_key(self.signature_hash, request_id, index, seed))

    def put(self, result: CallResult) -> list[dict]:
        """Store every answer the call returned (a partly failed call keeps the answers it
        paid for); returns the stored entries."""
        n = max(len(result.answers), 1)
        new = []
        for a in result.answers:
            e = {
                "key": sample_key(self.signature_hash, result.call.request_id, a.index, a.seed),
                "request_id": result.call.request_id,
                "index": a.index,
                "seed": a.seed,
                "text": a.text,
                "finish_reason": a.finish_reason,
                "refusal": a.refusal,
                # usage and cost are per call; spread evenly over its samples
                "tokens_in": result.tokens_in / n,
                "tokens_out": result.tokens_out / n,
                "latency_ms": result.latency_ms,
                "cost_usd": result.cost_usd / n,
            }
            self.entries[e["key"]] = e
            new.append(e)
        self._write(new)
        return new

    def _write(self, entries: Iterable[dict]) -> None:
        data = "".join(json.dumps(e) + "\n" for e in entries)
        if not data:
            return
        if self.local:
            if self._fh is None:
                os.makedirs(self.path, exist_ok=True)
                self._fh = open(f"{self.path}/seg-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl", "a")
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        else:
            with self.fs.open(f"{self.path}/seg-{uuid.uuid4().hex}.jsonl", "wt") as fh:
                fh.write(data)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
