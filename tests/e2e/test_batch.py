"""Batch mode (`annotator.mode: batch`, tasks/annotators/batch.py) against the simulated
VLLM's Files and Batches endpoints (simvllm/batch.py).

In-process: the same answers as online mode at half the cost; failed, expired and partly
failed batches end with every call answered or failed with a reason; a journaled batch is
taken up by the next run instead of being submitted again. End to end (`dvc repro`): the
same FEID as online mode, and a `kill -9` while a batch is out, then a re-run, submits no
request twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from project import BIN, make_project, project_env, run
from simserver import TEST_KEY, make_call, params, sim_server

from simvllm.server import ServerThread, SimConfig, SimVLLM
from tasks.annotators.base import AnnotatorStop
from tasks.annotators.openai_compat import OpenAIAnnotator
from tasks.annotators.openai_compat.batch import BatchRunner

PRICES = {"price_in_per_mtok": 2.5, "price_out_per_mtok": 10.0}


def annotator(mode: str, journal: str | None = None, **kw) -> OpenAIAnnotator:
    a, rt = params(**PRICES, batch_poll_s=0.05, **kw)
    ann = OpenAIAnnotator(a.model_copy(update={"mode": mode}), rt)
    ann.journal = journal
    return ann


def answers(results) -> dict:
    return {(r.call.request_id, x.index): (x.seed, x.text, x.finish_reason) for r in results for x in r.answers}


def submitted(sim: SimVLLM) -> list[str]:
    """Every custom_id of every batch created, in order (a request sent twice shows twice)."""
    import json

    api = sim.batch_api
    return [
        json.loads(line)["custom_id"]
        for b in api.batches.values()
        for line in api.files[b["input_file_id"]]["data"].decode().splitlines()
        if line.strip()
    ]


def test_batch_answers_equal_online_at_half_the_cost():
    calls = [make_call(i, k=3) for i in range(6)]
    with sim_server(SimConfig(batch_latency_s=0.2)) as s:
        online = list(annotator("online", max_n=2).run(calls))  # n=2 + n=1 per call: the split is kept
        n_online = len([e for e in s.sim.log if "batch" not in e])
        batch = list(annotator("batch", max_n=2).run(calls))
        assert len(s.sim.batch_api.batches) == 1
    assert answers(batch) == answers(online) and all(r.error is None for r in batch)
    assert sum(r.tokens_in for r in batch) == sum(r.tokens_in for r in online)
    assert sum(r.cost_usd for r in batch) == pytest.approx(0.5 * sum(r.cost_usd for r in online), rel=1e-9)
    assert len(submitted(s.sim)) == n_online, "one batch line per online request"


@pytest.mark.parametrize(
    "fault",
    [{"batch_fail_rate": 0.5}, {"batch_expire_rate": 0.5}, {"batch_line_error_rate": 0.3}],
    ids=["failed", "expired", "line-errors"],
)
def test_faulty_batches_end_with_every_call_answered_or_failed_with_a_reason(fault):
    calls = [make_call(i, k=2) for i in range(8)]
    with sim_server(SimConfig(batch_latency_s=0.1, seed=3, **fault)) as s:
        got = list(annotator("batch", max_retries=6).run(calls))
        sent = submitted(s.sim)
        statuses = [b["status"] for b in s.sim.batch_api.batches.values()]
    assert sorted(r.call.request_id for r in got) == sorted(c.request_id for c in calls)
    assert all(r.answers or r.error for r in got)
    billed = [e for e in s.sim.log if e.get("batch")]
    assert len(billed) == len({(e["fingerprint"], e["seed"]) for e in billed}), "a billed request was sent again"
    if "batch_line_error_rate" in fault:
        assert any(r.error and "batch line 500" in r.error for r in got)
        assert len(sent) == len(set(sent)), "a line that was answered (even with an error) is not sent again"
    else:
        assert len(statuses) > 1 and set(statuses) & {"failed", "expired"}, statuses
        assert all(r.error is None for r in got), "unbilled lines were sent again until answered"


def test_a_journaled_batch_is_taken_up_not_submitted_again(tmp_path):
    calls = [make_call(i, k=2) for i in range(4)]
    journal = str(tmp_path / "batches")
    with sim_server(SimConfig(batch_latency_s=0.3)) as s:
        first = annotator("batch", journal)
        runner = BatchRunner(first)
        client = runner._client()
        lines = runner._lines(calls)
        runner._submit(client, lines, sorted(lines))  # a run that submitted, then died
        assert len(s.sim.batch_api.batches) == 1
        again = list(annotator("batch", journal).run(calls))
        assert len(s.sim.batch_api.batches) == 1, "the second run created a batch for work already submitted"
        # an upload whose batch id was never journaled (killed between the two) is found by file id
        e = runner.journal.entries()[0]
        e.pop("batch_id")
        runner.journal.write(e)
        assert list(annotator("batch", journal).run(calls)) and len(s.sim.batch_api.batches) == 1
        online = list(annotator("online").run(calls))
    assert answers(again) == answers(online)


def test_the_estimate_prices_batch_mode_at_the_discount():
    calls = [make_call(i, k=3) for i in range(5)]
    on, bat = annotator("online").estimate(calls), annotator("batch").estimate(calls)
    assert bat["cost_usd"] == pytest.approx(0.5 * on["cost_usd"]) and bat["requests"] == on["requests"] > 0


def test_budget_stops_batch_mode_before_it_overspends():
    calls = [make_call(i, k=2) for i in range(10)]
    with sim_server(SimConfig(batch_latency_s=0.1)):
        ann = annotator("batch", budget_usd=0.004)
        got = []
        with pytest.raises(AnnotatorStop, match="budget"):
            for r in ann.run(calls):
                got.append(r)
    assert 0 < len(got) < len(calls) and ann.spent_usd <= 0.004


# ---------------------------------------------------------------- end to end
E2E = {
    "annotator": {"backend": "openai", "model": "sim-vllm", **PRICES},
    "runtime": {"cache": ".seke/cache", "timeout_s": 10, "max_retries": 2, "batch_poll_s": 0.2},
    "expectations": {"max_class_share": 1.0},
}


def _feid(proj: Path) -> list[dict]:
    return sorted(pq.read_table(proj / "data/feid/feid.parquet").to_pylist(), key=lambda r: r["id"])


def _metrics(proj: Path) -> dict:
    import json

    return json.loads((proj / "metrics/sample.json").read_text())


@pytest.mark.e2e
def test_batch_mode_builds_the_online_feid_and_survives_kill_9(tmp_path):
    on = make_project(tmp_path / "online", london=2, params=E2E)
    bat = make_project(tmp_path / "batch", london=2, params={**E2E, "annotator": {**E2E["annotator"], "mode": "batch"}})
    sim = SimVLLM(SimConfig(batch_latency_s=2.0))
    with ServerThread(sim) as server:
        for proj in (on, bat):
            env = project_env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
            if proj is on:
                run(proj, "dvc", "repro", env=env)
                continue
            run(proj, "dvc", "repro", "prompt", env=env)
            proc = subprocess.Popen(
                [str(BIN / "dvc"), "repro"], cwd=proj, env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.time() + 300
            while not sim.batch_api.batches and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the stage ended before a batch was out"
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out_before = len(sim.batch_api.batches)
            sim.config.update({"batch_latency_s": 0.2})  # slow only so that the kill lands while a batch is out
            run(proj, "dvc", "repro", env=env)
            assert len(sim.batch_api.batches) > out_before, "the run went on with its next rounds"
    sent = submitted(sim)
    assert len(sent) == len(set(sent)), "a request submitted in a batch was submitted again"
    a, b = _feid(bat), _feid(on)
    assert [sorted(k for k in x if x[k] != y[k]) for x, y in zip(a, b)] == [[]] * len(b) and len(a) == len(b)
    assert _metrics(bat)["cost_usd"] == pytest.approx(
        0.5 * _metrics(on)["cost_usd"], rel=1e-4
    )  # metrics keep 6 decimals
