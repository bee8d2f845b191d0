"""What the code reads from `dvc.yaml` itself (everything else about the pipeline is DVC's).

Stage `code` lists, once, the code every stage runs (the Prefect and stage plumbing, the core
types, the knowledge, the expectation suites): its command (`python -m flows.stamp`) writes
the content hash of each of those files to `data/code.json`, and every other stage depends on
that one file. An edit to any of them changes the stamp, so every stage after it is stale, as
if each stage listed them all. DVC offers no other way to state a list once: its templating
refuses to interpolate a list into a list, and YAML anchors cannot merge sequences. In a
project made by `seke init` the stage is dropped and `seke.version` stamps the package's code
instead (`tasks.tools.project`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tasks.core.yamlio import load_yaml

STAMP_STAGE = "code"
STAMP = "data/code.json"


def _load(dvc_yaml: str | Path | None) -> dict:
    path = Path(dvc_yaml) if dvc_yaml else Path("dvc.yaml")
    if not path.exists():
        path = Path(__file__).resolve().parents[2] / "dvc.yaml"
    return (load_yaml(path.read_text()) or {}).get("stages", {})


def stage_names(dvc_yaml: str | Path | None = None) -> list[str]:
    """The stages of `dvc.yaml` that run as a Prefect flow (`python -m flows.run <stage>`), in
    the order it declares them: the one source of the stage order (the project's own
    dvc.yaml when run from its root, else the checkout's). Stage `code` is not one of them."""
    flow = ["python", "-m", "flows.run"]
    return [n for n, st in _load(dvc_yaml).items() if str(st.get("cmd", "")).split()[:3] == flow]


def code_files(root: Path = Path(".")) -> list[str]:
    """Every file stage `code` lists, as DVC sees them (.dvcignore leaves out __pycache__)."""
    out = []
    for d in _load(root / "dvc.yaml")[STAMP_STAGE]["deps"]:
        p = root / d
        found = sorted(p.rglob("*")) if p.is_dir() else [p]
        out += [f.relative_to(root).as_posix() for f in found if f.is_file() and "__pycache__" not in f.parts]
    return out


def write_stamp(root: Path = Path(".")) -> None:
    """Stage `code`'s command: the md5 of each of its files, in `data/code.json`."""
    stamp = {f: hashlib.md5((root / f).read_bytes()).hexdigest() for f in code_files(root)}
    out = root / STAMP
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out)
