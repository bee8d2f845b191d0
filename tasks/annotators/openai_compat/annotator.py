"""An annotator for any OpenAI-compatible chat-completions endpoint (OpenAI, Azure OpenAI,
vLLM, Ollama, the simulated VLLM in `simvllm.server`).

Endpoint and credentials come only from the environment, by the openai SDK's conventions:
`OPENAI_BASE_URL` + `OPENAI_API_KEY`, or for Azure `AZURE_OPENAI_ENDPOINT` +
`OPENAI_API_VERSION` (+ `AZURE_OPENAI_API_KEY`), in which case `AsyncAzureOpenAI` is used and
`annotator.model` is the deployment name. They never appear in params, the signature (the
response-cache key), logs or results; error texts are scrubbed of the key.

Design
- Structured answers: `response_format` json_schema (strict), falling back to json_object
  and then plain text (the schema then goes into the prompt) when the endpoint answers 400
  about it. The working mode is remembered per process and endpoint. The raw text, the
  finish reason and `message.refusal` are returned as they came; parsing is the caller's
  (`tasks.core.answer.parse`). The mode is not part of `signature()` (it is only known once the
  endpoint has answered); the parser treats all three the same.
- Monte Carlo: one request with `n = len(call.indices)` (at most `annotator.max_n`), so the
  image is sent and billed once for K answers, with `seed` = the first seed of the request's
  indices. Endpoints that return fewer choices than asked get follow-up requests for the
  missing indices, and the smaller cap is remembered. An endpoint that rejects `seed` or
  `n > 1` is remembered too. Each answer keeps its index and seed.
- Retries live in exactly ONE layer, this one: the SDK client has `max_retries=0`. Retried:
  429, 408, 409, 5xx, timeouts and connection errors, up to `runtime.max_retries` times,
  with exponential backoff (`retry_base_s * 2**attempt`, full jitter in [0.5, 1]) capped at
  `retry_max_s`; a `retry-after-ms` or `Retry-After` header replaces the backoff. A retry
  waits outside the concurrency semaphore.
- Throughput: `runtime.concurrency` requests in flight, client-side token buckets for
  requests/min and tokens/min (estimated from text length and image size, priced by the
  model's own image billing: `transport.IMAGE_BILLING`), `runtime.timeout_s` per request.
  `run()` is a sync generator over an asyncio loop in a worker thread; results are yielded as
  they complete.
- Stopping: `AnnotatorStop` after yielding what has completed, when
  `runtime.max_consecutive_failures` calls in a row failed, when the next call's estimated
  cost would take the spend past `annotator.budget_usd`, or when the key is rejected (401/403).
- Cost: from `usage` and `annotator.price_{in,out}_per_mtok`; `estimate(calls)` prices a
  dry run without sending anything.
- `annotator.mode: batch` sends the same requests as OpenAI Batch jobs instead
  (`tasks.annotators.openai_compat.batch`): half the price, answers after the batch completes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import random
import re
import threading
import time
from typing import Any, ClassVar, Iterable, Iterator
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion

from tasks.annotators.base import Annotator, AnnotatorStop
from tasks.annotators.openai_compat.billing import Billing
from tasks.annotators.openai_compat.transport import (
    Bucket,
    Endpoint,
    Fatal,
    InFlight,
    Progress,
    bad_request_about,
    chat_messages,
    data_url,
    response_format,
    retry_after,
    retryable,
    run_in_thread,
    tokens_in,
)
from tasks.core.calls import WAIT, Call, CallResult, RawAnswer

log = logging.getLogger("seke.annotator.openai")

MODES = ("json_schema", "json_object", "text")


class OpenAIAnnotator(Billing, Annotator):
    name = "openai"
    version = "1"
    supports_verification = True

    _endpoints: ClassVar[dict[str, Endpoint]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, annotator, runtime):
        self.a = annotator
        self.rt = runtime
        self.model = annotator.model
        self._out_per_answer = float(annotator.max_output_tokens or 150)
        self._out_seen = 0
        self.spent_usd = 0.0
        self.shared = None  # tasks.infra.limits.DaskLimits: one budget and one rate for every Dask worker
        self._synced = (0.0, 0.0)  # (spent, reserved) as last told to `shared`
        self.stats = {"requests": 0, "retries": 0, "image_sends": 0}
        self.journal: str | None = None  # batch mode: where batch ids are recorded (next to the response cache)

    # -- identity -------------------------------------------------------------------
    def signature(self) -> dict:
        return {
            "backend": "openai",
            "annotator_version": self.version,
            "model": self.a.model,
            "temperature": self.a.temperature,
            "image_detail": self.a.image_detail,
            "max_output_tokens": self.a.max_output_tokens,
            # two servers that serve the same model name never share cached answers; a hash,
            # so neither the host nor anything in the URL reaches a log or a file
            "endpoint": hashlib.sha256(self.base_url().encode()).hexdigest()[:16],
        }

    @classmethod
    def base_url(cls) -> str:
        """The endpoint's base URL, normalised: no credentials, query or trailing slash."""
        from urllib.parse import urlsplit

        raw = (
            os.environ.get("AZURE_OPENAI_ENDPOINT") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        )
        u = urlsplit(raw if "://" in raw else f"https://{raw}")
        host = (u.hostname or "").lower() + (f":{u.port}" if u.port else "")
        return f"{u.scheme.lower()}://{host}{u.path.rstrip('/')}"

    @staticmethod
    def _azure() -> bool:
        return bool(os.environ.get("AZURE_OPENAI_ENDPOINT"))

    def _endpoint_key(self) -> str:
        return f"{self.base_url()}|{self.a.model}"

    @property
    def endpoint(self) -> Endpoint:
        k = self._endpoint_key()
        with self._lock:
            return self._endpoints.setdefault(k, Endpoint())

    @classmethod
    def forget_endpoints(cls) -> None:
        """Forget the learned response modes and caps (tests)."""
        with cls._lock:
            cls._endpoints.clear()

    def _make_client(self, sync: bool = False):
        """The async client of online mode (no SDK retries: they are this module's), or with
        `sync` the batch mode's (its few control calls use the SDK's own retries)."""
        kw: dict[str, Any] = {"max_retries": self.rt.max_retries if sync else 0, "timeout": self.rt.timeout_s}
        try:
            if self._azure():
                if not os.environ.get("OPENAI_API_VERSION"):
                    raise AnnotatorStop("AZURE_OPENAI_ENDPOINT is set but OPENAI_API_VERSION is not")
                return (openai.AzureOpenAI if sync else openai.AsyncAzureOpenAI)(**kw)
            if not os.environ.get("OPENAI_API_KEY"):
                raise AnnotatorStop(
                    "annotator.backend is openai but OPENAI_API_KEY is not set "
                    "(set it, and OPENAI_BASE_URL for a non-OpenAI endpoint)"
                )
            return (openai.OpenAI if sync else openai.AsyncOpenAI)(**kw)
        except openai.OpenAIError as e:
            raise AnnotatorStop(f"cannot build the openai client: {self._scrub(str(e))}") from None

    @staticmethod
    def _scrub(text: str) -> str:
        for var in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN"):
            key = os.environ.get(var)
            if key and len(key) >= 4:
                text = text.replace(key, "***")
        return re.sub(r"\bsk-[A-Za-z0-9_\-]{6,}", "sk-***", text)

    def _host(self) -> str:
        return urlsplit(self.base_url()).hostname or "?"

    # -- requests -------------------------------------------------------------------
    def _tokens_in(self, call: Call) -> int:
        return tokens_in(call, self.a.image_detail, self.a.model)

    def _delay(self, e: Exception, attempt: int) -> float:
        ra = retry_after(e)
        if ra is not None:
            return min(self.rt.retry_max_s, ra) * (1 + 0.1 * random.random())
        return min(self.rt.retry_max_s, self.rt.retry_base_s * 2**attempt) * (0.5 + 0.5 * random.random())

    def _body(self, call: Call, mode: int, url: str, n: int, seed: int) -> dict[str, Any]:
        ep = self.endpoint
        kw: dict[str, Any] = {
            "model": self.a.model,
            "temperature": self.a.temperature,
            "messages": chat_messages(call, MODES[mode], url, self.a.image_detail),
        }
        if n > 1:
            kw["n"] = n
        if ep.seed_ok:
            kw["seed"] = seed
        rf = response_format(call, MODES[mode])
        if rf is not None:
            kw["response_format"] = rf
        if self.a.max_output_tokens:
            kw["max_completion_tokens"] = self.a.max_output_tokens
        return kw

    def _learn(self, e: openai.BadRequestError, mode: int, n: int) -> bool:
        """A 400 about a parameter this endpoint does not support: remember it, and say whether
        to send the request again without it (an `n` it rejects raises `_NCapped`)."""
        ep = self.endpoint
        about = bad_request_about(e)
        if about == "response_format" and mode < len(MODES) - 1:
            with self._lock:
                if ep.mode == mode:
                    ep.mode = mode + 1
                    log.warning(
                        "endpoint rejected response_format %s; falling back to %s", MODES[mode], MODES[mode + 1]
                    )
            return True
        if about == "seed" and ep.seed_ok:
            ep.seed_ok = False
            log.warning("endpoint rejected `seed`; sending requests without it")
            return True
        if about == "n" and n > 1:
            ep.n_cap = 1
            log.warning("endpoint rejected n=%d; asking one sample per request", n)
            raise _NCapped() from None
        return False

    async def _request(self, client, call: Call, data_urls: dict, n: int, seed: int, prog: Progress):
        """One chat completion with n choices, retried here (the SDK does not retry)."""
        attempt = 0
        est = self._tokens_in(call) + n * self._out_per_answer
        while True:
            await self._rpm.take(1)
            await self._tpm.take(est)
            async with self._sem:
                mode = self.endpoint.mode  # read once a slot is free: a fallback learned meanwhile applies
                kw = self._body(call, mode, data_urls["url"], n, seed)
                self.stats["requests"] += 1
                self.stats["image_sends"] += 1
                prog.requests += 1
                try:
                    # `client.post` (the SDK's documented route for raw bodies) rather than
                    # `chat.completions.create`: the latter walks the whole body, JSON schema
                    # included, through its type transformer, ~2 ms of CPU per request, which
                    # caps throughput at high concurrency. Headers, auth, Azure routing and
                    # error types are the same.
                    t_req = time.perf_counter()
                    resp = await client.post("/chat/completions", body=kw, cast_to=ChatCompletion)
                    return resp, (time.perf_counter() - t_req) * 1e3
                except openai.BadRequestError as e:
                    if self._learn(e, mode, n):
                        continue
                    raise
                except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                    raise Fatal(
                        f"the endpoint rejected the credentials ({e.status_code}); "
                        "check OPENAI_API_KEY / AZURE_OPENAI_API_KEY"
                    ) from None
                except Exception as e:
                    if not retryable(e) or attempt >= self.rt.max_retries:
                        raise
                    delay = self._delay(e, attempt)
                    why = type(e).__name__
            attempt += 1
            self.stats["retries"] += 1
            prog.retries += 1
            log.debug(
                "request for %s failed (%s); retry %d/%d in %.2f s",
                call.face_id[:12],
                why,
                attempt,
                self.rt.max_retries,
                delay,
            )
            await asyncio.sleep(delay)

    def _absorb(self, resp, call: Call, part: list[tuple[int, int]], n: int, usage: dict) -> list[RawAnswer]:
        """The answers of one response, its token usage added to `usage`; a short response
        lowers the endpoint's remembered `n` cap."""
        choices = sorted(resp.choices or [], key=lambda c: c.index)[:n]
        if resp.usage is not None:
            usage["in"] += resp.usage.prompt_tokens or 0
            usage["out"] += resp.usage.completion_tokens or 0
        else:
            usage["in"] += self._tokens_in(call)
            usage["out"] += sum(len(c.message.content or "") // 4 for c in choices)
        if not choices:
            raise RuntimeError("the endpoint returned no choices")
        ep = self.endpoint
        if len(choices) < n and len(choices) < ep.n_cap:
            ep.n_cap = len(choices)
            log.info(
                "endpoint returned %d of n=%d choices; asking at most %d per request", len(choices), n, len(choices)
            )
        return [
            RawAnswer(
                index=idx,
                seed=seed,
                text=c.message.content,
                finish_reason=c.finish_reason,
                refusal=getattr(c.message, "refusal", None),
            )
            for (idx, seed), c in zip(part, choices)
        ]

    async def _chunk(self, client, call: Call, data_urls: dict, items: list, answers: list, usage: dict, prog) -> None:
        """Requests for `items` ((index, seed) pairs) until each has an answer or one fails."""
        while items:
            n = max(1, min(len(items), self.a.max_n, self.endpoint.n_cap))
            part = items[:n]
            try:
                resp, ms = await self._request(client, call, data_urls, n, part[0][1], prog)
            except _NCapped:
                continue
            usage["ms"] += ms
            got = self._absorb(resp, call, part, n, usage)
            answers.extend(got)
            items = items[len(got) :]

    async def _do_call(self, client, call: Call, prog: Progress) -> CallResult:
        t0 = time.perf_counter()
        data_urls = {"url": data_url(call.image)}
        answers: list[RawAnswer] = []
        usage = {"in": 0, "out": 0, "ms": 0.0}
        items = list(zip(call.indices, call.seeds))
        per = max(1, min(self.a.max_n, self.endpoint.n_cap))
        error = None
        try:
            await asyncio.gather(
                *(
                    self._chunk(client, call, data_urls, items[i : i + per], answers, usage, prog)
                    for i in range(0, len(items), per)
                )
            )
        except Fatal:
            raise
        except Exception as e:
            status = getattr(e, "status_code", None)
            msg = getattr(e, "message", None) or str(e) or type(e).__name__
            error = self._scrub(f"{type(e).__name__}{f' {status}' if status else ''}: {msg}")[:500]
            if answers:
                error += f" (after {len(answers)} of {len(items)} answers)"
        answers.sort(key=lambda a: a.index)
        cost = self._cost(usage["in"], usage["out"])
        if answers and usage["out"]:
            self._out_seen += len(answers)
            w = min(1.0, len(answers) / self._out_seen)
            self._out_per_answer += w * (usage["out"] / len(answers) - self._out_per_answer)
        return CallResult(
            call=call,
            answers=answers,
            tokens_in=usage["in"],
            tokens_out=usage["out"],
            latency_ms=usage["ms"] or (time.perf_counter() - t0) * 1e3,
            cost_usd=cost,
            error=error,
        )

    # -- the run --------------------------------------------------------------------
    def _limits(self) -> None:
        """The concurrency and the request and token rates: this process's, or (Dask) shared."""
        self._sem = asyncio.Semaphore(self.rt.concurrency)
        if self.shared is not None:
            from tasks.infra.limits import SharedBucket

            self._rpm = SharedBucket(self.shared, "rpm", self.rt.requests_per_minute)
            self._tpm = SharedBucket(self.shared, "tpm", self.rt.tokens_per_minute)
        else:
            self._rpm = Bucket(self.rt.requests_per_minute)
            self._tpm = Bucket(self.rt.tokens_per_minute)

    async def _main(self, calls: Iterable[Call], out: "queue.Queue", prog: Progress) -> str | None:
        """Send the calls; put results on `out`; return a stop reason or None."""
        self._limits()
        client = self._make_client()
        mode = MODES[self.endpoint.mode]
        log.info("openai annotator: model %s on %s, %d concurrent, response format %s", *self._about(), mode)
        fl = InFlight(self, out, prog)
        tasks = fl.tasks
        max_inflight = max(2 * self.rt.concurrency, 4)

        try:
            it = iter(calls)
            held: Call | None = None
            while fl.stop is None:
                while len(tasks) >= max_inflight and fl.stop is None:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    fl.settle(done)
                if fl.stop is not None:
                    break
                call, held = (held, None) if held is not None else (next(it, None), None)
                if call is None:
                    break
                if call is WAIT:  # a pipelined feed: the sampler is still deciding what to ask next
                    await _idle(fl)
                    continue
                est = self._call_cost(call)
                budget = self.a.budget_usd
                over, spent = await self._over_budget(fl, est, budget)
                if over:
                    if tasks:  # let in-flight calls settle first: their real cost may be lower
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                        fl.settle(done)
                        held = call
                        continue
                    fl.stop = self._budget_stop(est, spent, budget)
                    break
                fl.reserved += est
                tasks[asyncio.ensure_future(self._do_call(client, call, prog))] = est
            fatal = fl.stop is not None and not fl.stop.startswith("budget")
            if fatal:
                for t in tasks:
                    t.cancel()
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                fl.settle(done)
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
            if self.shared is not None and self.a.budget_usd:
                fl.reserved = 0.0  # nothing of ours is in flight any more: release all we reserved
                await self._sync(fl)
        return fl.stop

    def _about(self) -> tuple[str, str, int]:
        return self.a.model, self._host(), self.rt.concurrency

    def run(self, calls: Iterable[Call]) -> Iterator[CallResult]:
        if self.a.mode == "batch":
            from tasks.annotators.openai_compat.batch import BatchRunner

            return BatchRunner(self).run(calls)
        total = len(calls) if hasattr(calls, "__len__") else None  # type: ignore[arg-type]
        prog = Progress(total)
        return run_in_thread(lambda out: self._main(calls, out, prog), prog)


async def _idle(fl) -> None:
    """A moment's wait for the feed: settle a call in flight if one finishes meanwhile."""
    if fl.tasks:
        done, _ = await asyncio.wait(fl.tasks, timeout=0.005, return_when=asyncio.FIRST_COMPLETED)
        fl.settle(done)
    else:
        await asyncio.sleep(0.002)


class _NCapped(Exception):
    """The endpoint rejected n > 1; the chunk is re-split."""
