"""The trust ceiling benchmark's exact model: its probabilities add up, its posterior matches
the simulator's draws, and its optimal rule beats the pipeline's rule at its own objective."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import trust_ceiling as tc  # noqa: E402


@pytest.mark.parametrize("counts", [(), (1,), (2,), (1, 1), (3, 1), (2, 2, 1), (5, 1, 1)])
def test_next_answer_is_a_distribution(counts):
    assert sum(p for p, _ in tc.next_answer(counts)) == pytest.approx(1.0, abs=1e-9)


def test_posterior_matches_the_simulators_draws():
    r = random.Random(7)
    hits = {(2,): [0, 0], (1, 1): [0, 0], (3,): [0, 0]}
    for _ in range(60000):
        draw = tc.drawer(r)
        a = [draw() for _ in range(3)]
        two = (2,) if a[0] == a[1] else (1, 1)
        hits[two][0] += a[0] == 0  # (1, 1): the first answer stands for the tie's top
        hits[two][1] += 1
        if a[0] == a[1] == a[2]:
            hits[(3,)][0] += a[0] == 0
            hits[(3,)][1] += 1
    for counts, (right, n) in hits.items():
        want = tc.posterior(counts)
        assert right / n == pytest.approx(want, abs=0.015), counts


def test_the_optimal_rule_wins_at_its_own_objective():
    mu, lam = 10, 0.05

    def score(step) -> float:
        r = random.Random(3)
        total = 0.0
        for _ in range(15000):
            (q, _), n = step(r, tc.drawer(r))
            total += max(0.0, 1 - mu * (1 - q)) - lam * n
        return total / 15000

    best = score(tc.policy_optimal(mu, lam))
    for other in (tc.policy_lead(3, 6), tc.policy_lead(3, 9), tc.policy_fixed(5)):
        assert best > score(other)
