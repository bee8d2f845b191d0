"""The whole pipeline as one Prefect flow, with DVC deciding what is stale.

The DAG is declared once, in dvc.yaml. This flow runs one `dvc repro` (supervised: a signal or
a full disk ends it and everything it started, `flows.supervise`), as a Prefect task, and
reports what DVC did with each stage: `ran`, `skipped` (nothing it depends on changed) or
`restored` (DVC's run cache had its outputs). Each stage's own cmd runs that stage as its
own Prefect flow run (`flows.run`), so Prefect shows every stage, its logs and artifacts.

One `dvc repro`, not one `dvc repro --single-item` per stage: DVC walks its graph either way,
and each `dvc` process costs about a second of start-up, so a version built by the incremental
flow paid for seven processes where one does the same.
"""

from __future__ import annotations

import os
import re
import tempfile

from flows import env

env.apply()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

# how `dvc repro` says what it did with a stage (DVC 3)
_SAID = (
    (re.compile(r"^Running stage '([^']+)'"), "ran"),
    (re.compile(r"^Stage '([^']+)' didn't change, skipping"), "skipped"),
    (re.compile(r"^Stage '([^']+)' is cached - skipping run"), "restored"),
)


def stages_done(out: str) -> dict[str, str]:
    """{stage: ran | skipped | restored}, in the order `dvc repro` reached them."""
    done: dict[str, str] = {}
    for line in out.splitlines():
        for pattern, what in _SAID:
            m = pattern.match(line.strip())
            if m:
                done.setdefault(m.group(1), what)
    return done


@task(cache_policy=NO_CACHE, retries=0, task_run_name="dvc-repro")
def repro(root: str = ".", force: bool = False) -> dict[str, str]:
    log = get_run_logger()
    from flows import supervise

    cmd = [env.tool("dvc"), "repro"] + (["--force"] if force else [])
    with tempfile.TemporaryFile("w+") as fh:  # a full disk stops it with one line (flows.supervise)
        rc = supervise.run(cmd, env=os.environ.copy(), root=root, output=fh)
        fh.seek(0)
        out = fh.read().strip()
    done = stages_done(out)
    if rc != 0:
        last = next(reversed(done), None)
        where = f" at stage {last}" if last and done[last] == "ran" else ""
        raise RuntimeError(f"dvc repro failed{where} (exit {rc}):\n{out[-4000:]}")
    for stage, what in done.items():
        log.info(f"{stage}: {what}")
    return done


@flow(name="feid-pipeline")
def pipeline(root: str = ".", force: bool = False) -> dict[str, str]:
    """Bring every stage of dvc.yaml up to date; stop at the first failure."""
    from flows.preflight import preflight

    with preflight(root) as note:  # params checked, the project locked, dvc.lock repaired
        if note:
            get_run_logger().warning(note)
        return repro(root, force)


if __name__ == "__main__":
    from flows.server import shared_server

    with shared_server(), env.no_heartbeats():
        print(pipeline())
