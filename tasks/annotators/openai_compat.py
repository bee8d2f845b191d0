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
  requests/min and tokens/min (estimated from text length and image size, GPT-4o image
  tiling), `runtime.timeout_s` per request. `run()` is a sync generator over an asyncio loop
  in a worker thread; results are yielded as they complete.
- Stopping: `AnnotatorStop` after yielding what has completed, when
  `runtime.max_consecutive_failures` calls in a row failed, when the next call's estimated
  cost would take the spend past `annotator.budget_usd`, or when the key is rejected (401/403).
- Cost: from `usage` and `annotator.price_{in,out}_per_mtok`; `estimate(calls)` prices a
  dry run without sending anything.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import math
import os
import queue
import random
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator
from urllib.parse import urlsplit

import openai
from openai.types.chat import ChatCompletion

from tasks.annotators.base import Annotator, AnnotatorStop, Call, CallResult, RawAnswer

log = logging.getLogger("seke.annotator.openai")

MODES = ("json_schema", "json_object", "text")
_RETRY_STATUS = {408, 409, 429}
_TEXT_TOKENS_PER_CHAR = 0.25
_REQUEST_OVERHEAD_TOKENS = 12


def image_tokens(image: bytes, detail: str = "auto") -> int:
    """GPT-4o's billed tokens for one image: 85 base + 170 per 512-px tile after scaling."""
    if detail == "low":
        return 85
    try:
        from PIL import Image

        w, h = Image.open(io.BytesIO(image)).size
    except Exception:
        return 765  # a 1024x1024 image's worth
    s = min(1.0, 2048 / max(w, h))
    w, h = w * s, h * s
    s = min(1.0, 768 / min(w, h))
    w, h = w * s, h * s
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def _mime(image: bytes) -> str:
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


class _Fatal(Exception):
    """The whole run must stop (e.g. the key is rejected)."""


class _Bucket:
    """A token bucket refilled continuously to `per_minute` per minute (0 = unlimited)."""

    def __init__(self, per_minute: int):
        self.cap = float(per_minute)
        self.level = self.cap
        self.t = time.monotonic()

    async def take(self, amount: float) -> None:
        if self.cap <= 0:
            return
        amount = min(amount, self.cap)
        while True:
            now = time.monotonic()
            self.level = min(self.cap, self.level + (now - self.t) * self.cap / 60)
            self.t = now
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) * 60 / self.cap)


@dataclass
class _Endpoint:
    """What was learned about one endpoint+model in this process."""

    mode: int = 0
    n_cap: int = 1 << 30
    seed_ok: bool = True


class _Progress:
    def __init__(self, total: int | None, every_s: float):
        self.total, self.every_s = total, every_s
        self.done = self.errors = self.retries = self.requests = 0
        self.cost = 0.0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="call", desc="openai", leave=False)
            except Exception:  # pragma: no cover
                self.bar = None

    def update(self, r: CallResult) -> None:
        self.done += 1
        self.errors += r.error is not None
        self.cost += r.cost_usd
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(cost=f"${self.cost:.4f}", errors=self.errors, refresh=False)
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.emit()

    def emit(self, final: bool = False) -> None:
        el = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / el
        tot = f"/{self.total}" if self.total is not None else ""
        eta = ""
        if self.total is not None and rate > 0 and not final:
            eta = f", ETA {max(self.total - self.done, 0) / rate:.0f} s"
        log.info(
            "%s%s calls %s, %.2f calls/s%s, %d requests, %d retries, %d errors, cost $%.4f",
            "done: " if final else "",
            self.done,
            tot,
            rate,
            eta,
            self.requests,
            self.retries,
            self.errors,
            self.cost,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.emit(final=True)


class OpenAIAnnotator(Annotator):
    name = "openai"
    version = "1"

    _endpoints: ClassVar[dict[str, _Endpoint]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, annotator, runtime):
        self.a = annotator
        self.rt = runtime
        self.model = annotator.model
        self._out_per_answer = float(annotator.max_output_tokens or 150)
        self._out_seen = 0
        self.spent_usd = 0.0
        self.stats = {"requests": 0, "retries": 0, "image_sends": 0}

    # -- identity -------------------------------------------------------------------
    def signature(self) -> dict:
        return {
            "backend": "openai",
            "annotator_version": self.version,
            "model": self.a.model,
            "temperature": self.a.temperature,
            "image_detail": self.a.image_detail,
            "max_output_tokens": self.a.max_output_tokens,
        }

    @staticmethod
    def _azure() -> bool:
        return bool(os.environ.get("AZURE_OPENAI_ENDPOINT"))

    def _endpoint_key(self) -> str:
        base = os.environ.get("AZURE_OPENAI_ENDPOINT") or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
        return f"{base}|{self.a.model}"

    @property
    def endpoint(self) -> _Endpoint:
        k = self._endpoint_key()
        with self._lock:
            return self._endpoints.setdefault(k, _Endpoint())

    @classmethod
    def forget_endpoints(cls) -> None:
        """Forget the learned response modes and caps (tests)."""
        with cls._lock:
            cls._endpoints.clear()

    def _make_client(self):
        kw: dict[str, Any] = {"max_retries": 0, "timeout": self.rt.timeout_s}
        try:
            if self._azure():
                if not os.environ.get("OPENAI_API_VERSION"):
                    raise AnnotatorStop("AZURE_OPENAI_ENDPOINT is set but OPENAI_API_VERSION is not")
                return openai.AsyncAzureOpenAI(**kw)
            if not os.environ.get("OPENAI_API_KEY"):
                raise AnnotatorStop(
                    "annotator.backend is openai but OPENAI_API_KEY is not set "
                    "(set it, and OPENAI_BASE_URL for a non-OpenAI endpoint)"
                )
            return openai.AsyncOpenAI(**kw)
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
        base = os.environ.get("AZURE_OPENAI_ENDPOINT") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com"
        return urlsplit(base).hostname or "?"

    # -- requests -------------------------------------------------------------------
    def _messages(self, call: Call, mode: str, data_url: str) -> list[dict]:
        out = []
        for m in call.messages:
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for p in content:
                    if p.get("type") == "image_ref":
                        parts.append(
                            {"type": "image_url", "image_url": {"url": data_url, "detail": self.a.image_detail}}
                        )
                    else:
                        parts.append(p)
                content = parts
            out.append({**m, "content": content})
        if mode != "json_schema":
            hint = "Answer with one JSON object, and nothing else, that follows this JSON schema: " + json.dumps(
                call.schema, separators=(",", ":")
            )
            out.append({"role": "system", "content": hint})
        return out

    def _response_format(self, call: Call, mode: str) -> dict | None:
        if mode == "json_schema":
            name = re.sub(r"[^A-Za-z0-9_-]", "_", call.schema.get("title") or "answer")[:64]
            return {"type": "json_schema", "json_schema": {"name": name, "schema": call.schema, "strict": True}}
        if mode == "json_object":
            return {"type": "json_object"}
        return None

    def _tokens_in(self, call: Call) -> int:
        chars = 0
        for m in call.messages:
            c = m.get("content")
            if isinstance(c, str):
                chars += len(c)
            elif isinstance(c, list):
                chars += sum(len(p.get("text", "")) for p in c if p.get("type") == "text")
        chars += len(json.dumps(call.schema))
        return (
            int(chars * _TEXT_TOKENS_PER_CHAR)
            + image_tokens(call.image, self.a.image_detail)
            + _REQUEST_OVERHEAD_TOKENS
        )

    def _cost(self, tin: float, tout: float) -> float:
        return (tin * self.a.price_in_per_mtok + tout * self.a.price_out_per_mtok) / 1e6

    def _requests_for(self, k: int) -> int:
        return math.ceil(k / max(1, min(self.a.max_n, self.endpoint.n_cap)))

    def estimate(self, calls: Iterable[Call]) -> dict:
        """What the calls would cost, without sending anything."""
        n_calls = reqs = samples = 0
        tin = tout = 0.0
        for c in calls:
            r = self._requests_for(len(c.indices))
            n_calls += 1
            reqs += r
            samples += len(c.indices)
            tin += r * self._tokens_in(c)
            tout += len(c.indices) * self._out_per_answer
        return {
            "calls": n_calls,
            "requests": reqs,
            "image_sends": reqs,
            "samples": samples,
            "tokens_in": int(tin),
            "tokens_out": int(tout),
            "cost_usd": self._cost(tin, tout),
        }

    @staticmethod
    def _retry_after(e: Exception) -> float | None:
        resp = getattr(e, "response", None)
        headers = getattr(resp, "headers", None)
        if not headers:
            return None
        ms = headers.get("retry-after-ms")
        if ms:
            try:
                return float(ms) / 1000
            except ValueError:
                pass
        s = headers.get("retry-after")
        if s:
            try:
                return float(s)
            except ValueError:
                try:
                    return max(0.0, email.utils.parsedate_to_datetime(s).timestamp() - time.time())
                except (TypeError, ValueError):
                    return None
        return None

    def _delay(self, e: Exception, attempt: int) -> float:
        ra = self._retry_after(e)
        if ra is not None:
            return min(self.rt.retry_max_s, ra) * (1 + 0.1 * random.random())
        return min(self.rt.retry_max_s, self.rt.retry_base_s * 2**attempt) * (0.5 + 0.5 * random.random())

    @staticmethod
    def _retryable(e: Exception) -> bool:
        if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
            return True
        if isinstance(e, openai.APIStatusError):
            return e.status_code in _RETRY_STATUS or e.status_code >= 500
        return False

    @staticmethod
    def _bad_request_about(e: openai.BadRequestError) -> str | None:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        param = str((err or {}).get("param") or "")
        msg = f"{param} {e.message}".lower()
        if "response_format" in msg or "json_schema" in msg or "json_object" in msg or "structured output" in msg:
            return "response_format"
        if param == "seed" or re.search(r"\bseed\b", msg):
            return "seed"
        if param == "n" or re.search(
            r"('n'|\"n\"|\bn\b\s*(must|should|>|<|=)|number of choices|multiple choices)", msg
        ):
            return "n"
        return None

    async def _request(self, client, call: Call, data_urls: dict, n: int, seed: int, prog: _Progress):
        """One chat completion with n choices, retried here (the SDK does not retry)."""
        ep = self.endpoint
        attempt = 0
        est = self._tokens_in(call) + n * self._out_per_answer
        while True:
            await self._rpm.take(1)
            await self._tpm.take(est)
            async with self._sem:
                mode = ep.mode  # read once a slot is free: a fallback learned meanwhile applies
                kw: dict[str, Any] = {
                    "model": self.a.model,
                    "temperature": self.a.temperature,
                    "messages": self._messages(call, MODES[mode], data_urls["url"]),
                }
                if n > 1:
                    kw["n"] = n
                if ep.seed_ok:
                    kw["seed"] = seed
                rf = self._response_format(call, MODES[mode])
                if rf is not None:
                    kw["response_format"] = rf
                if self.a.max_output_tokens:
                    kw["max_completion_tokens"] = self.a.max_output_tokens
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
                    prog_latency = (time.perf_counter() - t_req) * 1e3
                    return resp, prog_latency
                except openai.BadRequestError as e:
                    about = self._bad_request_about(e)
                    if about == "response_format" and mode < len(MODES) - 1:
                        with self._lock:
                            if ep.mode == mode:
                                ep.mode = mode + 1
                                log.warning(
                                    "endpoint rejected response_format %s; falling back to %s",
                                    MODES[mode],
                                    MODES[mode + 1],
                                )
                        continue
                    if about == "seed" and ep.seed_ok:
                        ep.seed_ok = False
                        log.warning("endpoint rejected `seed`; sending requests without it")
                        continue
                    if about == "n" and n > 1:
                        ep.n_cap = 1
                        log.warning("endpoint rejected n=%d; asking one sample per request", n)
                        raise _NCapped() from None
                    raise
                except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                    raise _Fatal(
                        f"the endpoint rejected the credentials ({e.status_code}); "
                        "check OPENAI_API_KEY / AZURE_OPENAI_API_KEY"
                    ) from None
                except Exception as e:
                    if not self._retryable(e) or attempt >= self.rt.max_retries:
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

    async def _do_call(self, client, call: Call, prog: _Progress) -> CallResult:
        t0 = time.perf_counter()
        data_urls = {"url": f"data:{_mime(call.image)};base64,{base64.b64encode(call.image).decode()}"}
        answers: list[RawAnswer] = []
        usage = {"in": 0, "out": 0, "ms": 0.0}

        async def chunk(items: list[tuple[int, int]]) -> None:
            while items:
                n = max(1, min(len(items), self.a.max_n, self.endpoint.n_cap))
                part = items[:n]
                try:
                    resp, ms = await self._request(client, call, data_urls, n, part[0][1], prog)
                except _NCapped:
                    continue
                usage["ms"] += ms
                choices = sorted(resp.choices or [], key=lambda c: c.index)[:n]
                if resp.usage is not None:
                    usage["in"] += resp.usage.prompt_tokens or 0
                    usage["out"] += resp.usage.completion_tokens or 0
                else:
                    usage["in"] += self._tokens_in(call)
                    usage["out"] += sum(len(c.message.content or "") // 4 for c in choices)
                if not choices:
                    raise RuntimeError("the endpoint returned no choices")
                if len(choices) < n:
                    ep = self.endpoint
                    if len(choices) < ep.n_cap:
                        ep.n_cap = len(choices)
                        log.info(
                            "endpoint returned %d of n=%d choices; asking at most %d per request",
                            len(choices),
                            n,
                            len(choices),
                        )
                for (idx, seed), c in zip(part, choices):
                    answers.append(
                        RawAnswer(
                            index=idx,
                            seed=seed,
                            text=c.message.content,
                            finish_reason=c.finish_reason,
                            refusal=getattr(c.message, "refusal", None),
                        )
                    )
                items = items[len(choices) :]

        items = list(zip(call.indices, call.seeds))
        per = max(1, min(self.a.max_n, self.endpoint.n_cap))
        error = None
        try:
            await asyncio.gather(*(chunk(items[i : i + per]) for i in range(0, len(items), per)))
        except _Fatal:
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
    async def _main(self, calls: Iterable[Call], out: "queue.Queue", prog: _Progress) -> str | None:
        """Send the calls; put results on `out`; return a stop reason or None."""
        self._sem = asyncio.Semaphore(self.rt.concurrency)
        self._rpm = _Bucket(self.rt.requests_per_minute)
        self._tpm = _Bucket(self.rt.tokens_per_minute)
        client = self._make_client()
        log.info(
            "openai annotator: model %s on %s, %d concurrent, response format %s",
            self.a.model,
            self._host(),
            self.rt.concurrency,
            MODES[self.endpoint.mode],
        )
        tasks: dict[asyncio.Task, float] = {}
        reserved = 0.0
        consecutive = 0
        stop: str | None = None
        max_inflight = max(2 * self.rt.concurrency, 4)

        def settle(done: Iterable[asyncio.Task]) -> None:
            nonlocal reserved, consecutive, stop
            for t in done:
                reserved -= tasks.pop(t)
                try:
                    r = t.result()
                except _Fatal as e:
                    stop = stop or str(e)
                    continue
                except asyncio.CancelledError:
                    continue
                self.spent_usd += r.cost_usd
                consecutive = consecutive + 1 if r.error else 0
                prog.update(r)
                out.put(("result", r))
                limit = self.rt.max_consecutive_failures
                if limit and consecutive >= limit and stop is None:
                    stop = (
                        f"the last {consecutive} calls all failed (last error: {r.error}); "
                        "stopping the run; results so far are kept"
                    )

        try:
            it = iter(calls)
            held: Call | None = None
            while stop is None:
                while len(tasks) >= max_inflight and stop is None:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    settle(done)
                if stop is not None:
                    break
                call, held = (held, None) if held is not None else (next(it, None), None)
                if call is None:
                    break
                est = self._cost(
                    self._requests_for(len(call.indices)) * self._tokens_in(call),
                    len(call.indices) * self._out_per_answer,
                )
                budget = self.a.budget_usd
                if budget and self.spent_usd + reserved + est > budget:
                    if tasks:  # let in-flight calls settle first: their real cost may be lower
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                        settle(done)
                        held = call
                        continue
                    stop = (
                        f"budget: the next call (about ${est:.4f}) would take the spend "
                        f"${self.spent_usd:.4f} past annotator.budget_usd=${budget:.4f}; stopping"
                    )
                    break
                reserved += est
                tasks[asyncio.ensure_future(self._do_call(client, call, prog))] = est
            fatal = stop is not None and not stop.startswith("budget")
            if fatal:
                for t in tasks:
                    t.cancel()
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                settle(done)
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
        return stop

    def run(self, calls: Iterable[Call]) -> Iterator[CallResult]:
        total = len(calls) if hasattr(calls, "__len__") else None  # type: ignore[arg-type]
        prog = _Progress(total, self.rt.progress_every_s)
        out: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        holder: dict[str, asyncio.Task] = {}

        def worker() -> None:
            asyncio.set_event_loop(loop)
            try:
                main = loop.create_task(self._main(calls, out, prog))
                holder["main"] = main
                stop = loop.run_until_complete(main)
                out.put(("stop", stop) if stop else ("done", None))
            except asyncio.CancelledError:
                out.put(("done", None))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                out.put(("raise", e))
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        th = threading.Thread(target=worker, name="openai-annotator", daemon=True)
        th.start()
        finished = False
        try:
            while True:
                kind, item = out.get()
                if kind == "result":
                    yield item
                    continue
                finished = True
                prog.close()
                if kind == "stop":
                    log.error("openai annotator stopped: %s", item)
                    raise AnnotatorStop(item)
                if kind == "raise":
                    if isinstance(item, AnnotatorStop):
                        log.error("openai annotator stopped: %s", item)
                    raise item
                return
        finally:
            if not finished:  # the consumer stopped early: cancel the run
                main = holder.get("main")
                if main is not None and not loop.is_closed():
                    try:
                        loop.call_soon_threadsafe(main.cancel)
                    except RuntimeError:
                        pass
            th.join(timeout=30)


class _NCapped(Exception):
    """The endpoint rejected n > 1; the chunk is re-split."""
