"""Params checked whole before DVC starts (`flows.preflight`): every mistake in params.yaml, one
line each, named by its path. `python -m tasks.core.params_check [params.yaml]` prints them and
exits 2 on a mistake."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tasks.core.params import Params, ParamsError, _merge, parse_overrides
from tasks.core.yamlio import load_yaml

# URL schemes and the extra (and the modules) each needs
SCHEME_EXTRAS = {"s3": ("s3", ("s3fs", "dvc_s3")), "gs": ("gcs", ("gcsfs",)), "gcs": ("gcs", ("gcsfs",))}


def problems(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> list[str]:
    """Every mistake in params.yaml (and `-S` overrides), one line each, named by its path
    (`sample.kmax: ...`): unknown sections and keys, types, ranges, cross-field checks, and a
    URL scheme whose extra is not installed. Empty when the params are good."""
    import importlib.util

    p = Path(path)
    if not p.exists():
        return [f"{p}: not found (run from the project root or pass --params)"]
    try:
        raw = load_yaml(p.read_text()) or {}
        d = _merge(raw, parse_overrides(overrides))
    except (yaml.YAMLError, ParamsError) as e:
        return [f"{p}: {str(e).splitlines()[0]}"]
    if not isinstance(d, dict):
        return [f"{p}: expected sections (paths:, sample:, ...), got {type(d).__name__}"]
    try:
        params = Params.model_validate(d)
    except ValidationError as ex:
        out = []
        for e in ex.errors():
            loc = ".".join(str(x) for x in e["loc"]) or "params"
            got = e.get("input")
            shown = "" if isinstance(got, dict) or e["type"] == "extra_forbidden" else f" (got {got!r:.60})"
            msg = e["msg"].removeprefix("Value error, ")
            out.append(f"{loc}: {'unknown key' if e['type'] == 'extra_forbidden' else msg}{shown}")
        return out
    out = []
    for name, url in (
        ("paths.input", params.paths.input),
        ("paths.manifest", params.paths.manifest),
        ("incremental.input", params.incremental.input),
    ):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme in SCHEME_EXTRAS:
            extra, mods = SCHEME_EXTRAS[scheme]
            if any(importlib.util.find_spec(m) is None for m in mods):
                out.append(f"{name}: {scheme}:// needs the {extra} extra: pip install 'seke[{extra}]'")
    return out


def check(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> None:
    """Raise ParamsError with every mistake, one line each (see `problems`)."""
    errs = problems(path, overrides)
    if errs:
        raise ParamsError(f"{path}: {len(errs)} mistake(s), nothing was run:\n  " + "\n  ".join(errs))


if __name__ == "__main__":
    import sys

    errs = problems(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    for line in errs:
        print(line, file=sys.stderr)
    raise SystemExit(2 if errs else 0)
