"""Which project files a stage read that its dvc.yaml `deps` do not cover."""

from __future__ import annotations


def uncovered(stages: dict, traces: dict[str, list[str]]) -> dict[str, list[str]]:
    """{stage: files it read (relative paths) not under any of its deps}, stages with none left out."""
    out = {}
    for name, stage in stages.items():
        deps = [d.rstrip("/") for d in stage.get("deps", []) if "${" not in d]
        missing = [f for f in traces.get(name, []) if not any(f == d or f.startswith(d + "/") for d in deps)]
        if missing:
            out[name] = missing
    return out
