"""The simulated VLLM's behaviour: answers that are wrong in systematic ways, AUs and VA that
follow the stated label, rationales, verification answers, and faults of every kind.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import math
import random
import re
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from simvllm.config import SimConfig, Truth, _clip, _rng, _u
from simvllm.errors import _error, _error_body
from tasks.core.knowledge import load as load_knowledge


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
        from simvllm.batch import BatchAPI

        self.batch_api = BatchAPI(self)
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
                out[f] = self.rationale(sha, stated, aus, val, aro)
            else:
                out[f] = None
        return out

    def rationale(self, sha: str, stated: str, aus: list[str], val: float, aro: float) -> str:
        """A rationale in the model's words, for the stated label. It draws from its own
        generator (seeded by the answer), so adding it changes no other field. A share
        `rationale_contradict` of them name another expression, or an AU the answer did not
        report, as real models' explanations sometimes do."""
        k = self.k
        r = random.Random(f"{self.config.seed}:{sha}:{stated}:{','.join(aus)}:{val:.3f}:{aro:.3f}")
        cat = k.au_catalogue
        cues = [f"{cat[a]['description']}" + (f" ({a})" if r.random() < 0.5 else "") for a in aus[:3]]
        opener = r.choice(["The face looks", "This person appears", "I read the expression as", "The expression is"])
        text = f"{opener} {stated}"
        if cues:
            text += r.choice([": ", ", because ", "; "]) + ", and ".join(cues) + "."
        else:
            text += r.choice([", with a relaxed face and no clear muscle movement.", "; no action unit stands out."])
        mood = "pleasant" if val > 0.2 else "unpleasant" if val < -0.2 else "neither pleasant nor unpleasant"
        energy = "energised" if aro > 0.3 else "calm" if aro < -0.3 else "moderately activated"
        text += r.choice([f" Overall it feels {mood} and {energy}.", f" The mood seems {mood}, {energy}.", ""])
        if r.random() < self.config.rationale_contradict:
            other = r.choice([e for e in k.expressions if e != stated])
            extra = [a for a in k.prototype(other)[0] if a not in aus]
            if extra and r.random() < 0.5:
                text += f" The {cat[extra[0]]['name']} ({extra[0]}) is also visible."
            else:
                text += f" Some might read it as {other}, though."
        return text

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

    def _format_fault(self, body: dict, rf_type: str) -> tuple[int, str, str] | None:
        """An endpoint that does not support a request parameter: (status, message, fault)."""
        c = self.config
        for kind, rejected in (("json_schema", c.reject_json_schema), ("json_object", c.reject_json_object)):
            if rf_type == kind and rejected:
                msg = f"Invalid parameter: 'response_format' of type '{kind}' is not supported with this model."
                return 400, msg, f"reject_{kind}"
        if "seed" in body and c.reject_seed:
            return 400, "Unrecognized request argument supplied: seed", "reject_seed"
        return None

    def _server_fault(self, fp: str, attempt: int) -> tuple[int, str, str, dict | None] | None:
        """An injected 429 / 500 / timeout for this attempt, or None: (status, message, fault, headers)."""
        c = self.config
        fr = _rng("fault", c.seed, fp, attempt)
        if not (c.fault_max_attempt <= 0 or attempt < c.fault_max_attempt):
            return None
        x = fr.random()
        if x < c.rate_429:
            ra = c.retry_after_s
            headers = {"retry-after": str(max(1, math.ceil(ra))), "retry-after-ms": str(int(ra * 1000))}
            return 429, "Rate limit reached (simulated).", "429", headers
        x -= c.rate_429
        if x < c.rate_500:
            return 500, "The server had an error (simulated).", "500", None
        x -= c.rate_500
        if x < c.rate_timeout:
            return 504, "Gateway timeout (simulated).", "timeout", None
        return None

    def _choice(self, j: int, obj: dict, rf_type: str, r: random.Random) -> dict:
        """One choice of the response, with its injected refusal, truncation or bad value."""
        c = self.config
        content: str | None = json.dumps(obj)
        refusal, finish = None, "stop"
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
        message = {"role": "assistant", "content": content, "refusal": refusal}
        return {"index": j, "finish_reason": finish, "logprobs": None, "message": message}

    def _answers(self, body: dict, fp: str, text: str, sha: str, n: int, rf_type: str) -> list[dict]:
        c = self.config
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
        for j in range(k):
            r = _rng("answer", c.seed, fp, seed, j)
            obj = handler(sha, schema, text, r) if handler is not None else self.draw(sha, fields, prior, r)
            choices.append(self._choice(j, obj, rf_type, r))
        return choices

    @staticmethod
    def _entry(fp: str, attempt: int, sha: str, n: int, seed, rf_type: str) -> dict:
        """The request log's entry for one call (completed as the call ends)."""
        return {
            "t": time.time(),
            "fingerprint": fp,
            "attempt": attempt,
            "image_sha256": sha,
            "n": n,
            "seed": seed,
            "response_format": rf_type,
            "status": 200,
            "fault": None,
            "choices": 0,
        }

    async def chat(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "body is not JSON")
        status, payload, headers = await self.complete(body, request.headers.get("Authorization", ""))
        return web.json_response(payload, status=status, headers=headers)

    async def complete(self, body: dict, authorization: str, batch: str | None = None) -> tuple[int, dict, dict | None]:
        """One chat completion: (HTTP status, JSON body, headers). Online (`batch` None) it
        waits the configured latency and may inject a 429/500/timeout; as a line of batch
        `batch` it does neither (a batch's faults are its own, `simvllm.batch`)."""
        t0 = time.perf_counter()
        c = self.config
        if c.require_key and authorization != f"Bearer {c.require_key}":
            given = authorization.removeprefix("Bearer ")
            self._record({"t": time.time(), "fingerprint": None, "status": 401, "fault": "auth", "n": body.get("n")})
            return _error_body(401, f"Incorrect API key provided: {given}.")
        fp = self.fingerprint(body)
        attempt = self.attempts.get(fp, 0)
        self.attempts[fp] = attempt + 1
        n = int(body.get("n") or 1)
        rf_type = (body.get("response_format") or {}).get("type", "text")
        text, images = self._parts(body)
        sha = hashlib.sha256(images[0]).hexdigest() if images else hashlib.sha256(text.encode()).hexdigest()
        entry = self._entry(fp, attempt, sha, n, body.get("seed"), rf_type)
        if batch:
            entry["batch"] = batch

        def done(**kw) -> None:
            entry.update(**kw, ms=round((time.perf_counter() - t0) * 1e3, 1))
            self._record(entry)

        bad = self._format_fault(body, rf_type)
        if bad:
            done(status=bad[0], fault=bad[2])
            return _error_body(bad[0], bad[1])
        if not batch and (c.latency_ms or c.latency_jitter_ms):
            jit = _u("lat", fp, attempt) * c.latency_jitter_ms
            await asyncio.sleep((c.latency_ms + jit) / 1000)
        fault = None if batch else self._server_fault(fp, attempt)
        if fault and fault[2] == "timeout":
            entry.update(fault="timeout", status=0)
            try:
                await asyncio.sleep(c.timeout_sleep_s)
            finally:
                done()
            return _error_body(fault[0], fault[1])
        if fault:
            done(status=fault[0], fault=fault[2])
            return _error_body(fault[0], fault[1], fault[3])
        choices = self._answers(body, fp, text, sha, n, rf_type)
        done(choices=len(choices))
        return (
            200,
            self._completion(body, fp, attempt, choices, len(text) // 4 + c.tokens_per_image * len(images)),
            None,
        )

    def _completion(self, body: dict, fp: str, attempt: int, choices: list[dict], tokens_in: int) -> dict:
        """The body of a chat completion that answered with `choices`."""
        tokens_out = sum(len(ch["message"]["content"] or ch["message"]["refusal"] or "") // 4 + 1 for ch in choices)
        usage = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}
        return {
            "id": f"chatcmpl-sim-{fp}-{attempt}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.config.model),
            "system_fingerprint": f"sim-{self.config.seed}",
            "choices": choices,
            "usage": usage,
        }

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
        self.batch_api.routes(app)
        return app
