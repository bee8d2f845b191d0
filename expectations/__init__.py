"""Great Expectations suites, one per stage output, built from the records and params.

`check(stage, frames, params)` validates every frame of a stage's output with a real GX
(1.x) ephemeral context and either returns a short summary (for DVC metrics) or raises
`ExpectationsFailed` with a readable list of what failed, so the stage fails and DVC never
records bad data. GX is imported only here, and only when a check runs (it costs 3-4 s).
"""

from __future__ import annotations

from expectations.suites import SUITES, ExpectationsFailed, check

__all__ = ["SUITES", "ExpectationsFailed", "check"]
