"""The frames a stage validates: its rows' light columns, small enough to keep for any size."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pyarrow as pa

from expectations.suites import HEAVY, au_frame


def light_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows without their heavy columns (crops, raw answers, conversations)."""
    return pd.DataFrame([{k: v for k, v in r.items() if k not in HEAVY} for r in rows])


def au_codes_frame(rows: list[dict], col: str = "aus") -> pd.DataFrame:
    return au_frame(pd.DataFrame({col: [r.get(col) for r in rows]}), col)


class Light:
    """The light (non-HEAVY) columns of a stage's rows, kept column-wise in Arrow chunks for
    validation and metrics, so memory stays bounded as the data grows: a few hundred bytes
    per row (no crops, raw answers or conversations), never the row dicts themselves. The
    AU codes of `au_col` are counted, not listed (the suite only checks that each code is
    known). `frame()` keeps nested columns as Arrow-backed pandas columns (no per-row Python
    objects); the suites check those only for presence."""

    def __init__(self, record, au_col: str | None = None, chunk: int = 8192):
        self.schema = pa.schema([f for f in record.arrow_schema() if f.name not in HEAVY])
        self.au_col, self.chunk = au_col, chunk
        self.au_codes: Counter = Counter()
        self._buf: list[dict] = []
        self._chunks: list = []
        self.n = 0

    def add(self, row: dict) -> None:
        self._buf.append({c: row.get(c) for c in self.schema.names})
        if self.au_col and row.get(self.au_col):
            self.au_codes.update(row[self.au_col])
        self.n += 1
        if len(self._buf) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._chunks.append(pa.Table.from_pylist(self._buf, schema=self.schema))
            self._buf = []

    def table(self) -> pa.Table:
        self._flush()
        t = pa.concat_tables(self._chunks) if self._chunks else self.schema.empty_table()
        self._chunks = [t]
        return t

    def column(self, name: str) -> list:
        return self.table().column(name).to_pylist()

    def frame(self) -> pd.DataFrame:
        nested = (pa.types.is_list, pa.types.is_struct, pa.types.is_large_list)
        return self.table().to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if any(f(t) for f in nested) else None)

    def aus(self) -> pd.DataFrame:
        return pd.DataFrame({"au": pd.Series(sorted(self.au_codes), dtype="object")})
