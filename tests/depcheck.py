"""Which project files a stage read that its dvc.yaml `deps` do not cover."""

from __future__ import annotations


def _covered(stages: dict, name: str) -> list[str]:
    """A stage's deps, and through a dep that another stage writes (the stamp of stage
    `code`), that stage's deps too."""
    deps = [d.rstrip("/") for d in stages[name].get("deps", []) if "${" not in d]
    for other, st in stages.items():
        outs = [str(next(iter(o)) if isinstance(o, dict) else o) for o in st.get("outs", [])]
        if other != name and any(o in deps for o in outs):
            deps += _covered(stages, other)
    return deps


def uncovered(stages: dict, traces: dict[str, list[str]]) -> dict[str, list[str]]:
    """{stage: files it read (relative paths) not under any of its deps}, stages with none left out."""
    out = {}
    for name in stages:
        deps = _covered(stages, name)
        missing = [f for f in traces.get(name, []) if not any(f == d or f.startswith(d + "/") for d in deps)]
        if missing:
            out[name] = missing
    return out
