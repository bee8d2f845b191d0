"""The whole pipeline as one Prefect flow, with DVC deciding what is stale.

The DAG is declared once, in dvc.yaml. This flow asks DVC for the stages in topological
order and brings each up to date with `dvc repro --single-item <stage>`, as its own Prefect
task, so Prefect shows, retries and schedules stages while DVC skips the ones whose deps
and params did not change. Each stage's own cmd then runs that stage's flow.
"""

from __future__ import annotations

import os
import tempfile

from flows import env

env.apply()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402


def stage_order(root: str = ".") -> list[str]:
    """Stage names of dvc.yaml in DVC's own topological order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(root) as repo:
        # DVC's graph has edges from a stage to the stages it depends on
        ordered = reversed(list(nx.topological_sort(repo.index.graph)))
        return [st.name for st in ordered if getattr(st, "cmd", None)]


def _dvc() -> str:
    return env.tool("dvc")


@task(cache_policy=NO_CACHE, retries=0, task_run_name="repro-{stage}")
def repro_stage(stage: str, root: str = ".", force: bool = False) -> str:
    log = get_run_logger()
    from flows import supervise

    cmd = [_dvc(), "repro", "--single-item", stage] + (["--force"] if force else [])
    with tempfile.TemporaryFile("w+") as fh:  # a full disk stops it with one line (flows.supervise)
        rc = supervise.run(cmd, env=os.environ.copy(), root=root, output=fh)
        fh.seek(0)
        out = fh.read().strip()
    if rc != 0:
        raise RuntimeError(f"stage {stage} failed (dvc exit {rc}):\n{out[-4000:]}")
    skipped = "didn't change, skipping" in out
    log.info(f"{stage}: {'up to date' if skipped else 'ran'}")
    return "skipped" if skipped else "ran"


@flow(name="feid-pipeline")
def pipeline(root: str = ".", force: bool = False) -> dict[str, str]:
    """Bring every stage of dvc.yaml up to date, in order; stop at the first failure."""
    from flows.preflight import preflight

    with preflight(root) as note:  # params checked, the project locked, dvc.lock repaired
        if note:
            get_run_logger().warning(note)
        return {s: repro_stage(s, root, force) for s in stage_order(root)}


if __name__ == "__main__":
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.server import shared_server

    with shared_server(), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        print(pipeline())
