"""The OpenAI-compatible annotator's transport pieces: image token counts (GPT-4o tiling), token
buckets for requests/min and tokens/min, per-endpoint capabilities learned at run time,
progress lines, and which errors are retried and after how long.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import logging
import math
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator

import openai

from tasks.annotators.base import AnnotatorStop
from tasks.core.calls import Call, CallResult

log = logging.getLogger("seke.annotator.openai")

_RETRY_STATUS = {408, 409, 429}


_TEXT_TOKENS_PER_CHAR = 0.25


_REQUEST_OVERHEAD_TOKENS = 12


# How an image is billed, per model family. Version of this table: IMAGE_BILLING_VERSION.
# Sources: OpenAI's vision guide, "Calculating costs" (tiles: base + per 512-px tile after
# scaling to 2048 and a 768-px short side, low detail = base; patches: 32-px patches, at most
# 1536, times a multiplier, detail has no effect), checked against billed usage reported on
# its forum (2025-2026); Google's Gemini API docs, "Token counting" (an image with both sides
# <= 384 px is 258 tokens, a larger one 258 per 768-px tile), which its OpenAI-compatible
# endpoint bills the same way. The longest matching name prefix wins; a model not in the
# table is priced like GPT-4o, and `known_model()` says so (the estimate warns).
IMAGE_BILLING_VERSION = "2026-12"
IMAGE_BILLING: dict[str, tuple[str, float, float]] = {
    "gpt-4o": ("tiles", 85, 170),
    "gpt-4o-mini": ("tiles", 2833, 5667),
    "gpt-4.1": ("tiles", 85, 170),
    "gpt-4.5": ("tiles", 85, 170),
    "gpt-4.1-mini": ("patches", 1.62, 0),
    "gpt-4.1-nano": ("patches", 2.46, 0),
    "gpt-5": ("tiles", 70, 140),
    "gpt-5-mini": ("patches", 1.62, 0),
    "gpt-5-nano": ("patches", 2.46, 0),
    "o1": ("tiles", 75, 150),
    "o3": ("tiles", 75, 150),
    "o4-mini": ("patches", 1.72, 0),
    "gemini": ("gemini", 258, 768),
}


def _family(model: str) -> str | None:
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o-mini" -> "gpt-4o-mini"
    return max((k for k in IMAGE_BILLING if name.startswith(k)), key=len, default=None)


def known_model(model: str) -> bool:
    return _family(model) is not None


def billing_of(model: str) -> tuple[str, float, float]:
    return IMAGE_BILLING[_family(model) or "gpt-4o"]


def _patches(w: float, h: float, cap: int = 1536) -> int:
    n = math.ceil(w / 32) * math.ceil(h / 32)
    if n <= cap:
        return n
    s = math.sqrt(cap * 32 * 32 / (w * h))
    w, h = w * s, h * s
    s = min(math.floor(w / 32) / (w / 32), math.floor(h / 32) / (h / 32))
    return min(cap, math.ceil(w * s / 32) * math.ceil(h * s / 32))


def image_tokens(image: bytes, detail: str = "auto", model: str = "gpt-4o") -> int:
    """The tokens one image is billed as, for `model` (see IMAGE_BILLING)."""
    kind, a, b = billing_of(model)
    if kind == "tiles" and detail == "low":
        return int(a)
    try:
        from PIL import Image

        w, h = Image.open(io.BytesIO(image)).size
    except Exception:
        w = h = 1024  # unreadable here: a 1024x1024 image's worth
    if kind == "patches":
        return math.ceil(a * _patches(w, h))
    if kind == "gemini":
        return int(a) if max(w, h) <= 384 else int(a * math.ceil(w / b) * math.ceil(h / b))
    s = min(1.0, 2048 / max(w, h))
    w, h = w * s, h * s
    s = min(1.0, 768 / min(w, h))
    w, h = w * s, h * s
    return int(a + b * math.ceil(w / 512) * math.ceil(h / 512))


def data_url(image: bytes) -> str:
    """The image as a base64 data URL, the form every request sends it in."""
    import base64

    return f"data:{mime(image)};base64,{base64.b64encode(image).decode()}"


def mime(image: bytes) -> str:
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


class Fatal(Exception):
    """The whole run must stop (e.g. the key is rejected)."""


class Bucket:
    """A token bucket refilled continuously to `per_minute` per minute (0 = unlimited)."""

    def __init__(self, per_minute: int):
        self.cap = float(per_minute)
        self.level = self.cap
        self.t = time.monotonic()
        self.waits = 0  # times a take had to wait for the bucket to refill

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
            self.waits += 1
            await asyncio.sleep((amount - self.level) * 60 / self.cap)


@dataclass
class Endpoint:
    """What was learned about one endpoint+model in this process."""

    mode: int = 0
    n_cap: int = 1 << 30
    seed_ok: bool = True


class Progress:
    """What one annotator run's transport did: calls, HTTP requests, retries, errors and cost,
    logged once at the end. The live display is the stage's (`tasks.infra.progress`)."""

    def __init__(self, total: int | None):
        self.total = total
        self.done = self.errors = self.retries = self.requests = 0
        self.cost = 0.0
        self.t0 = time.monotonic()

    def update(self, r: CallResult) -> None:
        self.done += 1
        self.errors += r.error is not None
        self.cost += r.cost_usd

    def close(self) -> None:
        el = max(time.monotonic() - self.t0, 1e-9)
        log.info(
            "done: %d calls, %.2f calls/s, %d requests, %d retries, %d errors, cost $%.4f",
            self.done,
            self.done / el,
            self.requests,
            self.retries,
            self.errors,
            self.cost,
        )


def retry_after(e: Exception) -> float | None:
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


def retryable(e: Exception) -> bool:
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code in _RETRY_STATUS or e.status_code >= 500
    return False


def bad_request_about(e: openai.BadRequestError) -> str | None:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    param = str((err or {}).get("param") or "")
    msg = f"{param} {e.message}".lower()
    if "response_format" in msg or "json_schema" in msg or "json_object" in msg or "structured output" in msg:
        return "response_format"
    if param == "seed" or re.search(r"\bseed\b", msg):
        return "seed"
    if param == "n" or re.search(r"('n'|\"n\"|\bn\b\s*(must|should|>|<|=)|number of choices|multiple choices)", msg):
        return "n"
    return None


def chat_messages(call: Call, mode: str, data_url: str, detail: str) -> list[dict]:
    """The request's messages with the image in place (and the schema in text, without json_schema)."""
    out = []
    for m in call.messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.get("type") == "image_ref":
                    parts.append({"type": "image_url", "image_url": {"url": data_url, "detail": detail}})
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


def response_format(call: Call, mode: str) -> dict | None:
    if mode == "json_schema":
        name = re.sub(r"[^A-Za-z0-9_-]", "_", call.schema.get("title") or "answer")[:64]
        return {"type": "json_schema", "json_schema": {"name": name, "schema": call.schema, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def tokens_in(call: Call, detail: str, model: str = "gpt-4o") -> int:
    """Prompt tokens of one request, estimated (text length, the model's image billing)."""
    chars = 0
    for m in call.messages:
        c = m.get("content")
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            chars += sum(len(p.get("text", "")) for p in c if p.get("type") == "text")
    chars += len(json.dumps(call.schema))
    return int(chars * _TEXT_TOKENS_PER_CHAR) + image_tokens(call.image, detail, model) + _REQUEST_OVERHEAD_TOKENS


class InFlight:
    """The calls in flight of one run, their reserved cost, and the reason to stop (if any)."""

    def __init__(self, ann: Any, out: "queue.Queue", prog: Progress):
        self.ann, self.out, self.prog = ann, out, prog
        self.tasks: dict[asyncio.Task, float] = {}
        self.reserved, self.consecutive, self.stop = 0.0, 0, None

    def settle(self, done: Iterable[asyncio.Task]) -> None:
        for t in done:
            self.reserved -= self.tasks.pop(t)
            try:
                r = t.result()
            except Fatal as e:
                self.stop = self.stop or str(e)
                continue
            except asyncio.CancelledError:
                continue
            self.ann.spent_usd += r.cost_usd
            self.consecutive = self.consecutive + 1 if r.error else 0
            self.prog.update(r)
            self.out.put(("result", r))
            limit = self.ann.rt.max_consecutive_failures
            if limit and self.consecutive >= limit and self.stop is None:
                self.stop = (
                    f"the last {self.consecutive} calls all failed (last error: {r.error}); "
                    "stopping the run; results so far are kept"
                )


def run_in_thread(main_fn: Callable[[queue.Queue], Awaitable[str | None]], prog: Progress) -> Iterator[CallResult]:
    """A sync generator over `main(out)`, an asyncio coroutine run in a worker thread that puts
    ("result", r) items on `out` and returns a stop reason or None. Results are yielded as
    they come; a stop reason raises `AnnotatorStop`; an early exit of the consumer cancels
    the run."""
    out: queue.Queue = queue.Queue()
    loop = asyncio.new_event_loop()
    holder: dict[str, asyncio.Task] = {}

    def worker() -> None:
        asyncio.set_event_loop(loop)
        try:
            main = loop.create_task(main_fn(out))
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
