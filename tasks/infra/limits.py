"""One spend counter and one set of rate limiters shared by every Dask worker of a stage run.

On one process the openai annotator keeps its budget and its token buckets in memory. On a
Dask cluster every worker builds its own annotator, so without this each one would get the
whole `annotator.budget_usd` and the whole `runtime.requests_per_minute`. `DaskLimits` keeps
that state once, on the Dask scheduler (a `distributed.Variable`), and changes it under a
`distributed.Lock`, so the workers together stay under one budget and one rate.

Each call is a few scheduler round trips (milliseconds), made only when a budget or a rate
limit is set, from a thread (`asyncio.to_thread`), never on the annotator's event loop.
"""

from __future__ import annotations

import time


class DaskLimits:
    def __init__(self, key: str):
        from distributed import Lock, Variable, get_client

        # made in the task's thread (where the worker's client is found); used from the annotator's
        client = get_client()
        self.key = key
        self.lock = Lock(f"{key}-lock", scheduler_rpc=client.scheduler, loop=client.loop)
        self.var = Variable(f"{key}-state", client=client)

    def _locked(self, fn):
        with self.lock:
            try:
                state = self.var.get(timeout=0)
            except Exception:  # not set yet: the first caller of this run
                state = {"spent": 0.0, "reserved": 0.0, "buckets": {}}
            out = fn(state)
            self.var.set(state)
        return out

    def apply(self, d_spent: float, d_reserved: float, want: float, budget: float) -> tuple[bool, float]:
        """Add what this worker settled since its last call (`d_spent` paid, `d_reserved`
        released), then reserve `want` if the spend, everything reserved and `want` stay
        within `budget` (0 = no budget). Returns (reserved, spent so far by all workers)."""

        def fn(s: dict) -> tuple[bool, float]:
            s["spent"] += d_spent
            s["reserved"] = max(0.0, s["reserved"] + d_reserved)
            if want and budget and s["spent"] + s["reserved"] + want > budget:
                return False, s["spent"]
            s["reserved"] += want
            return True, s["spent"]

        return self._locked(fn)

    def take(self, name: str, amount: float, per_minute: float) -> float:
        """Take `amount` from the shared token bucket `name` (refilled to `per_minute` per
        minute); 0 when taken, else the seconds to wait before asking again."""

        def fn(s: dict) -> float:
            now = time.time()
            level, t = s["buckets"].get(name, (per_minute, now))
            level = min(per_minute, level + (now - t) * per_minute / 60)
            need = min(amount, per_minute)
            if level >= need:
                s["buckets"][name] = (level - need, now)
                return 0.0
            s["buckets"][name] = (level, now)
            return (need - level) * 60 / per_minute

        return self._locked(fn)


class SharedBucket:
    """The annotator's token bucket (`transport.Bucket`'s interface), kept in `DaskLimits`."""

    def __init__(self, limits: DaskLimits, name: str, per_minute: int):
        self.limits, self.name, self.cap = limits, name, float(per_minute)
        self.waits = 0  # times a take had to wait for the shared bucket to refill

    async def take(self, amount: float) -> None:
        import asyncio

        if self.cap <= 0:
            return
        while True:
            wait = await asyncio.to_thread(self.limits.take, self.name, amount, self.cap)
            if wait <= 0:
                return
            self.waits += 1
            await asyncio.sleep(wait)
