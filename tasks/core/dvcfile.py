"""What the code reads from `dvc.yaml` itself (everything else about the pipeline is DVC's)."""

from __future__ import annotations

from pathlib import Path

import yaml


def stage_names(dvc_yaml: str | Path | None = None) -> list[str]:
    """The stages of `dvc.yaml`, in the order it declares them: the one source of the stage
    order (the project's own dvc.yaml when run from its root, else the checkout's)."""
    path = Path(dvc_yaml) if dvc_yaml else Path("dvc.yaml")
    if not path.exists():
        path = Path(__file__).resolve().parents[2] / "dvc.yaml"
    return list((yaml.safe_load(path.read_text()) or {}).get("stages", {}))
