"""A simulated vision LLM behind an OpenAI-compatible HTTP API, with known ground truth.

It stands in for GPT-4o in tests and benchmarks. It is honest about what it is: its answers
come from a ground-truth table plus configurable, seeded noise, not from looking at faces.

    python -m simvllm.server --manifest truth.csv --port 8011 [--config sim.json] [--log requests.jsonl]
    OPENAI_BASE_URL=http://127.0.0.1:8011/v1 OPENAI_API_KEY=sim NO_PROXY=127.0.0.1 dvc repro

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, and for tests `GET /sim/log`,
`POST /sim/reset` (clears the log and attempt counters), `GET|POST /sim/config`.

Faces are identified by the SHA-256 of the image bytes in the request's data URL. The
manifest (CSV, JSON or JSONL; columns `sha256` or `path`, `expression`, `valence`, `arousal`,
`aus` as a list or `AU06;AU12`, optional `accuracy`) gives their truth; unknown images get a
deterministic pseudo-random truth.

The asked fields come from the JSON schema in `response_format`, or, when there is none,
from a schema or the wording in the prompt text. Every answer has exactly those fields.

Noise model (all in `SimConfig`): each face has a single-sample expression accuracy (the
global `accuracy`, spread by a per-face difficulty, or the manifest's `accuracy`) and a fixed
distractor label that `systematic` of its wrong answers name. VA and AUs follow partly the
expression the answer states (`follow_stated`, so a wrong label drags them along), plus VA
noise and AU flips. Same request + same seed gives the same answers. Faults (429 with
Retry-After, 500, timeouts, truncated JSON, refusals, out-of-range values) are drawn per
attempt from the request fingerprint, so a run is reproducible too.

A hook for other request kinds: `SimVLLM.handlers` is a list of `(detect, answer)` pairs
tried before the default annotation handler; a default one answers self-verification
requests (schema with a `confirm*`/`verdict`/`agree*` property): it finds the claimed
expression (the last `"expression": "x"` quoted in the prompt, else the last label named),
confirms it with probability `verify_confirm_correct` if it is the truth,
`verify_confirm_distractor` if it is the face's distractor (when >= 0), else
`verify_confirm_wrong`, and otherwise corrects it with a fresh answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from tasks.core.knowledge import load as load_knowledge

log = logging.getLogger("seke.simvllm")


@dataclass
class SimConfig:
    model: str = "sim-vllm"
    seed: int = 0
    # answer quality
    accuracy: float = 0.75  # mean single-sample expression accuracy
    difficulty_spread: float = 0.3  # per-face accuracy = accuracy +- this (uniform), clipped
    systematic: float = 0.7  # share of wrong answers naming the face's fixed distractor
    va_noise: float = 0.15  # std of Gaussian noise on valence and arousal
    au_flip: float = 0.05  # chance that each AU's occurrence is flipped
    follow_stated: float = (
        0.85  # share of AUs/VA that follow the stated expression, not the truth (real VLLMs rationalise)
    )
    # protocol behaviour
    n_mode: str = "honour"  # honour | ignore (always 1 choice) | cap (at most n_cap)
    n_cap: int = 4
    reject_json_schema: bool = False  # 400 on response_format json_schema
    reject_json_object: bool = False  # 400 on response_format json_object
    reject_seed: bool = False  # 400 when `seed` is sent
    require_key: str = ""  # if set, other bearer keys get a 401 that echoes them
    # timing
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # faults, per attempt (request level) or per choice (answer level)
    rate_429: float = 0.0
    retry_after_s: float = 0.05  # sent as Retry-After (seconds, rounded up) and retry-after-ms
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    timeout_sleep_s: float = 30.0  # how long a "timed out" request sleeps before answering
    fault_max_attempt: int = 0  # request-level faults only on attempts < this; 0 = any attempt
    rate_truncated: float = 0.0
    rate_refusal: float = 0.0
    rate_out_of_range: float = 0.0
    # self-verification hook (default handler)
    verify_confirm_correct: float = 0.9
    verify_confirm_wrong: float = 0.3
    verify_confirm_distractor: float = -1.0  # confirm rate when the claim is the face's distractor; <0 = as wrong
    tokens_per_image: int = 255

    def update(self, d: dict) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        bad = set(d) - names
        if bad:
            raise ValueError(f"unknown sim config keys {sorted(bad)}")
        for k, v in d.items():
            cur = getattr(self, k)
            if isinstance(cur, bool) and isinstance(v, str):
                v = v.lower() in ("1", "true", "yes")
            setattr(self, k, type(cur)(v))


@dataclass
class Truth:
    expression: str
    valence: float
    arousal: float
    aus: list[str]
    accuracy: float | None = None


def _u(*parts: Any) -> float:
    """A deterministic uniform [0, 1) from any parts."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest())


def _clip(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return max(lo, min(hi, x))


def load_manifest(path: str | Path | None) -> dict[str, Truth]:
    """sha256 -> Truth from a CSV/JSON/JSONL manifest (`path` rows are hashed from disk)."""
    if not path:
        return {}
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".json":
        rows = json.loads(text)
        rows = [dict(sha256=k, **v) for k, v in rows.items()] if isinstance(rows, dict) else rows
    elif p.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    k = load_knowledge()
    out: dict[str, Truth] = {}
    for r in rows:
        sha = r.get("sha256") or ""
        if not sha and r.get("path"):
            f = (p.parent / r["path"]) if not Path(r["path"]).is_absolute() else Path(r["path"])
            if not f.is_file():
                continue
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
        if not sha or not r.get("expression"):
            continue
        expr = k.expression(r["expression"])
        cv, ca, _ = k.va_centroid(expr)
        aus = r.get("aus")
        if isinstance(aus, str):
            aus = [a for a in re.split(r"[;,\s]+", aus) if a]
        if aus is None or aus == "":
            aus = k.prototype(expr)[0]
        val = r.get("valence")
        aro = r.get("arousal")
        acc = r.get("accuracy")
        out[sha] = Truth(
            expr,
            float(val) if val not in (None, "") else cv,
            float(aro) if aro not in (None, "") else ca,
            sorted(k.au_code(a) for a in aus),
            float(acc) if acc not in (None, "") else None,
        )
    return out


class SimVLLM:
    """The simulator's state and logic; `app()` wraps it in an aiohttp application."""

    def __init__(
        self, config: SimConfig | None = None, truth: dict[str, Truth] | None = None, log_path: str | Path | None = None
    ):
        self.config = config or SimConfig()
        self.truth = dict(truth or {})
        self.k = load_knowledge()
        self.log: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.calls_without_seed: dict[str, int] = {}
        self.log_path = Path(log_path) if log_path else None
        self._log_fh = open(self.log_path, "a") if self.log_path else None
        self.handlers: list[tuple[Callable[[dict, dict], bool], Callable]] = [
            (self._is_verification, self._answer_verification)
        ]

    # -- ground truth --------------------------------------------------------------
    def truth_of(self, sha: str) -> Truth:
        t = self.truth.get(sha)
        if t is None:
            r = _rng("truth", self.config.seed, sha)
            expr = r.choice(self.k.expressions)
            cv, ca, s = self.k.va_centroid(expr)
            core, often = self.k.prototype(expr)
            aus = set(core) | {a for a in often if r.random() < 0.5}
            t = Truth(expr, _clip(cv + r.gauss(0, s / 2)), _clip(ca + r.gauss(0, s / 2)), sorted(aus))
            self.truth[sha] = t
        return t

    def face_accuracy(self, sha: str, t: Truth) -> float:
        if t.accuracy is not None:
            return t.accuracy
        c = self.config
        z = 2 * _u("difficulty", c.seed, sha) - 1
        return _clip(c.accuracy + c.difficulty_spread * z, 0.0, 1.0)

    def distractor(self, sha: str, t: Truth) -> str:
        others = [e for e in self.k.expressions if e != t.expression]
        return others[int(_u("distractor", self.config.seed, sha) * len(others))]

    # -- one answer ------------------------------------------------------------------
    def draw(self, sha: str, fields: list[str], stated_prior: str | None, r: random.Random) -> dict:
        """One sample's answer object for the asked fields."""
        c, k = self.config, self.k
        t = self.truth_of(sha)
        if r.random() < self.face_accuracy(sha, t):
            expr = t.expression
        elif r.random() < c.systematic:
            expr = self.distractor(sha, t)
        else:
            expr = r.choice([e for e in k.expressions if e != t.expression])
        stated = expr if ("expression" in fields or not stated_prior) else stated_prior
        cv, ca, _ = k.va_centroid(stated)
        w = c.follow_stated
        val = _clip(w * cv + (1 - w) * t.valence + r.gauss(0, c.va_noise))
        aro = _clip(w * ca + (1 - w) * t.arousal + r.gauss(0, c.va_noise))
        proto = set(k.prototype(stated)[0])
        aus = []
        for a in k.aus:
            on = (a in proto) if r.random() < w else (a in t.aus)
            if r.random() < c.au_flip:
                on = not on
            if on:
                aus.append(a)
        out: dict[str, Any] = {}
        for f in fields:
            if f == "expression":
                out[f] = expr
            elif f == "valence":
                out[f] = round(val, 3)
            elif f == "arousal":
                out[f] = round(aro, 3)
            elif f == "aus":
                out[f] = aus
            elif f == "rationale":
                out[f] = f"The face looks {stated}" + (
                    f", with {', '.join(aus[:3])} visible." if aus else ", with no clear action units."
                )
            else:
                out[f] = None
        return out

    # -- request parsing --------------------------------------------------------------
    @staticmethod
    def _parts(body: dict) -> tuple[str, list[bytes]]:
        texts, images = [], []
        for m in body.get("messages", []):
            content = m.get("content")
            if isinstance(content, str):
                texts.append(content)
                continue
            for part in content or []:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    url = part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else part["image_url"]
                    if url.startswith("data:"):
                        images.append(base64.b64decode(url.split(",", 1)[1]))
                    else:
                        images.append(url.encode())
        return "\n".join(texts), images

    @staticmethod
    def _schema(body: dict, text: str) -> dict | None:
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema":
            return (rf.get("json_schema") or {}).get("schema")
        # a schema quoted in the prompt
        i = text.find('{"')
        while i >= 0:
            try:
                obj, _ = json.JSONDecoder().raw_decode(text[i:])
                if isinstance(obj, dict) and isinstance(obj.get("properties"), dict):
                    return obj
            except json.JSONDecodeError:
                pass
            i = text.find('{"', i + 1)
        return None

    @staticmethod
    def fields_from_text(text: str) -> list[str]:
        report = [ln for ln in text.splitlines() if ln.lower().startswith("report")]
        t = (report[-1] if report else text).lower()
        fields = []
        if "expression" in t:
            fields.append("expression")
        if "valence" in t or "arousal" in t:
            fields += ["valence", "arousal"]
        if "action unit" in t or re.search(r"\baus?\b", t):
            fields.append("aus")
        return fields + ["rationale"] if fields else ["expression", "rationale"]

    def fingerprint(self, body: dict) -> str:
        keep = {k: v for k, v in body.items() if k not in ("n", "seed", "stream", "user")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    # -- self-verification hook -----------------------------------------------------------
    @staticmethod
    def _is_verification(body: dict, schema: dict | None) -> bool:
        props = (schema or {}).get("properties") or {}
        return any(re.match(r"(confirm|verdict|agree)", p) for p in props)

    def _answer_verification(self, sha: str, schema: dict, text: str, r: random.Random) -> dict:
        t = self.truth_of(sha)
        m = re.findall(r'"expression":\s*"(\w+)"', text)
        if m and m[-1].lower() in self.k.expressions:
            claimed: str | None = m[-1].lower()  # a proposed answer quoted as JSON
        else:
            named = [e for e in self.k.expressions if re.search(rf"\b{e}\b", text.lower())]
            claimed = named[-1] if named else None
        c = self.config
        if claimed == t.expression:
            p = c.verify_confirm_correct
        elif claimed == self.distractor(sha, t) and c.verify_confirm_distractor >= 0:
            p = c.verify_confirm_distractor  # models tend to confirm their own systematic mistakes
        else:
            p = c.verify_confirm_wrong
        ok = r.random() < p
        out: dict[str, Any] = {}
        for name, spec in (schema.get("properties") or {}).items():
            typ = spec.get("type")
            if typ == "boolean":
                out[name] = ok
            elif "expression" in name or "label" in name or "correct" in name:
                if ok or claimed is None:
                    out[name] = claimed
                else:  # a correction: a fresh answer other than the rejected claim
                    others = [self.draw(sha, ["expression"], None, r)["expression"] for _ in range(8)]
                    out[name] = next((e for e in others if e != claimed), others[0])
            elif "enum" in spec:
                out[name] = spec["enum"][0 if ok else -1]
            elif typ == "number":
                out[name] = round(p, 2)
            else:
                out[name] = (
                    "The stated answer matches the face." if ok else "The stated answer does not match the face."
                )
        return out

    # -- the endpoint -------------------------------------------------------------------
    def _record(self, entry: dict) -> None:
        self.log.append(entry)
        if self._log_fh:
            self._log_fh.write(json.dumps(entry) + "\n")
            self._log_fh.flush()

    async def chat(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        c = self.config
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "body is not JSON")
        if c.require_key and request.headers.get("Authorization", "") != f"Bearer {c.require_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            self._record({"t": time.time(), "fingerprint": None, "status": 401, "fault": "auth", "n": body.get("n")})
            return _error(401, f"Incorrect API key provided: {given}.")
        fp = self.fingerprint(body)
        attempt = self.attempts.get(fp, 0)
        self.attempts[fp] = attempt + 1
        n = int(body.get("n") or 1)
        rf_type = (body.get("response_format") or {}).get("type", "text")
        text, images = self._parts(body)
        sha = hashlib.sha256(images[0]).hexdigest() if images else hashlib.sha256(text.encode()).hexdigest()
        entry = {
            "t": time.time(),
            "fingerprint": fp,
            "attempt": attempt,
            "image_sha256": sha,
            "n": n,
            "seed": body.get("seed"),
            "response_format": rf_type,
            "status": 200,
            "fault": None,
            "choices": 0,
        }

        def fail(status: int, msg: str, fault: str, headers: dict | None = None) -> web.Response:
            entry.update(status=status, fault=fault, ms=round((time.perf_counter() - t0) * 1e3, 1))
            self._record(entry)
            return _error(status, msg, headers)

        if rf_type == "json_schema" and c.reject_json_schema:
            return fail(
                400,
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
                "reject_json_schema",
            )
        if rf_type == "json_object" and c.reject_json_object:
            return fail(
                400,
                "Invalid parameter: 'response_format' of type 'json_object' is not supported with this model.",
                "reject_json_object",
            )
        if "seed" in body and c.reject_seed:
            return fail(400, "Unrecognized request argument supplied: seed", "reject_seed")

        if c.latency_ms or c.latency_jitter_ms:
            jit = _u("lat", fp, attempt) * c.latency_jitter_ms
            await asyncio.sleep((c.latency_ms + jit) / 1000)

        fr = _rng("fault", c.seed, fp, attempt)
        faults_on = c.fault_max_attempt <= 0 or attempt < c.fault_max_attempt
        x = fr.random()
        if faults_on and x < c.rate_429:
            ra = c.retry_after_s
            return fail(
                429,
                "Rate limit reached (simulated).",
                "429",
                {"retry-after": str(max(1, math.ceil(ra))), "retry-after-ms": str(int(ra * 1000))},
            )
        x -= c.rate_429
        if faults_on and x < c.rate_500:
            return fail(500, "The server had an error (simulated).", "500")
        x -= c.rate_500
        if faults_on and x < c.rate_timeout:
            entry.update(fault="timeout", status=0)
            try:
                await asyncio.sleep(c.timeout_sleep_s)
            finally:
                entry["ms"] = round((time.perf_counter() - t0) * 1e3, 1)
                self._record(entry)
            return _error(504, "Gateway timeout (simulated).")

        schema = self._schema(body, text)
        fields = list((schema or {}).get("properties") or {}) or self.fields_from_text(text)
        m = re.search(r"labelled this face: expression: (\w+)", text)
        prior = m.group(1) if m else None
        k = n if c.n_mode == "honour" else 1 if c.n_mode == "ignore" else min(n, c.n_cap)
        seed = body.get("seed")
        if seed is None:
            call_no = self.calls_without_seed.get(fp, 0)
            self.calls_without_seed[fp] = call_no + 1
            seed = f"noseed{call_no}"
        handler = next((h for d, h in self.handlers if d(body, schema)), None)
        choices = []
        tokens_out = 0
        for j in range(k):
            r = _rng("answer", c.seed, fp, seed, j)
            if handler is not None:
                obj = handler(sha, schema, text, r)
            else:
                obj = self.draw(sha, fields, prior, r)
            content: str | None = json.dumps(obj)
            refusal = None
            finish = "stop"
            y = r.random()
            if y < c.rate_refusal:
                if rf_type == "json_schema":
                    content, refusal = None, "I'm sorry, I can't help with identifying this person."
                else:
                    content = "I'm sorry, I can't help with that request."
            elif y < c.rate_refusal + c.rate_truncated:
                content, finish = content[: max(1, len(content) // 2)], "length"
            elif y < c.rate_refusal + c.rate_truncated + c.rate_out_of_range:
                if "valence" in obj:
                    obj["valence"] = 1.0 + round(r.random() + 0.1, 2)
                elif "expression" in obj:
                    obj["expression"] = "bored"
                content = json.dumps(obj)
            tokens_out += len(content or refusal or "") // 4 + 1
            choices.append(
                {
                    "index": j,
                    "finish_reason": finish,
                    "logprobs": None,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                }
            )
        tokens_in = len(text) // 4 + c.tokens_per_image * len(images)
        entry.update(choices=k, ms=round((time.perf_counter() - t0) * 1e3, 1))
        self._record(entry)
        return web.json_response(
            {
                "id": f"chatcmpl-sim-{fp}-{attempt}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", c.model),
                "system_fingerprint": f"sim-{c.seed}",
                "choices": choices,
                "usage": {
                    "prompt_tokens": tokens_in,
                    "completion_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                },
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": self.config.model, "object": "model", "created": 0, "owned_by": "seke-sim"}],
            }
        )

    async def get_log(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)

    async def reset(self, request: web.Request) -> web.Response:
        self.reset_state()
        return web.json_response({"ok": True})

    def reset_state(self) -> None:
        self.log.clear()
        self.attempts.clear()
        self.calls_without_seed.clear()

    async def config_endpoint(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                self.config.update(await request.json())
            except (ValueError, TypeError) as e:
                return _error(400, str(e))
        return web.json_response(dataclasses.asdict(self.config))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/sim/log", self.get_log)
        app.router.add_post("/sim/reset", self.reset)
        app.router.add_get("/sim/config", self.config_endpoint)
        app.router.add_post("/sim/config", self.config_endpoint)
        return app


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    typ = {400: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error"}.get(status, "error")
    return web.json_response(
        {"error": {"message": message, "type": typ, "param": None, "code": None}}, status=status, headers=headers
    )


class ServerThread:
    """Run a SimVLLM on 127.0.0.1 in a background thread (tests, benchmarks)."""

    def __init__(self, sim: SimVLLM, port: int = 0):
        self.sim, self.port = sim, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simvllm", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.sim.app(), access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulated VLLM did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m simvllm.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", help="ground truth: CSV/JSON/JSONL with sha256 or path, expression, ...")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--config", help="JSON file of SimConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one SimConfig field")
    ap.add_argument("--log", help="append every request to this JSONL file")
    a = ap.parse_args(argv)
    cfg = SimConfig()
    if a.config:
        cfg.update(json.loads(Path(a.config).read_text()))
    for kv in a.set:
        key, _, val = kv.partition("=")
        try:
            value = json.loads(val)
        except json.JSONDecodeError:
            value = val
        cfg.update({key: value})
    sim = SimVLLM(cfg, load_manifest(a.manifest), a.log)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("simulated VLLM on http://127.0.0.1:%d/v1 with %d known faces", a.port, len(sim.truth))
    web.run_app(sim.app(), host="127.0.0.1", port=a.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
