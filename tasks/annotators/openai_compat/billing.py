"""What the OpenAI-compatible backend pays: the expected cost of a call before it is sent, the
cost estimate of a whole run without sending anything (`seke estimate`), and the budget
(`annotator.budget_usd`), this annotator's own or shared by every Dask worker.

A mixin of `OpenAIAnnotator` (tasks/annotators/openai_compat.py), whose attributes it reads:
`a` (the annotator params), `endpoint` (what the endpoint accepts), `_out_per_answer`,
`_tokens_in`, `spent_usd`, `shared` and `_synced`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Iterable

from tasks.core.calls import Call


class Billing:
    def _call_cost(self, call: Call) -> float:
        """The expected cost of a call, before it is sent (for the budget)."""
        n = len(call.indices)
        return self._cost(self._requests_for(n) * self._tokens_in(call), n * self._out_per_answer)

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
            "cost_usd": self._cost(tin, tout) * (self.a.batch_discount if self.a.mode == "batch" else 1.0),
        }

    async def _over_budget(self, fl, est: float, budget: float) -> tuple[bool, float]:
        """Would `est` more take the spend past `budget`? Here: this annotator's spend and
        reservations. With `shared` (Dask): every worker's, and the reservation is made there."""
        if not budget:
            return False, self.spent_usd
        if self.shared is None:
            return self.spent_usd + fl.reserved + est > budget, self.spent_usd
        ok, spent = await self._sync(fl, est, budget)
        return not ok, spent

    async def _sync(self, fl, want: float = 0.0, budget: float = 0.0) -> tuple[bool, float]:
        """Tell `shared` what this annotator paid and released since the last sync, and
        reserve `want` there if the budget allows it."""
        d_spent, d_reserved = self.spent_usd - self._synced[0], fl.reserved - self._synced[1]
        ok, spent = await asyncio.to_thread(self.shared.apply, d_spent, d_reserved, want, budget)
        self._synced = (self.spent_usd, fl.reserved + (want if ok else 0.0))
        return ok, spent

    def estimate_warning(self) -> str | None:
        from tasks.annotators.openai_compat.transport import IMAGE_BILLING_VERSION, known_model

        if known_model(self.a.model):
            return None
        return (
            f"{self.a.model!r} is not in the image-billing table (tasks/annotators/transport.py, "
            f"version {IMAGE_BILLING_VERSION}): its images are priced like GPT-4o's, which may be far off"
        )

    def _budget_stop(self, est: float, spent: float, budget: float) -> str:
        return (
            f"budget: the next call (about ${est:.4f}) would take the spend "
            f"${spent:.4f}{' (all Dask workers)' if self.shared else ''} past "
            f"annotator.budget_usd=${budget:.4f}; stopping"
        )
