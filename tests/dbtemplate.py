"""Migrated, empty databases kept in tests/ for the servers the end-to-end tests start
(Prefect's: tests/prefectdb.py; Label Studio's: tests/labelstudio.py), gzipped and named after
the version that migrated them."""

from __future__ import annotations

import gzip
import os
from pathlib import Path


def restore(template: Path, dest: Path) -> None:
    """Write the template's database to `dest`, whole or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(gzip.decompress(template.read_bytes()))
    os.replace(tmp, dest)


def keep(db: Path, template: Path, stale: str) -> Path:
    """Keep the database `db` as `template`, removing the templates of other versions (`stale`,
    a glob beside it)."""
    for old in template.parent.glob(stale):
        old.unlink()
    template.write_bytes(gzip.compress(db.read_bytes(), mtime=0))
    return template
