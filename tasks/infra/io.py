"""Reading and writing records as Parquet on any fsspec URL (the edges of every stage).

Writes go to a temporary file that is renamed into place only when the stage succeeds, so
a failed stage (or failed validation) never leaves a half-written output for DVC to cache.
Reads stream row-group batches so memory stays flat as datasets grow.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.records import Record


def fs_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


class RecordWriter:
    """Append records in row groups; `commit()` publishes the file atomically."""

    def __init__(self, url: str, cls: type[Record], row_group: int = 1024):
        self.url, self.cls, self.row_group = url, cls, row_group
        self.schema = cls.arrow_schema()
        self.fs, self.path = fs_path(url)
        self.tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._fh = self.fs.open(self.tmp, "wb")
        self._w = pq.ParquetWriter(self._fh, self.schema, compression="zstd")
        self._buf: list[dict] = []
        self.count = 0

    def write(self, rec: Record | dict) -> None:
        self._buf.append(rec.model_dump(by_alias=True) if isinstance(rec, Record) else rec)
        if len(self._buf) >= self.row_group:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._w.write_table(pa.Table.from_pylist(self._buf, schema=self.schema))
            self.count += len(self._buf)
            self._buf = []

    def commit(self) -> str:
        self.flush()
        self._w.close()
        self._fh.close()
        if _is_local(self.fs):  # an atomic rename: a reader sees the old file or the new, never neither
            os.replace(self.tmp, self.path)
        else:  # an object store replaces the object whole (copy, then the temporary is deleted)
            self.fs.mv(self.tmp, self.path)
        return self.url

    def abort(self) -> None:
        try:
            self._w.close()
            self._fh.close()
        finally:
            if self.fs.exists(self.tmp):
                self.fs.rm(self.tmp)


@contextmanager
def writers(*specs: tuple[str, type[Record]]):
    """Open several writers; commit all on success, abort all on any exception."""
    ws = [RecordWriter(u, c) for u, c in specs]
    try:
        yield ws
    except BaseException:
        for w in ws:
            w.abort()
        raise


def iter_batches(url: str, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[list[dict]]:
    """Stream a Parquet file as lists of dicts, one row-group-sized batch at a time."""
    fs, path = fs_path(url)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        for b in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield b.to_pylist()


def iter_rows(url: str, columns: list[str] | None = None, batch_size: int = 1024) -> Iterator[dict]:
    for batch in iter_batches(url, columns, batch_size):
        yield from batch


def count_rows(url: str) -> int:
    fs, path = fs_path(url)
    with fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = fs_path(url)
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def write_json(path: str | Path, obj: dict) -> None:
    """A JSON file on any fsspec URL (or local path)."""
    fs, p = fs_path(str(path))
    fs.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    with fs.open(p, "w") as fh:
        fh.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def put_whole(url: str, data: bytes) -> None:
    """Write `data` at `url` so that a reader (or a crash) sees all of it or none: locally a
    synced temporary file renamed into place; on an object store one PUT."""
    fs, p = fs_path(url)
    if _is_local(fs):
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    else:
        fs.pipe_file(p, data)


def read_bytes(url: str) -> bytes:
    fs, p = fs_path(url)
    with fs.open(p, "rb") as fh:
        return fh.read()


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    import csv

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in columns})
