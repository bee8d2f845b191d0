"""YAML read with PyYAML's libyaml parser when the wheel has it (it does on every platform
PyYAML ships wheels for), else the pure-Python one: the same safe loading, three to four
times faster. Every stage reads params.yaml, dvc.yaml and the knowledge files, and the run's
supervisor reads params.yaml; with the pure-Python parser that was a tenth of a stage's CPU."""

from __future__ import annotations

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str | bytes):
    """`yaml.safe_load(text)`, faster."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (SafeLoader or its C twin)
