"""Prefect deployments of the incremental flow (and the whole pipeline), with schedules and
parameters from params.yaml's `deploy` section.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy serve   # long-running
    prefect deployment run 'feid-incremental/feid-incremental' -p input=s3://lab/incoming

`serve` registers the deployments with the server and runs their flow runs (scheduled or
triggered) as subprocesses of itself, in this folder. `prefect.yaml` holds the same
deployment for `prefect deploy` + a process work pool worker instead (docs/operations.md).

Parameters of `feid-incremental`: `input` (location to watch) and `budget_usd` (spend cap
of one run). The annotator is params.yaml's: it shapes the data, so it is part of the
version. Limits on API calls are the annotator's own
(`runtime.concurrency`, `requests_per_minute`, `tokens_per_minute`, `annotator.budget_usd`),
not Prefect concurrency limits. The deployment's `concurrency_limit: 1` only keeps two runs
from building a version at the same time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows import env

env.apply()


def schedule_kwargs(p) -> dict:
    d = p.deploy
    if d.cron:
        return {"cron": d.cron}
    if d.interval_s:
        return {"interval": d.interval_s}
    return {}


def parameters(p, root: str) -> dict:
    d = p.deploy
    return {
        "input": d.input or p.incremental.input,
        "budget_usd": d.budget_usd,
        "params_path": str(Path(root, "params.yaml")),
        "root": root,
    }


def deployments(params_path: str = "params.yaml"):
    from flows.incremental import incremental_flow
    from flows.pipeline import pipeline
    from tasks.core.params import load

    p = load(params_path)
    root = str(Path(params_path).resolve().parent)
    return [
        incremental_flow.to_deployment(
            name=p.deploy.name,
            parameters=parameters(p, root),
            concurrency_limit=1,
            description="Bring the images new at `input` into the inbox and build the new FEID version.",
            **schedule_kwargs(p),
        ),
        pipeline.to_deployment(
            name="feid-pipeline",
            parameters={"root": root},
            concurrency_limit=1,
            description="dvc repro: every stale stage, each its own flow run (triggered by hand).",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.deploy")
    ap.add_argument("command", choices=["serve", "show"])
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    deps = deployments(a.params)
    if a.command == "show":
        for d in deps:
            print(d.name, d.flow_name, d.parameters, [s.schedule for s in d.schedules or []])
        return 0
    from prefect import serve

    serve(*deps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
