"""The incremental flow's inbox (tasks/tools/incremental.py) and ingest reading it, without
DVC or Prefect: what is brought in, what is refused and why, and that a second look at the
same location brings nothing twice."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from simserver import face_image

from tasks.core.params import Params
from tasks.stages import ingest
from tasks.tools.incremental import IMAGES, MANIFEST, REFUSED, land, write_empty


def params(tmp: Path) -> Params:
    return Params.model_validate(
        {
            "paths": {
                "input": str(tmp / "input"),
                "inbox": str(tmp / "inbox"),
                "ingest": str(tmp / "ingest"),
                "metrics": str(tmp / "metrics"),
                "plots": str(tmp / "plots"),
            }
        }
    )


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path))) if path.exists() else []


@pytest.fixture
def location(tmp_path) -> Path:
    loc = tmp_path / "incoming"
    loc.mkdir()
    (loc / "a.jpg").write_bytes(face_image(1))
    (loc / "b.JPG").write_bytes(face_image(2))
    (loc / "b_copy.jpg").write_bytes(face_image(2))  # the same bytes under another name
    (loc / "empty.png").write_bytes(b"")
    (loc / "notes.txt").write_text("not an image")
    (tmp_path / "secret.jpg").write_bytes(face_image(9) + b"SECRET-BYTES")
    (loc / "out.jpg").symlink_to(tmp_path / "secret.jpg")  # outside the location: never read
    (tmp_path / "input").mkdir()
    write_empty(tmp_path / "inbox")
    return loc


def test_land_brings_each_new_image_once_and_says_why_for_the_rest(tmp_path, location):
    p = params(tmp_path)
    got = land(p, str(location))
    inbox = tmp_path / "inbox"
    m = rows(inbox / MANIFEST)
    assert [r["origin"].rsplit("/", 1)[1] for r in m] == ["a.jpg", "b.JPG"]
    assert all((inbox / r["path"]).read_bytes() == (location / r["origin"].rsplit("/", 1)[1]).read_bytes() for r in m)
    assert all(r["path"] == f"{IMAGES}/{r['sha256']}{Path(r['origin']).suffix.lower()}" for r in m)
    refused = {Path(r["origin"]).name: r["reason"] for r in rows(inbox / REFUSED)}
    assert refused == {"empty.png": "empty", "out.jpg": "outside_root"}
    assert not any(b"SECRET" in f.read_bytes() for f in inbox.rglob("*") if f.is_file())
    assert got.already == 1 and got.skipped_by_extension == ["notes.txt"]

    again = land(p, str(location))  # nothing new: nothing read, nothing written
    assert again.new == [] and again.refused == [] and again.already == 5
    assert rows(inbox / MANIFEST) == m


def test_a_killed_landing_is_finished_by_the_next_one(tmp_path, location):
    p = params(tmp_path)
    images = tmp_path / "inbox" / IMAGES
    images.mkdir(parents=True)
    (images / ".deadbeef.jpg.tmp-123").write_bytes(b"half a copy")  # a copy cut short
    (images / ("0" * 64 + ".jpg")).write_bytes(b"a copy whose origin is gone")
    land(p, str(location))
    listed = {Path(r["path"]).name for r in rows(tmp_path / "inbox" / MANIFEST)}
    assert {f.name for f in images.iterdir()} == listed and len(listed) == 2


def test_ingest_reads_the_inbox_next_to_the_input(tmp_path, location):
    p = params(tmp_path)
    (tmp_path / "input" / "c.jpg").write_bytes(face_image(3))
    land(p, str(location))
    entries = list(ingest.inbox_entries(p.paths.inbox))
    assert [e.path.startswith(f"inbox/{IMAGES}/") for e in entries] == [True, True]
    ingest.run(p)
    import pyarrow.parquet as pq

    got = pq.read_table(tmp_path / "ingest" / "images.parquet").to_pylist()
    assert sorted(r["path"] for r in got) == sorted(["c.jpg", *(e.path for e in entries)])
    # an image already ingested from the input is not brought in again
    (location / "c_again.jpg").write_bytes(face_image(3))
    assert land(p, str(location)).new == []
