"""Response cache: raw answers keyed by the full request, on any fsspec URL.

Key of one sample = sha256(annotator signature, request id, sample index, seed). The
request id already hashes the messages, the schema and the image bytes; the signature of an
HTTP annotator includes a hash of its endpoint's base URL, so two servers that serve the
same model name never share answers. Raw text is stored, not parsed fields, so a parser
change re-parses without paying again.

Layout under `<root>/<signature hash>/`:

- `live-<host>-<pid>-<id>.jsonl`: on a local disk, the segment one process appends to, flushed and
  fsynced after every call, so `kill -9` loses nothing that had succeeded. `close()` renames
  it to `seg-*.jsonl`.
- `seg-<id>.jsonl`: a closed segment. On object stores (no append) each call's entries are
  written as one such object at once, so a crash there loses nothing either.
- `pack-<content hash>.parquet`: compacted entries (`compact()`: the sample stage runs it at
  its end, `seke cache compact` by hand). Start-up then reads one Parquet object instead of
  one object per call.

`compact()` writes the new pack first and only then deletes what it merged: closed segments
and older packs (never a live segment, except one whose process on this host is gone, or one untouched for
`stale_s`: what a killed process left behind). A crash in between leaves entries twice, which is harmless: entries
are keyed, and the loader keeps one. Two compactions at once each delete only what they read.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import socket
import time
import uuid
from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.calls import CallResult
from tasks.infra.io import put_whole

COLUMNS = {
    "key": pa.string(),
    "request_id": pa.string(),
    "index": pa.int64(),
    "seed": pa.int64(),
    "text": pa.string(),
    "finish_reason": pa.string(),
    "refusal": pa.string(),
    "tokens_in": pa.float64(),
    "tokens_out": pa.float64(),
    "latency_ms": pa.float64(),
    "cost_usd": pa.float64(),
}
SCHEMA = pa.schema(list(COLUMNS.items()))


def sample_key(signature_hash: str, request_id: str, index: int, seed: int) -> str:
    return hashlib.sha256(f"{signature_hash}|{request_id}|{index}|{seed}".encode()).hexdigest()


def _host() -> str:
    """This host's name as it appears in a live segment's name (no "-": the name's separator)."""
    return socket.gethostname().replace("-", "_")


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class CacheFull(OSError):
    """Answers that arrived could not be written to the response cache: its disk is full."""

    def __init__(self, n: int, root: str):
        super().__init__(
            errno.ENOSPC,
            f"{n} answers that arrived could not be written to the response cache {root}; a re-run pays for them again",
            root,
        )
        self.unsaved = n


class ResponseCache:
    def __init__(self, root: str, signature_hash: str):
        self.base = root.rstrip("/")
        self.root = f"{self.base}/{signature_hash}"
        self.signature_hash = signature_hash
        self.fs, self.path = fsspec.core.url_to_fs(self.root)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.entries: dict[str, dict] = {}
        self._packs: list[pa.Table] = []
        self._packed: dict[str, tuple[int, int]] = {}  # key -> (pack, row): rows become dicts on first use
        self._cols: list[dict | None] = []
        self._read: set[str] = set()  # packs and closed segments read (they never change)
        self._fh = None
        self._live: str | None = None
        self._unsaved = ""  # JSON lines a full disk held back
        self.loaded: dict[str, list[str]] = {"pack": [], "seg": [], "live": []}
        self._load()

    # reading --------------------------------------------------------------------------
    def _listing(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"pack": [], "seg": [], "live": []}
        if not self.fs.exists(self.path):
            return out
        for f in sorted(self.fs.ls(self.path, detail=False)):
            n = _name(f)
            kind = n.split("-", 1)[0]
            if kind in out and n.endswith(".parquet" if kind == "pack" else ".jsonl"):
                out[kind].append(f)
        return out

    def _load(self) -> None:
        """Read what is stored and not read yet: new packs and closed segments, and every
        live segment but this process's own (its entries are in memory already)."""
        listing = self._listing()
        packs = [f for f in listing["pack"] if f not in self._read]
        if packs:
            blobs = self.fs.cat(packs)  # one batched request on object stores
            for f in packs:
                t = pq.read_table(io.BytesIO(blobs[f]))
                i = len(self._packs)
                self._packs.append(t)
                self._cols.append(None)
                self._packed.update(zip(t.column("key").to_pylist(), ((i, r) for r in range(t.num_rows))))
        own = self._live and f"{self.path}/{_name(self._live)}"
        files = [f for f in listing["seg"] if f not in self._read] + [f for f in listing["live"] if f != own]
        if files:
            blobs = self.fs.cat(files)
            for f in files:
                for line in blobs[f].decode("utf-8", "replace").splitlines():
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn last line after a crash
                    self.entries[e["key"]] = e
        self._read.update(packs + listing["seg"])
        self.loaded = listing

    def __len__(self) -> int:
        return len(self._packed.keys() | self.entries.keys())

    def _get_key(self, key: str) -> dict | None:
        e = self.entries.get(key)
        if e is None and key in self._packed:
            i, row = self._packed[key]
            if self._cols[i] is None:  # a pack's columns become Python lists on its first hit
                self._cols[i] = self._packs[i].to_pydict()
            e = {c: v[row] for c, v in self._cols[i].items()}
            self.entries[key] = e
        return e

    def get(self, request_id: str, index: int, seed: int) -> dict | None:
        return self._get_key(sample_key(self.signature_hash, request_id, index, seed))

    # writing --------------------------------------------------------------------------
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
        """Append entries; on a full disk keep them (and any kept before) in memory, and write
        them with the next call's entries or at `close()`, once space has come back."""
        data = self._unsaved + "".join(json.dumps(e) + "\n" for e in entries)
        if not data:
            return
        try:
            if self.local:
                if self._fh is None:
                    os.makedirs(self.path, exist_ok=True)
                    self._live = f"{self.path}/live-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
                    self._fh = open(self._live, "ab", buffering=0)
                view = memoryview(data.encode())
                while view:  # an unbuffered write may write part, and fail on the rest
                    view = view[self._fh.write(view) :]
                os.fsync(self._fh.fileno())
            else:
                with self.fs.open(f"{self.path}/seg-{uuid.uuid4().hex}.jsonl", "wt") as fh:
                    fh.write(data)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._unsaved = data
            self._end_segment()  # a torn last line stays there; the next write starts a new segment
            return
        self._unsaved = ""

    @property
    def unsaved(self) -> int:
        """Answers that arrived but are only in memory (the disk was full when they came)."""
        return self._unsaved.count("\n")

    def _end_segment(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
                os.replace(self._live, self._live.replace("/live-", "/seg-"))
            except OSError:
                pass  # a live segment whose process is gone: compaction takes it
            self._fh = self._live = None

    def close(self) -> None:
        """Write what a full disk held back, then close this process's segment. Raises
        CacheFull, naming the cache and counting the answers, if they still cannot be written."""
        if self._unsaved:
            self._write(())
        self._end_segment()
        if self._unsaved:
            raise CacheFull(self.unsaved, self.root)

    # compaction -----------------------------------------------------------------------
    def compact(self, stale_s: float = 86_400) -> dict:
        """Merge every pack and closed segment (and live segments no process will write
        again) into one pack; returns what it did. Nothing to merge is a no-op."""
        self.close()
        listing = self._listing()
        stale = [f for f in listing["live"] if self._stale(f, stale_s)]
        if len(listing["pack"]) <= 1 and not listing["seg"] and not stale:
            return {"packs": len(listing["pack"]), "merged": 0}
        self._load()  # what was stored since this cache was opened
        merged = self.loaded["pack"] + self.loaded["seg"] + [f for f in self.loaded["live"] if f in stale]
        table = self._table()
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        target = f"{self.path}/pack-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        put_whole(f"{self.root}/{_name(target)}", data)  # whole or not at all
        gone = [f for f in merged if _name(f) != _name(target)]
        if self.local:
            for f in gone:
                try:
                    self.fs.rm_file(f)
                except FileNotFoundError:
                    pass  # another compaction merged it first (into a pack of its own)
        elif gone:
            self.fs.rm(gone)  # batched deletes; an object already gone is no error on S3
        return {"packs": len(listing["pack"]), "merged": len(gone), "entries": table.num_rows}

    def _stale(self, f: str, stale_s: float) -> bool:
        """A live segment no process will write again: its writer (on this host) is gone, or
        it is untouched for `stale_s`."""
        if not self.local:
            return False
        parts = _name(f).split("-")
        if len(parts) >= 4 and parts[1] == _host():
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                pass
        return time.time() - os.path.getmtime(f) > stale_s

    def _table(self) -> pa.Table:
        parts = [t.select(list(COLUMNS)).cast(SCHEMA) for t in self._packs]
        extra = [e for k, e in self.entries.items() if k not in self._packed]
        if extra:
            parts.append(pa.Table.from_pylist([{c: e.get(c) for c in COLUMNS} for e in extra], schema=SCHEMA))
        if not parts:
            return SCHEMA.empty_table()
        t = pa.concat_tables(parts)
        # one row per key: two packs (left by concurrent compactions) may hold the same answer
        keys = t.column("key").to_pylist()
        last = {k: i for i, k in enumerate(keys)}
        return t.take(pa.array(sorted(last.values()))).sort_by("key")


def compact_all(root: str, stale_s: float = 86_400) -> dict[str, dict]:
    """Compact every signature's cache under `root` (the sample stage's last step)."""
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        return {}
    out = {}
    for d in sorted(fs.ls(path, detail=False)):
        if fs.isdir(d):
            sig = _name(d)
            out[sig] = ResponseCache(root, sig).compact(stale_s)
    return out
