"""The incremental flow's work (`flows/incremental.py` runs it): bring the images that are new
at a watched location into the project's **inbox**, so that `dvc repro` builds the next FEID
version from versioned inputs.

    data/inbox/manifest.csv     one row per image brought in: path (images/<sha256><ext>),
                                sha256, origin (its URL at the watched location), n_bytes,
                                added (UTC), and the location manifest's labels. In git.
    data/inbox/images/          the images, named by content hash. DVC-tracked
                                (data/inbox/images.dvc), pushed to the DVC remote.
    data/inbox/refused.csv      files of the location that could not be brought in, with why
                                (outside the root, unreadable, empty, too large). In git.

The ingest stage reads the inbox next to `paths.input` (`tasks.stages.ingest.inbox_entries`),
and `paths.inbox` is one of its DVC dependencies: a version is `dvc.lock` plus the inbox, and
`dvc repro` rebuilds it. Every step is idempotent, so a run killed anywhere is finished by
the next one: an image is written under its hash (a half-written copy is a `.tmp-` file that
the next run removes), the manifest is replaced whole, and files in `images/` that the
manifest does not list are removed before DVC records the folder.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tasks.core.params import Params
from tasks.infra import io, storage

MANIFEST, REFUSED, IMAGES = "manifest.csv", "refused.csv", "images"
COLUMNS = ["path", "sha256", "origin", "n_bytes", "added"]
REFUSED_COLUMNS = ["origin", "n_bytes", "reason", "detail", "seen"]


def crash_point(step: str) -> None:
    """Fault injection for the crash tests: `SEKE_CRASH_AFTER=<step>` kills this process
    with SIGKILL right after `step` (tests/e2e/test_incremental.py)."""
    if os.environ.get("SEKE_CRASH_AFTER") == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path: Path, rows: list[dict], first: list[str]) -> None:
    """Replace `path` whole (`io.put_whole`)."""
    import io as stdio

    cols = first + sorted({k for r in rows for k in r} - set(first))
    buf = stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in cols} for r in rows)
    io.put_whole(str(path), buf.getvalue().encode())


@dataclass
class Landing:
    """What one run found at the location and brought into the inbox."""

    new: list[dict] = field(default_factory=list)  # manifest rows added
    refused: list[dict] = field(default_factory=list)  # refused.csv rows added
    already: int = 0  # files the project holds already (same URL and size, or same bytes)
    skipped_by_extension: list[str] = field(default_factory=list)
    removed_strays: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "new_images": len(self.new),
            "refused": len(self.refused),
            "refused_reasons": sorted({r["reason"] for r in self.refused}),
            "already_held": self.already,
            "skipped_by_extension": len(self.skipped_by_extension),
            "skipped_examples": self.skipped_by_extension[:20],
        }


def write_empty(inbox: Path) -> None:
    """A new project's inbox: its manifest with the header only (ingest's DVC dependency must exist)."""
    inbox.mkdir(parents=True, exist_ok=True)
    if not (inbox / MANIFEST).exists():
        _write_csv(inbox / MANIFEST, [], COLUMNS)


def inbox_dir(p: Params) -> Path:
    if not p.paths.inbox or not storage.is_local(p.paths.inbox):
        raise ValueError(f"paths.inbox must be a local folder in the DVC project (it is {p.paths.inbox!r})")
    return Path(p.paths.inbox)


def known(p: Params, inbox: Path) -> tuple[dict[tuple[str, int], str], set[str]]:
    """({(url, size): sha256 or ""} of every file the project has seen, {sha256 it holds}):
    the inbox's manifest and refusals, and the images the last ingest read from paths.input."""
    by_url: dict[tuple[str, int], str] = {}
    shas: set[str] = set()
    for r in _read_csv(inbox / MANIFEST):
        by_url[(r["origin"], int(r["n_bytes"] or 0))] = r["sha256"]
        shas.add(r["sha256"])
    for r in _read_csv(inbox / REFUSED):
        by_url[(r["origin"], int(r["n_bytes"] or 0))] = ""
    images = io.join(p.paths.ingest, "images.parquet")
    fs, path = io.fs_path(images)
    if fs.exists(path):
        for b in io.iter_batches(images, columns=["id", "uri", "n_bytes"]):
            for r in b:
                by_url[(r["uri"], r["n_bytes"])] = r["id"]
                shas.add(r["id"])
    return by_url, shas


def _clean(folder: Path) -> None:
    for f in folder.glob("*.tmp-*"):  # io.put_whole's temporary files, left by a kill
        f.unlink(missing_ok=True)


def land(p: Params, location: str, manifest: str = "") -> Landing:
    """Copy the files at `location` that the project does not hold (by content) into the
    inbox, under their SHA-256, and add them to the inbox's manifest (with `manifest`'s
    labels). Files that cannot be read safely go to refused.csv with the reason that
    ingest would give them. Nothing outside `location` is read."""
    import hashlib

    from tasks.stages.ingest import QuarantineRecord, _read, list_entries, resolve

    inbox = inbox_dir(p)
    images = inbox / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    _clean(inbox), _clean(images)
    by_url, shas = known(p, inbox)
    out = Landing()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    first = True
    for e in list_entries(location, manifest, p.ingest.extensions, out.skipped_by_extension):
        url = resolve(location, e.path) or e.path
        try:
            fs, path = io.fs_path(url)
            size = fs.size(path)
        except (OSError, ValueError):
            size = -1
        if (url, size) in by_url:
            out.already += 1
            continue
        got = _read(e, location, p.ingest)
        if isinstance(got, QuarantineRecord):
            row = dict(origin=url, n_bytes=size, reason=got.reason, detail=got.detail, seen=now)
            out.refused.append(row)
            by_url[(url, size)] = ""
            continue
        _, data = got
        sha = hashlib.sha256(data).hexdigest()
        by_url[(url, size)] = sha
        if sha in shas:
            out.already += 1
            continue
        shas.add(sha)
        name = f"{sha}{PurePosixPath(e.path).suffix.lower()}"
        dest = images / name
        if not dest.exists() or dest.stat().st_size != len(data):
            io.put_whole(str(dest), data)
        labels = {k: v for k, v in e.labels.items() if k not in COLUMNS}
        out.new.append(dict(path=f"{IMAGES}/{name}", sha256=sha, origin=url, n_bytes=size, added=now, **labels))
        if first:
            crash_point("landing")  # one image copied, the others not yet
            first = False
    crash_point("landed")
    _record(inbox, out)
    crash_point("manifest")
    return out


def _record(inbox: Path, out: Landing) -> None:
    """Add what landed to the inbox's manifest and refusals; remove images it does not list."""
    if out.new:
        _write_csv(inbox / MANIFEST, _read_csv(inbox / MANIFEST) + out.new, COLUMNS)
    if out.refused:
        _write_csv(inbox / REFUSED, _read_csv(inbox / REFUSED) + out.refused, REFUSED_COLUMNS)
    listed = {PurePosixPath(r["path"]).name for r in _read_csv(inbox / MANIFEST)}
    for f in sorted((inbox / IMAGES).iterdir()):
        if f.name not in listed:  # a copy whose manifest row a killed run never wrote, and
            f.unlink()  # whose origin is gone since: the inbox holds what its manifest lists
            out.removed_strays.append(f.name)
