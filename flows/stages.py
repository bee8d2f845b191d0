"""One Prefect flow per stage (`stage_flow`), and nothing else: read the typed params, run the stage
(`tasks.stages.<stage>.run`, which validates its output with the stage's Great Expectations
suite before publishing it), log its metrics. `dvc.yaml` runs each through `python -m
flows.run <stage>`. `SEKE_BUDGET_USD` caps a run's spend without changing params.yaml (a
budget stops a run, it never shapes a row).

Stage modules are imported inside each flow, so a stage's process loads only its own code
(the dependency trace of `tests/e2e/test_pipeline_e2e.py` relies on it).
"""

from __future__ import annotations

import importlib
import os
from functools import cache

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.core.dvcfile import stage_names
from tasks.core.params import load


def _run(stage: str, params_path: str) -> dict:
    p = load(params_path)
    budget = os.environ.get("SEKE_BUDGET_USD")  # a spend cap for this run (flows/incremental.py)
    if budget and float(budget) > 0:
        p = p.model_copy(update={"annotator": p.annotator.model_copy(update={"budget_usd": float(budget)})})
    m = importlib.import_module(f"tasks.stages.{stage}").run(p)
    get_run_logger().info(f"{stage}: { ({k: v for k, v in m.items() if not isinstance(v, (dict, list))}) }")
    create_markdown_artifact(markdown=metrics_markdown(stage, m), key=f"{stage}-metrics", description=stage)
    return m


COUNTS = ("reasons", "withheld", "quarantine_reasons", "status", "per_class", "rationales", "instructions")


def metrics_markdown(stage: str, m: dict) -> str:
    """A stage's metrics as the markdown of its Prefect artifact: the scalar counts, then
    the rejection reasons and the other tallies, each as a table."""
    out = [f"# {stage}", "", "| metric | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in m.items() if not isinstance(v, (dict, list))]
    for key in COUNTS:
        d = m.get(key)
        if isinstance(d, dict) and d:
            out += ["", f"## {key}", "", "| | |", "|---|---|"]
            out += [f"| {k} | {v} |" for k, v in sorted(d.items(), key=lambda kv: str(kv[0]))]
    return "\n".join(out) + "\n"


@cache
def stage_flow(stage: str):
    """The Prefect flow of a stage of dvc.yaml (`tasks.core.dvcfile.stage_names`, the one stage
    order), named after it and built when first asked for. Its one parameter is the params
    file: Prefect builds a flow's parameter schema when it builds the flow, and one of the
    typed `Params` costs a stage's process about 0.16 s."""
    if stage not in stage_names():
        raise KeyError(f"unknown stage {stage!r}; dvc.yaml's stages: {', '.join(stage_names())}")

    def run_stage(params_path: str = "params.yaml") -> dict:
        return _run(stage, params_path)

    return flow(name=stage, log_prints=True)(run_stage)
