"""Batch mode of the OpenAI-compatible annotator (`annotator.mode: batch`): every round of
the pipelined sampler goes out as OpenAI Batch jobs (`/v1/files` + `/v1/batches`), which
OpenAI and Azure bill at half price (`annotator.batch_discount`).

A round is every call the sampler has ready (it makes the next ones only from answers, so
in batch mode a round is all active faces' next step). Its requests are exactly the online
mode's (`OpenAIAnnotator._body`: the same `n` split, the same seeds), one JSONL line each,
`custom_id` = request id, first index and count. So the answers, and FEID, are the online
mode's, and the response cache serves both.

Crash safety: a **journal** next to the response cache (`<cache>/<signature>/batches/`,
one JSON file per batch, local or S3) records the uploaded file before the batch is created,
and the batch id as soon as it exists. A run that starts again (after `kill -9`, a stop, a
restart) first looks there: lines of a journaled batch that was accepted are taken from that
batch (polled, or its output read again), never submitted again; an upload with no batch id
is matched against the endpoint's batch list by its file id. Lines of a batch that failed
validation, or expired or were cancelled before they were answered, were not billed and go
into the next batch, up to `runtime.max_retries` times.

Polling every `runtime.batch_poll_s`; batches of at most `runtime.batch_max_requests` lines
and `runtime.batch_max_mb` of JSONL (OpenAI's limits are 50,000 and 200 MB).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Iterable, Iterator

import fsspec
from openai.types.chat import ChatCompletion

from tasks.annotators.base import AnnotatorStop
from tasks.annotators.openai_compat.transport import data_url
from tasks.core.calls import WAIT, Call, CallResult, RawAnswer
from tasks.infra.io import put_whole

log = logging.getLogger("seke.annotator.batch")

TERMINAL = ("completed", "failed", "expired", "cancelled")
UNBILLED = ("batch_expired", "batch_cancelled")  # error codes of lines never answered


class Journal:
    """One JSON file per batch under `url` (fsspec); in memory when `url` is None."""

    def __init__(self, url: str | None):
        self.url = url.rstrip("/") if url else None
        self.mem: dict[str, dict] = {}
        if self.url:
            self.fs, self.path = fsspec.core.url_to_fs(self.url)

    def entries(self) -> list[dict]:
        if not self.url:
            return list(self.mem.values())
        if not self.fs.exists(self.path):
            return []
        files = [f for f in self.fs.ls(self.path, detail=False) if f.endswith(".json")]
        out = []
        for blob in (self.fs.cat(files) if files else {}).values():
            try:
                out.append(json.loads(blob))
            except json.JSONDecodeError:
                continue  # torn by a crash mid-write (local): its batch is found by file id
        return sorted(out, key=lambda e: e["created"])

    def write(self, e: dict) -> None:
        if not self.url:
            self.mem[e["key"]] = dict(e)
            return
        self.fs.makedirs(self.path, exist_ok=True)
        put_whole(f"{self.url}/{e['key']}.json", json.dumps(e).encode())

    def drop(self, e: dict) -> None:
        if not self.url:
            self.mem.pop(e["key"], None)
        else:
            self.fs.rm_file(f"{self.path}/{e['key']}.json")


class BatchRunner:
    def __init__(self, ann):
        self.ann, self.a, self.rt = ann, ann.a, ann.rt
        self.journal = Journal(getattr(ann, "journal", None))

    def _client(self):
        return self.ann._make_client(sync=True)

    # -- the rounds -------------------------------------------------------------------
    def run(self, calls: Iterable[Call]) -> Iterator[CallResult]:
        client = self._client()
        it, ended = iter(calls), False
        try:
            while not ended:
                ready: list[Call] = []
                while True:
                    c = next(it, None)
                    if c is None:
                        ended = True
                        break
                    if c is WAIT:
                        break
                    ready.append(c)
                if not ready:
                    if ended:
                        break
                    raise RuntimeError("batch mode: the call feed waits, but no batch is out")
                fit, stop = self._affordable(ready)
                if fit:
                    yield from self._round(client, fit)
                if stop:
                    raise AnnotatorStop(stop)
        finally:
            client.close()

    def _affordable(self, calls: list[Call]) -> tuple[list[Call], str | None]:
        budget = self.a.budget_usd
        if not budget:
            return calls, None
        fit, total = [], self.ann.spent_usd
        for c in calls:
            est = self.ann._call_cost(c) * self.a.batch_discount
            if total + est > budget:
                return fit, (
                    f"budget: the next batch call (about ${est:.4f}) would take the spend ${total:.4f} past "
                    f"annotator.budget_usd=${budget:.4f}; stopping"
                )
            fit.append(c)
            total += est
        return fit, None

    def _lines(self, calls: list[Call]) -> dict[str, tuple[Call, list[tuple[int, int]], dict]]:
        """custom_id -> (call, its (index, seed) part, the request body): the online requests."""
        out = {}
        mode, per = self.ann.endpoint.mode, max(1, min(self.a.max_n, self.ann.endpoint.n_cap))
        for call in calls:
            url = data_url(call.image)
            items = list(zip(call.indices, call.seeds))
            for i in range(0, len(items), per):
                part = items[i : i + per]
                cid = f"{call.request_id}#{part[0][0]}+{len(part)}"
                out[cid] = (call, part, self.ann._body(call, mode, url, len(part), part[0][1]))
        return out

    def _round(self, client, calls: list[Call]) -> Iterator[CallResult]:
        t0 = time.perf_counter()
        lines = self._lines(calls)
        got: dict[str, dict] = {}  # custom_id -> response body (200)
        failed: dict[str, str] = {}  # custom_id -> error
        pending, tries = set(lines), 0
        while pending and tries <= self.rt.max_retries:
            jobs = self._adopt(client, pending)
            taken = {c for e in jobs for c in e["custom_ids"]}
            jobs += self._submit(client, lines, sorted(pending - taken))
            for e in self._wait(client, jobs):
                self._harvest(client, e, pending, got, failed)
            tries += 1
        for cid in pending:
            failed[cid] = f"batch: not answered after {tries} batches (failed, expired or cancelled)"
        return self._results(calls, lines, got, failed, (time.perf_counter() - t0) * 1e3)

    # -- batches ----------------------------------------------------------------------
    def _adopt(self, client, pending: set[str]) -> list[dict]:
        """Journaled batches (of an earlier or killed run) that hold pending lines."""
        jobs, listed = [], None
        for e in self.journal.entries():
            mine = [c for c in e["custom_ids"] if c in pending and c not in e.get("unanswered", ())]
            if not mine or e.get("status") in ("failed", "cancelled"):
                continue
            if not e.get("batch_id"):  # uploaded, then killed: was the batch created?
                if listed is None:
                    listed = {b.input_file_id: b.id for b in client.batches.list(limit=100)}
                if e["input_file_id"] not in listed:
                    self.journal.drop(e)  # never submitted: its lines go into a new batch
                    continue
                e["batch_id"] = listed[e["input_file_id"]]
                self.journal.write(e)
            log.info("batch %s (journaled) holds %d pending requests: not submitted again", e["batch_id"], len(mine))
            jobs.append(e)
        return jobs

    def _submit(self, client, lines: dict, cids: list[str]) -> list[dict]:
        jobs, chunk, size = [], [], 0
        cap_bytes = self.rt.batch_max_mb * 1e6
        for cid in cids + [None]:
            data = None
            if cid is not None:
                body = lines[cid][2]
                data = json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
            if chunk and (cid is None or len(chunk) >= self.rt.batch_max_requests or size + len(data) > cap_bytes):
                jobs.append(self._create(client, chunk))
                chunk, size = [], 0
            if data is not None:
                chunk.append((cid, data))
                size += len(data) + 1
        return jobs

    def _create(self, client, chunk: list[tuple[str, str]]) -> dict:
        e = {"key": uuid.uuid4().hex, "created": time.time(), "custom_ids": [c for c, _ in chunk]}
        f = client.files.create(file=("seke-batch.jsonl", "\n".join(d for _, d in chunk).encode()), purpose="batch")
        e["input_file_id"] = f.id
        self.journal.write(e)  # before the batch exists: a kill now is recovered by file id
        b = client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"seke": e["key"]},
        )
        e["batch_id"] = b.id
        self.journal.write(e)
        self.ann.stats["requests"] += len(chunk)
        self.ann.stats["image_sends"] += len(chunk)
        log.info("batch %s: %d requests submitted", b.id, len(chunk))
        return e

    def _wait(self, client, jobs: list[dict]) -> list[dict]:
        left = {e["batch_id"]: e for e in jobs}
        while True:
            for bid in list(left):
                b = client.batches.retrieve(bid)
                if b.status in TERMINAL:
                    left[bid]["batch"] = b
                    del left[bid]
            if not left:
                return jobs
            time.sleep(self.rt.batch_poll_s)

    def _harvest(self, client, e: dict, pending: set, got: dict, failed: dict) -> None:
        b = e.pop("batch")
        e["status"] = b.status
        unanswered = set(e["custom_ids"])
        for fid, ok in ((b.output_file_id, True), (b.error_file_id, False)):
            if not fid:
                continue
            for line in client.files.content(fid).text.splitlines():
                if not line.strip():
                    continue
                r = json.loads(line)
                cid = r["custom_id"]
                if cid not in pending:
                    unanswered.discard(cid)
                    continue
                resp = r.get("response") or {}
                code = (r.get("error") or {}).get("code")
                if ok and resp.get("status_code") == 200:
                    got[cid] = resp["body"]
                elif code in UNBILLED:
                    continue  # never answered: it goes into the next batch
                else:
                    body = resp.get("body") or {}
                    msg = (body.get("error") or {}).get("message") or code or "error"
                    failed[cid] = self.ann._scrub(f"batch line {resp.get('status_code')}: {msg}")[:500]
                unanswered.discard(cid)
                pending.discard(cid)
        if b.status in ("failed", "cancelled"):
            unanswered = set(e["custom_ids"])
            errs = getattr(getattr(b, "errors", None), "data", None) or []
            log.warning("batch %s %s: %s", b.id, b.status, "; ".join(str(x.message) for x in errs)[:300])
        e["unanswered"] = sorted(unanswered)
        self.journal.write(e)

    def _results(self, calls, lines, got: dict, failed: dict, ms: float) -> list[CallResult]:
        by_call: dict[int, list[str]] = {}
        for cid, (call, _, _) in lines.items():
            by_call.setdefault(id(call), []).append(cid)
        out = []
        for call in calls:
            answers: list[RawAnswer] = []
            usage = {"in": 0, "out": 0}
            errors = []
            for cid in by_call.get(id(call), []):
                _, part, body = lines[cid]
                if cid in got:
                    try:
                        resp = ChatCompletion.model_validate(got[cid])
                        answers += self.ann._absorb(resp, call, part, len(part), usage)
                    except Exception as ex:  # noqa: BLE001 - a malformed line fails its call, not the run
                        errors.append(f"batch line: {type(ex).__name__}: {ex}"[:500])
                else:
                    errors.append(failed.get(cid, "batch: no answer"))
            answers.sort(key=lambda a: a.index)
            cost = self.ann._cost(usage["in"], usage["out"]) * self.a.batch_discount
            self.ann.spent_usd += cost
            error = None
            if errors:
                error = errors[0] + (f" (after {len(answers)} of {len(call.indices)} answers)" if answers else "")
            out.append(
                CallResult(
                    call=call,
                    answers=answers,
                    tokens_in=usage["in"],
                    tokens_out=usage["out"],
                    latency_ms=ms,
                    cost_usd=cost,
                    error=error,
                )
            )
        return out
