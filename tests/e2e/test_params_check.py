"""Params are checked whole before DVC starts, whether or not a stage is stale: each mistake
is one line named by its path, the exit code is 2, and nothing runs (`flows.preflight`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

CASES = [
    (lambda p: p["sample"].update(kmax="six"), "sample.kmax: Input should be a valid integer"),
    (lambda p: p["verify"].update(target_error=1.5), "verify.target_error: Input should be less than 1"),
    (lambda p: p.update(verfy={"target_error": 0.01}), "verfy: unknown key"),
    (lambda p: p["runtime"].update(concurrency=-3), "runtime.concurrency: Input should be greater than or equal to 1"),
    (lambda p: p["sample"].update(k0=9, kmax=6), "sample: sample.kmax (6) must be >= sample.k0 (9)"),
    (lambda p: p["sample"].update(kmx=3), "sample.kmx: unknown key"),
]


def _run(tmp: Path, mutate) -> subprocess.CompletedProcess:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(p)
    (tmp / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    marker = tmp / "ran"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flows.server", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mutate,line", CASES)
def test_a_mistake_is_one_line_and_nothing_runs(tmp_path, mutate, line):
    r = _run(tmp_path, mutate)
    assert r.returncode == 2
    assert line in r.stderr and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.strip()]) == 2  # the heading and the one mistake
    assert not (tmp_path / "ran").exists()  # DVC (here: the command) never started


def test_good_params_run_the_command(tmp_path):
    from tasks.core.params_check import problems

    assert problems(ROOT / "params.yaml") == []
    r = _run(tmp_path, lambda p: None)
    assert r.returncode == 0 and (tmp_path / "ran").exists(), r.stderr


def test_a_url_whose_extra_is_missing_names_it(tmp_path, monkeypatch):
    import importlib.util

    from tasks.core import params_check as params

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "dvc_s3" else real(m, *a))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["paths"]["input"] = "s3://lab/faces"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert params.problems(tmp_path / "params.yaml") == [
        "paths.input: s3:// needs the s3 extra: pip install 'seke[s3]'"
    ]


@pytest.mark.e2e
def test_seke_run_on_a_real_project_stale_or_not_prints_the_one_line_and_runs_nothing(tmp_path):
    """The table above through `seke run` on a real DVC project: before its first build (every
    stage stale) and after it (nothing stale, where DVC alone would say 'up to date', exit 0)."""
    from opsproj import env, london, make_project

    proj = make_project(tmp_path, london(4))
    good = (proj / "params.yaml").read_text()
    e = env(proj, COLUMNS="400")
    seke = [sys.executable, "-m", "flows.cli", "run"]

    def table() -> list[tuple[int, str]]:
        out = []
        for mutate, _ in CASES:
            p = yaml.safe_load(good)
            mutate(p)
            (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
            r = subprocess.run(seke, cwd=proj, env=e, capture_output=True, text=True, timeout=120)
            out.append((r.returncode, r.stdout + r.stderr))
        (proj / "params.yaml").write_text(good)
        return out

    for stale in (True, False):
        lock = (proj / "dvc.lock").read_text() if (proj / "dvc.lock").exists() else None
        for (code, text), (_, line) in zip(table(), CASES):
            assert code == 2 and line in text and "Traceback" not in text, (stale, text[-1500:])
            assert len([x for x in text.splitlines() if x.strip()]) <= 3, text  # the command, heading, mistake
        assert ((proj / "dvc.lock").read_text() if (proj / "dvc.lock").exists() else None) == lock  # nothing ran
        if stale:
            r = subprocess.run(seke, cwd=proj, env=e, capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
