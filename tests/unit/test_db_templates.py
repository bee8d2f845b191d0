"""The servers the end-to-end tests start (Prefect's, Label Studio's) begin on migrated, empty
databases kept in tests/ (tests/prefectdb.py, tests/labelstudio.py): each must be the locked
version's, the only one, and hold nobody's data."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import labelstudio
import prefectdb


def _open(template: Path, tmp_path: Path) -> sqlite3.Connection:
    db = tmp_path / template.name.removesuffix(".gz")
    db.write_bytes(gzip.decompress(template.read_bytes()))
    return sqlite3.connect(db)


def _filled(c: sqlite3.Connection) -> set[str]:
    tables = [r[0] for r in c.execute("select name from sqlite_master where type='table'")]
    return {t for t in tables if c.execute(f'select count(*) from "{t}"').fetchone()[0]}


def test_the_label_studio_template_is_the_locked_versions_and_empty(tmp_path):
    t = labelstudio.TEMPLATE
    assert t.exists(), "tests/label-studio.lock changed: run `python tests/labelstudio.py template`"
    assert [p.name for p in t.parent.glob("label-studio-*.sqlite3.gz")] == [t.name], "a stale template is left"
    with _open(t, tmp_path) as c:
        assert c.execute("select count(*) from django_migrations").fetchone()[0] > 300
        for table in ("htx_user", "authtoken_token", "django_session", "organization", "project"):
            assert c.execute(f'select count(*) from "{table}"').fetchone()[0] == 0, table


def test_the_prefect_template_is_the_installed_versions_and_empty(tmp_path):
    t = prefectdb.committed()
    assert t.exists(), "Prefect's version changed: run `python tests/prefectdb.py template`"
    assert [p.name for p in t.parent.glob("prefect-*.db.gz")] == [t.name], "a stale template is left"
    with _open(t, tmp_path) as c:
        assert _filled(c) == {"alembic_version"}  # migrated, and no flow run, block or deployment
