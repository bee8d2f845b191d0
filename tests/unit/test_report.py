"""`seke report`: the curves behind it, and the page itself in headless Chromium."""

from __future__ import annotations

import numpy as np

from tasks.tools import report as R


def test_reliability_bins_are_equal_mass_and_track_accuracy():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 5000)
    scores = [(float(c), bool(rng.uniform() < c)) for c in conf]  # calibrated by construction
    pts = R.reliability(scores, bins=10)
    assert [n for _, _, n in pts] == [500] * 10
    assert all(abs(c - a) < 0.06 for c, a, _ in pts)
    assert R.reliability([]) == []


def test_risk_coverage_accepts_from_the_most_confident():
    cov, risk = R.risk_coverage([(0.9, True), (0.8, False), (0.7, True), (0.1, False)])
    assert list(cov) == [0.25, 0.5, 0.75, 1.0]
    assert list(risk) == [0.0, 0.5, 1 / 3, 0.5]
