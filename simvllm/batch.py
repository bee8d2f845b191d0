"""The simulated VLLM's Files and Batches endpoints (OpenAI's Batch API), for batch mode:

    POST /v1/files                 multipart upload (purpose=batch), the JSONL of requests
    GET  /v1/files/{id}            its metadata;  GET /v1/files/{id}/content: its bytes
    POST /v1/batches               {input_file_id, endpoint: /v1/chat/completions, completion_window}
    GET  /v1/batches/{id}          the batch (validating -> in_progress -> completed | failed | expired)
    GET  /v1/batches               every batch, newest first;  POST /v1/batches/{id}/cancel

A batch's lines are answered exactly as the same bodies would be online (same seeds, same
answers; no latency and no 429/500/timeout), `batch_latency_s` after it was created. Faults,
drawn from the input file's hash so a run is reproducible: `batch_fail_rate` (the batch fails
validation: nothing is answered or billed), `batch_expire_rate` (it expires with only its
first half answered; the rest are `batch_expired` lines in the error file), and
`batch_line_error_rate` (a line ends as a 500 in the error file).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid

from aiohttp import web

from simvllm.config import _rng
from simvllm.errors import _error


class BatchAPI:
    def __init__(self, sim):
        self.sim = sim
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._tasks: set[asyncio.Task] = set()
        self._attempts: dict[str, int] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}", self.file)
        app.router.add_get("/v1/files/{id}/content", self.content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list)
        app.router.add_get("/v1/batches/{id}", self.get)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel)

    # -- files ----------------------------------------------------------------------------
    def _store(self, data: bytes, name: str, purpose: str) -> dict:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        meta = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[fid] = {"meta": meta, "data": data}
        return meta

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        f = form.get("file")
        if f is None or not hasattr(f, "file"):
            return _error(400, "no file in the upload")
        return web.json_response(self._store(f.file.read(), f.filename or "upload.jsonl", str(form.get("purpose"))))

    async def file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        return web.json_response(f["meta"]) if f else _error(404, "no such file")

    async def content(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        return web.Response(body=f["data"], content_type="application/jsonl") if f else _error(404, "no such file")

    # -- batches --------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        f = self.files.get(body.get("input_file_id", ""))
        if f is None:
            return _error(400, f"input_file_id {body.get('input_file_id')!r} does not exist")
        if body.get("endpoint") != "/v1/chat/completions":
            return _error(400, "only /v1/chat/completions is supported")
        now = int(time.time())
        b = {
            "id": f"batch_{uuid.uuid4().hex[:24]}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86_400,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        self.batches[b["id"]] = b
        t = asyncio.ensure_future(self._process(b, f["data"], request.headers.get("Authorization", "")))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return web.json_response(b)

    async def get(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        return web.json_response(b) if b else _error(404, "no such batch")

    async def list(self, request: web.Request) -> web.Response:
        data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def cancel(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        if b is None:
            return _error(404, "no such batch")
        if b["status"] in ("validating", "in_progress"):
            b.update(status="cancelled", cancelled_at=int(time.time()))
        return web.json_response(b)

    async def _process(self, b: dict, data: bytes, auth: str) -> None:
        c = self.sim.config
        digest = hashlib.sha256(data).hexdigest()
        attempt = self._attempts[digest] = self._attempts.get(digest, -1) + 1  # the same lines sent again
        r = _rng("batch", c.seed, digest, attempt)
        await asyncio.sleep(c.batch_latency_s / 2)
        lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
        b["request_counts"]["total"] = len(lines)
        if r.random() < c.batch_fail_rate:
            b.update(
                status="failed",
                failed_at=int(time.time()),
                errors={"object": "list", "data": [{"code": "simulated_failure", "message": "validation failed"}]},
            )
            return
        if b["status"] == "cancelled":
            return
        b.update(status="in_progress", in_progress_at=int(time.time()))
        await asyncio.sleep(c.batch_latency_s / 2)
        expire = r.random() < c.batch_expire_rate
        out, err = [], []
        for i, line in enumerate(lines):
            rid = f"batch_req_{uuid.uuid4().hex[:16]}"
            if (expire and i >= len(lines) // 2) or b["status"] == "cancelled":
                code = "batch_expired" if expire else "batch_cancelled"
                err.append({"id": rid, "custom_id": line["custom_id"], "response": None, "error": {"code": code}})
                continue
            if _rng("line", c.seed, digest, i).random() < c.batch_line_error_rate:
                body = {"error": {"message": "The server had an error (simulated).", "type": "server_error"}}
                err.append({"id": rid, "custom_id": line["custom_id"], "response": {"status_code": 500, "body": body}})
                continue
            status, payload, _ = await self.sim.complete(line["body"], auth, batch=b["id"])
            row = {"id": rid, "custom_id": line["custom_id"], "response": {"status_code": status, "body": payload}}
            (out if status == 200 else err).append({**row, "error": None})
        now = int(time.time())
        if out:
            b["output_file_id"] = self._store(_jsonl(out), f"{b['id']}_output.jsonl", "batch_output")["id"]
        if err:
            b["error_file_id"] = self._store(_jsonl(err), f"{b['id']}_error.jsonl", "batch_output")["id"]
        b["request_counts"].update(completed=len(out), failed=len(err))
        b.update(status="expired", expired_at=now) if expire else b.update(status="completed", completed_at=now)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
