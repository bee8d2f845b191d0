"""OpenAI-shaped error responses (the chat endpoint in sim.py and the Batch API in batch.py)."""

from __future__ import annotations

from aiohttp import web


def _error_body(status: int, message: str, headers: dict | None = None) -> tuple[int, dict, dict | None]:
    typ = {400: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error"}.get(status, "error")
    return status, {"error": {"message": message, "type": typ, "param": None, "code": None}}, headers


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    status, body, headers = _error_body(status, message, headers)
    return web.json_response(body, status=status, headers=headers)
