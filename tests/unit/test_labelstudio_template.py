"""The Label Studio end-to-end test starts its server on a migrated, empty database
(tests/labelstudio.py): the template must be this lock's, and hold no one's account."""

from __future__ import annotations

import gzip
import sqlite3

import labelstudio


def test_the_label_studio_template_is_the_locked_versions_and_empty(tmp_path):
    t = labelstudio.TEMPLATE
    assert t.exists(), "tests/label-studio.lock changed: run `python tests/labelstudio.py template`"
    assert [p.name for p in t.parent.glob("label-studio-*.sqlite3.gz")] == [t.name], "a stale template is left"
    db = tmp_path / labelstudio.DB
    db.write_bytes(gzip.decompress(t.read_bytes()))
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from django_migrations").fetchone()[0] > 300
        for table in ("htx_user", "authtoken_token", "django_session", "organization"):
            assert c.execute(f"select count(*) from {table}").fetchone()[0] == 0, table
