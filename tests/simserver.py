"""Helpers for tests and benchmarks that talk to the simulated VLLM (`simvllm.server`)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
from typing import Iterator

from simvllm.server import ServerThread, SimConfig, SimVLLM, Truth
from tasks.core.calls import Call
from tasks.core.params import Annotator, Runtime

TEST_KEY = "test-key-NOT-A-SECRET-0123456789abcdef"  # fake; tests check it never leaks


def face_image(i: int, size: int = 64) -> bytes:
    """A small, distinct JPEG per `i` (not a face; the simulator only hashes it)."""
    from PIL import Image

    r = random.Random(i)
    img = Image.new("RGB", (size, size), (r.randrange(256), r.randrange(256), r.randrange(256)))
    for _ in range(20):
        x, y = r.randrange(size), r.randrange(size)
        img.putpixel((x, y), (r.randrange(256), r.randrange(256), r.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_call(
    i: int,
    ask: tuple[str, ...] = ("expression", "va", "aus"),
    k: int = 3,
    first_index: int = 0,
    seed: int = 1234,
    image: bytes | None = None,
) -> Call:
    """A Call shaped like the ones tasks.stages.prompt + tasks.method.sampling build."""
    from tasks.core.answer import json_schema
    from tasks.core.knowledge import load
    from tasks.stages.prompt import SYSTEM, build_text

    img = image if image is not None else face_image(i)
    sha = hashlib.sha256(img).hexdigest()
    messages = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": build_text(load(), None, ask, "blind", True)},
                {"type": "image_ref", "sha256": sha},
            ],
        },
    ]
    idx = tuple(range(first_index, first_index + k))
    return Call(
        request_id=f"req-{i}-{'-'.join(ask)}",
        face_id=sha,
        messages=messages,
        schema=json_schema(ask),
        ask=ask,
        image=img,
        indices=idx,
        seeds=tuple(seed + j for j in idx),
    )


def params(model: str = "sim-vllm", temperature: float = 1.0, **runtime) -> tuple[Annotator, Runtime]:
    a_keys = {"max_n", "price_in_per_mtok", "price_out_per_mtok", "budget_usd", "max_output_tokens", "image_detail"}
    a_kw = {k: runtime.pop(k) for k in list(runtime) if k in a_keys}
    rt = {
        "concurrency": 8,
        "timeout_s": 5,
        "max_retries": 2,
        "retry_base_s": 0.01,
        "retry_max_s": 0.2,
        "progress_every_s": 0.5,
    }
    rt.update(runtime)
    return (Annotator(backend="openai", model=model, temperature=temperature, **a_kw), Runtime(**rt))


@contextlib.contextmanager
def sim_server(
    config: SimConfig | None = None, truth: dict[str, Truth] | None = None, set_env: bool = True
) -> Iterator[ServerThread]:
    """A simulated VLLM on a free port; with `set_env`, OPENAI_* point the SDK at it."""
    server = ServerThread(SimVLLM(config or SimConfig(), truth)).start()
    saved = {
        k: os.environ.get(k)
        for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "NO_PROXY", "no_proxy", "AZURE_OPENAI_ENDPOINT")
    }
    if set_env:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = TEST_KEY
        os.environ.pop("AZURE_OPENAI_ENDPOINT", None)
        for k in ("NO_PROXY", "no_proxy"):
            os.environ[k] = ",".join(x for x in ("127.0.0.1", "localhost", saved[k]) if x)
    try:
        yield server
    finally:
        server.stop()
        if set_env:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
