"""`python -m flows.run <stage> [--params params.yaml]`: run one stage as a Prefect flow.
This is each DVC stage's `cmd`. A failure exits non-zero with a readable message."""
from __future__ import annotations

import argparse
import sys

from flows import env

env.apply()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.run")
    ap.add_argument("stage")
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from expectations import ExpectationsFailed
    from flows.stages import STAGES

    if a.stage not in STAGES:
        ap.error(f"unknown stage {a.stage!r}; stages: {', '.join(STAGES)}")
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            STAGES[a.stage](params_path=a.params)
    except ExpectationsFailed as e:
        print(f"\nstage {a.stage} FAILED its expectations; its output was not written.\n{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
