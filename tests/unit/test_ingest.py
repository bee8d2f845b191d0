"""ingest: the alias table, prior labels, quarantine reasons, content ids, fsspec inputs."""

from __future__ import annotations

import hashlib
import io

import fsspec
import pytest
from badrows import BAD_ROWS
from PIL import Image

from tasks.core import knowledge
from tasks.core.knowledge import UnknownLabel
from tasks.core.params import Ingest
from tasks.core.records import ImageRecord, QuarantineRecord
from tasks.stages.ingest import Entry, ingest, list_entries, parse_labels, resolve

K = knowledge.load()


def _jpeg(color=(200, 120, 90), size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,label",
    [
        ("Happiness", "happy"),
        ("angry", "anger"),
        ("ANGER", "anger"),
        ("sadness", "sad"),
        ("Surprised", "surprise"),
        ("fearful", "fear"),
        ("disgusted", "disgust"),
        ("contemptuous", "contempt"),
        ("neutral", "neutral"),
    ],
)
def test_alias_table_maps_dataset_names(name, label):
    assert K.expression(name) == label


@pytest.mark.parametrize(
    "scheme,code,label",
    [
        ("rafdb", 1, "surprise"),
        ("rafdb", "7", "neutral"),
        ("fer2013", 0, "anger"),
        ("affectnet", 7, "contempt"),
        ("ckplus", 2, "contempt"),
    ],
)
def test_numbered_schemes(scheme, code, label):
    assert K.expression(code, scheme) == label


def test_unknown_label_is_a_clear_error():
    with pytest.raises(UnknownLabel, match="alias table"):
        K.expression("bored")


def test_alias_table_is_one_to_one_and_covers_the_label_set():
    assert set(K.aliases.values()) == set(K.expressions)
    assert K.expressions == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")


@pytest.mark.parametrize("raw,code", [("AU12", "AU12"), ("au6", "AU06"), ("12", "AU12"), ("AU04_r", "AU04")])
def test_au_codes(raw, code):
    assert K.au_code(raw) == code


def test_au_outside_the_17_is_rejected():
    with pytest.raises(UnknownLabel):
        K.au_code("AU16")


def test_parse_labels_records_label_and_au_sets():
    out = parse_labels(
        K, {"expression": "Happiness", "valence": "0.5", "arousal": "0.1", "AU12": "1", "AU06": "0"}, Ingest()
    )
    assert out["prior_expression"] == "happy"
    assert out["label_set"] == list(K.expressions)  # Ingest().label_set is empty: the full label set
    assert out["au_set"] == ["AU06", "AU12"] and out["prior_aus"] == ["AU12"]
    assert (out["prior_valence"], out["prior_arousal"]) == (0.5, 0.1)
    seven = parse_labels(
        K,
        {"expression": "1", "label_scheme": "rafdb", "label_set": "surprise,fear,disgust,happy,sad,anger,neutral"},
        Ingest(),
    )
    assert "contempt" not in seven["label_set"] and seven["prior_expression"] == "surprise"
    assert parse_labels(K, {}, Ingest())["label_set"] == []


@pytest.mark.parametrize("labels,msg,kept", BAD_ROWS)
def test_a_bad_prior_is_dropped_on_its_own_with_a_warning(labels, msg, kept):
    out = parse_labels(K, labels, Ingest())
    assert out["label_warnings"] and any(msg in w for w in out["label_warnings"]), out["label_warnings"]
    assert out[kept] not in (None, []), f"{kept} should survive: {out}"


def test_resolve_refuses_paths_outside_the_root():
    assert resolve("/data/x", "a/b.jpg") == "/data/x/a/b.jpg"
    for bad in ("../y.jpg", "a/../../y.jpg", "/etc/passwd", "s3://other/x.jpg"):
        assert resolve("/data/x", bad) is None


def test_every_bad_file_is_quarantined_with_its_reason(tmp_path):
    good = _jpeg()
    (tmp_path / "ok.jpg").write_bytes(good)
    (tmp_path / "dup.jpg").write_bytes(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    noise = io.BytesIO()
    Image.frombytes("L", (128, 128), bytes(range(256)) * 64).save(noise, format="JPEG")
    whole = noise.getvalue()
    (tmp_path / "trunc.jpg").write_bytes(whole[: len(whole) // 2])  # header intact, data cut
    (tmp_path / "big.jpg").write_bytes(whole)
    entries = [
        Entry(p, {})
        for p in ("ok.jpg", "dup.jpg", "empty.png", "text.jpg", "trunc.jpg", "missing.jpg", "../outside.jpg")
    ]
    entries.append(Entry("big.jpg", {}))
    (tmp_path / "label.jpg").write_bytes(_jpeg((50, 60, 70)))
    entries.append(Entry("label.jpg", {"expression": "bored"}))  # a bad prior: the image stays
    params = Ingest(max_bytes=len(whole) - 1)
    out = list(ingest(entries, str(tmp_path), K, params))
    assert len(out) == len(entries), "no entry may be dropped silently"
    reasons = {r.path: r.reason for r in out if isinstance(r, QuarantineRecord)}
    assert reasons == {
        "dup.jpg": "duplicate",
        "empty.png": "empty",
        "text.jpg": "not_an_image",
        "trunc.jpg": "unreadable",
        "missing.jpg": "unreadable",
        "../outside.jpg": "outside_root",
        "big.jpg": "too_large",
    }
    assert all(r.detail for r in out if isinstance(r, QuarantineRecord))
    img, label = [r for r in out if isinstance(r, ImageRecord)]
    assert img.id == hashlib.sha256(good).hexdigest() and (img.width, img.height) == (64, 64)
    assert label.prior_expression is None and "alias" in label.label_warnings[0]


def test_folder_listing_and_fsspec_memory_url():
    fs = fsspec.filesystem("memory")
    fs.pipe("/imgs/a.jpg", _jpeg((10, 20, 30)))
    fs.pipe("/imgs/sub/b.png", _jpeg((40, 50, 60)))
    fs.pipe("/imgs/readme.txt", b"hello")
    entries = list(list_entries("memory://imgs", "", Ingest().extensions))
    assert sorted(e.path for e in entries) == ["a.jpg", "sub/b.png"]
    recs = list(ingest(entries, "memory://imgs", K, Ingest(source="mem")))
    assert all(isinstance(r, ImageRecord) and r.source == "mem" for r in recs)
    assert {r.uri for r in recs} == {"memory://imgs/a.jpg", "memory://imgs/sub/b.png"}


def test_manifest_csv_with_priors(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "m.csv").write_text("path,expression,source,subject\na.jpg,Happiness,lab,p1\n")
    (rec,) = list(ingest(list_entries(str(tmp_path), str(tmp_path / "m.csv"), []), str(tmp_path), K, Ingest()))
    assert (rec.prior_expression, rec.source, rec.subject) == ("happy", "lab", "p1")


def test_manifest_without_path_column_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,expression\na.jpg,happy\n")
    with pytest.raises(ValueError, match="no `path` column"):
        list(list_entries(str(tmp_path), str(tmp_path / "m.csv"), []))


# ------------------------------------------------------------------ hostile files
def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with a tiny (invalid) body."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _gif_animated() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def test_hostile_files_each_get_a_row_and_nothing_outside_the_root_is_read(tmp_path):
    import os

    root = tmp_path / "in"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET-CONTENT")
    (root / "bomb.png").write_bytes(_png_header(40000, 40000))
    (root / "bomb2.png").write_bytes(_png_header(12000, 9000))  # between 1x and 2x the pixel limit
    (root / "anim.gif").write_bytes(_gif_animated())
    (root / "ok.jpg").write_bytes(_jpeg())
    (root / "garbage.jpg").write_bytes(b"hello, this is plain text and not an image\n" * 3)
    os.symlink(secret, root / "escape.jpg")
    os.symlink(root / "missing.jpg", root / "broken.jpg")
    (root / "photo.txt").write_bytes(_jpeg((1, 2, 3)))  # a JPEG with a name ingest does not list
    skipped: list[str] = []
    entries = list(list_entries(str(root), "", Ingest().extensions, skipped))
    out = {r.path: r for r in ingest(entries, str(root), K, Ingest())}
    assert skipped == ["photo.txt"]
    reason = {p: getattr(r, "reason", "ok") for p, r in out.items()}
    assert reason == {
        "anim.gif": "ok",  # its first frame, recorded
        "bomb.png": "too_large",
        "bomb2.png": "too_large",
        "broken.jpg": "unreadable",
        "escape.jpg": "outside_root",
        "garbage.jpg": "not_an_image",
        "ok.jpg": "ok",
    }
    assert all("SECRET" not in getattr(r, "detail", "") for r in out.values())
    assert "decompression bomb" in out["bomb.png"].detail
    assert out["anim.gif"].conversion.startswith("first frame of 3")
    # deterministic: the same verdicts and details on a second pass
    again = {r.path: r.model_dump() for r in ingest(entries, str(root), K, Ingest())}
    assert again == {p: r.model_dump() for p, r in out.items()}


def test_an_unreadable_file_is_quarantined(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    root = tmp_path / "in"
    root.mkdir()
    f = root / "locked.jpg"
    f.write_bytes(_jpeg())
    f.chmod(0)
    (r,) = ingest([Entry("locked.jpg", {})], str(root), K, Ingest())
    assert r.reason == "unreadable" and "PermissionError" in r.detail


def test_a_file_that_vanishes_mid_run_is_quarantined(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (r,) = ingest([Entry("gone.jpg", {})], str(root), K, Ingest())
    assert r.reason == "unreadable" and "gone" in r.detail


@pytest.mark.parametrize(
    "mode,note",
    [("CMYK", "CMYK converted"), ("I;16", "scaled to 8-bit"), ("LA", "transparency dropped"), ("RGBA", "transparency")],
)
def test_usable_modes_are_converted_for_the_crop_and_the_conversion_is_recorded(tmp_path, mode, note):
    """The crop stage's decoder turns each into 8-bit RGB with the picture intact (16-bit grey
    is scaled, not clipped to white), and ingest records how."""
    from tasks.infra.detect import decode

    base = Image.frombytes("L", (32, 32), bytes(range(0, 256, 8)) * 32)
    import numpy as np

    wide = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257)  # 16-bit grey, full range
    im = {"CMYK": base.convert("CMYK"), "I;16": wide}.get(mode)
    im = im if im is not None else base.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    (tmp_path / "x.img").write_bytes(buf.getvalue())
    (rec,) = list(ingest([Entry("x.img", {})], str(tmp_path), K, Ingest()))
    assert isinstance(rec, ImageRecord) and note in rec.conversion
    rgb = decode(buf.getvalue())
    assert rgb.mode == "RGB" and rgb.size == (32, 32)
    grey = rgb.convert("L")
    assert abs(grey.getpixel((31, 0)) - base.getpixel((31, 0))) <= 12 and grey.getpixel((0, 0)) <= 12
