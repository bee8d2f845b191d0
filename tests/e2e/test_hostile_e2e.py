"""A corpus of bad files and bad manifest rows, generated here (no committed binaries), through a
real `dvc repro`: the run completes, and every file and every row ends with a status and a
reason (quarantined, converted, or a bad prior dropped with a warning)."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from badrows import BAD_ROWS
from PIL import Image
from project import make_project, project_env, run

pytestmark = pytest.mark.e2e


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _img(seed: int, mode: str = "RGB", fmt: str = "PNG", size: int = 48, **save) -> bytes:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    im = {"I;16": lambda: Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)}.get(
        mode, lambda: base.convert(mode)
    )()
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def _anim() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (24, 24), (70 * i, 20, 90)) for i in range(3)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _palette_transparent() -> bytes:
    im = Image.new("P", (24, 24), 1)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def corpus(root: Path) -> dict[str, str]:
    """Write the bad files under `root/bad/`; return manifest path -> the outcome expected
    (a quarantine reason, or `converted:<words of the conversion>`)."""
    bad = root / "bad"
    bad.mkdir()
    noisy = _img(1, size=400)  # incompressible: larger than ingest.max_bytes below
    truncated = _img(2, fmt="JPEG", size=200)
    files = {
        "empty.png": (b"", "empty"),
        "text.jpg": (b"plain text, not a picture\n" * 4, "not_an_image"),
        "magic_then_garbage.png": (b"\x89PNG\r\n\x1a\n" + os.urandom(64), "not_an_image"),
        "truncated.jpg": (truncated[: len(truncated) // 2], "unreadable"),
        "bomb_header.png": (_png_header(40000, 40000), "too_large"),
        "bomb_pixels.png": (_png_header(12000, 9000), "too_large"),
        "too_many_bytes.png": (noisy, "too_large"),
        "original.png": (_img(3), "ok"),
        "same_bytes.png": (_img(3), "duplicate"),
        "animated.gif": (_anim(), "converted:first frame"),
        "cmyk.tif": (_img(4, "CMYK", "TIFF"), "converted:CMYK"),
        "grey16.png": (_img(5, "I;16"), "converted:8-bit"),
        "grey_alpha.png": (_img(6, "LA"), "converted:transparency"),
        "palette_alpha.png": (_palette_transparent(), "converted:transparency"),
    }
    out = {}
    for name, (data, expect) in files.items():
        (bad / name).write_bytes(data)
        out[f"bad/{name}"] = expect
    (bad / "folder.jpg").mkdir()  # a directory with an image's name
    out["bad/folder.jpg"] = "unreadable"
    os.symlink("/etc/hostname", bad / "link_out.jpg")
    out["bad/link_out.jpg"] = "outside_root"
    # (a broken link is not here: DVC, hashing the input folder as a dependency, stops on it
    # before ingest runs; ingest's own handling of one is in tests/unit/test_ingest.py)
    out["bad/vanished.jpg"] = "unreadable"  # listed, never there
    out["../../outside.jpg"] = "outside_root"
    out["/etc/passwd"] = "outside_root"
    return out


def test_every_bad_file_and_manifest_row_ends_with_a_status_and_a_reason(tmp_path):
    proj = make_project(tmp_path, london=2, params={"ingest": {"max_bytes": 300_000}})
    data = proj / "data" / "sample"
    expect = corpus(data)
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    rows += [{"path": p} for p in expect]
    warn = {}
    for i, (labels, msg, kept) in enumerate(BAD_ROWS):
        name = f"bad/row_{i}.png"
        (data / name).write_bytes(_img(100 + i))
        rows.append({"path": name, **labels})
        warn[name] = (msg, kept)
    cols = sorted({c for r in rows for c in r}, key=lambda c: (c != "path", c))
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    assert len(set(expect.values())) >= 10 and len(expect) >= 15 and len(warn) >= 8
    env = project_env(proj)
    run(proj, "git", "add", "-A")
    run(proj, "dvc", "repro", env=env)  # completes: no file and no row stops it

    imgs = {r["path"]: r for r in pq.read_table(proj / "data" / "ingest" / "images.parquet").to_pylist()}
    quar = {r["path"]: r for r in pq.read_table(proj / "data" / "ingest" / "quarantine.parquet").to_pylist()}
    assert len(imgs) + len(quar) == len(rows), "every manifest row ends as an image or a quarantine row"
    for path, want in expect.items():
        if want == "ok":
            assert path in imgs and imgs[path]["conversion"] == ""
        elif want.startswith("converted:"):
            assert want.split(":", 1)[1] in imgs[path]["conversion"], (path, imgs.get(path))
        else:
            assert quar[path]["reason"] == want and quar[path]["detail"], (path, quar.get(path))
    assert not any(b"localhost" in (q["detail"] or "").encode() for q in quar.values())  # /etc/hostname unread
    for path, (msg, kept) in warn.items():
        img = imgs[path]
        assert any(msg in w for w in img["label_warnings"]), (path, img["label_warnings"])
        assert img[kept] not in (None, []), (path, kept)
    m = json.loads((proj / "metrics" / "ingest.json").read_text())
    assert sum(m["label_warnings"].values()) >= len(warn) and m["quarantined"] == len(quar)
    crop = {r["path"]: r for r in pq.read_table(proj / "data" / "crop" / "images.parquet").to_pylist()}
    assert set(crop) == set(imgs) and all(r["status"] for r in crop.values())  # every image: ok or no_face
    assert (proj / "data" / "feid" / "feid.parquet").exists()
