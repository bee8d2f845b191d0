"""What votes and one verification call can reach under the simulated VLLM's own model.

The trust issue asks for >= 60% coverage at a guaranteed 5% error (delta 0.1) with 30% of the
faces labelled and <= 5 answers per face. This script asks whether any sampling policy of
SV-UAMC's kind could reach that, under the assumptions of `simvllm` (the quality study's
setting: single-sample accuracy 0.7 +- 0.3 per face, 70% of wrong answers naming one fixed
distractor, verification confirming a right answer 90% and a wrong one 30% of the time).

It draws faces straight from that generative model (no HTTP, no images) and measures each
policy with an *oracle* confidence: faces are ranked by their exact posterior (or, for
vote-share policies, by the true accuracy of their evidence group), which no real calibration
can beat. It leaves out the AU/VA consistency signal, which the study's real runs also use
(it is weak when AUs follow the stated label 85% of the time).

Printed per policy: answers per face, the largest coverage whose accepted error is at most the
error that Clopper-Pearson can certify as <= target at the study's calibration size, and the
accuracy of the top 60%.

    python benchmarks/trust_ceiling.py [--faces 40000] [--calibration 343]
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simvllm.config import SimConfig  # noqa: E402
from tasks.method.trust import cp_upper  # noqa: E402

CFG = SimConfig(accuracy=0.7)  # the quality study's setting
LO, HI = max(0.0, CFG.accuracy - CFG.difficulty_spread), min(1.0, CFG.accuracy + CFG.difficulty_spread)
P = np.linspace(LO, HI, 61)  # grid over the per-face accuracy (uniform in the simulator)
C = 8  # expressions


def drawer(r: random.Random):
    p, dis = r.uniform(LO, HI), 1 + r.randrange(C - 1)

    def draw() -> int:  # 0 is the truth
        if r.random() < p:
            return 0
        return dis if r.random() < CFG.systematic else 1 + r.randrange(C - 1)

    return draw


def verify(r: random.Random, right: bool) -> bool:
    return r.random() < (CFG.verify_confirm_correct if right else CFG.verify_confirm_wrong)


@lru_cache(maxsize=None)
def posterior(counts: tuple[int, ...]) -> float:
    """P(the top answer is the truth | sorted vote counts), exactly, under the simulator's model."""
    w_other = (1 - P) * (1 - CFG.systematic) / (C - 1)
    w_dis = (1 - P) * CFG.systematic + w_other
    like = []
    for t in range(len(counts) + 1):  # the truth is one of the answered classes, or none of them
        tot = np.zeros_like(P)
        for d in range(len(counts) + 1):  # the distractor likewise
            if d == t and t < len(counts):
                continue
            w = np.ones_like(P)
            for c, v in enumerate(counts):
                w = w * (P if c == t else w_dis if c == d else w_other) ** v
            # an unanswered distractor stands for every unanswered class but the truth
            tot += w * (C - len(counts) - (t == len(counts)) if d == len(counts) else 1)
        like.append(tot.mean())
    return like[0] / sum(like[: len(counts)] + [like[-1] * (C - len(counts))])


def with_verification(q: float, confirmed: bool) -> float:
    a = CFG.verify_confirm_correct if confirmed else 1 - CFG.verify_confirm_correct
    b = CFG.verify_confirm_wrong if confirmed else 1 - CFG.verify_confirm_wrong
    return q * a / (q * a + (1 - q) * b)


def run_policy(step, n_faces: int, seed: int) -> tuple[float, list[tuple[float, bool]]]:
    r = random.Random(seed)
    out, answers = [], 0
    for _ in range(n_faces):
        votes, n = step(r, drawer(r))
        answers += n
        out.append(votes)
    return answers / n_faces, out


def policy_lead(lead: int, kmax: int, k0: int = 2):
    """The pipeline's `lead` rule: stop when the top answer leads by `lead` or can no longer; one
    verification call for the faces that reached the lead. Scored by the oracle posterior."""

    def step(r, draw):
        v = collections.Counter(draw() for _ in range(k0))
        while len(v) and sum(v.values()) < kmax:
            top = v.most_common(2)
            gap = top[0][1] - (top[1][1] if len(top) > 1 else 0)
            if gap >= lead or gap + kmax - sum(v.values()) < lead:
                break
            v[draw()] += 1
        n = sum(v.values())
        top = v.most_common(2)
        q = posterior(tuple(sorted(v.values(), reverse=True)))
        if top[0][1] - (top[1][1] if len(top) > 1 else 0) >= lead:
            q, n = with_verification(q, verify(r, top[0][0] == 0)), n + 1
        return (q, top[0][0] == 0), n

    return step


def policy_fixed(k: int):
    def step(r, draw):
        v = collections.Counter(draw() for _ in range(k))
        lead = v.most_common(1)[0][0]
        q = with_verification(posterior(tuple(sorted(v.values(), reverse=True))), verify(r, lead == 0))
        return (q, lead == 0), k + 1

    return step


def measure(rows: list[tuple[float, bool]], max_err: float) -> tuple[float, float]:
    rows = sorted(rows, key=lambda x: -x[0])
    ok = np.array([x[1] for x in rows])
    err = np.cumsum(~ok) / np.arange(1, len(ok) + 1)
    passing = np.flatnonzero(err <= max_err)
    cov = (passing.max() + 1) / len(ok) if len(passing) else 0.0
    return cov, 1 - err[int(0.6 * len(ok)) - 1]


def certifiable(n_cal: int, coverage: float, target: float, delta: float) -> float:
    """The largest empirical error among accepted calibration faces whose Clopper-Pearson
    bound is still <= target, at this coverage of n_cal faces."""
    m = max(1, round(coverage * n_cal))
    k = max((k for k in range(m + 1) if cp_upper(k, m, delta) <= target), default=-1)
    return k / m if k >= 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=40000)
    ap.add_argument("--calibration", type=int, default=343, help="calibration faces (30% labelled in the study)")
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    max_err = certifiable(a.calibration, 0.6, a.target, a.delta)
    print(
        f"simulator: accuracy {CFG.accuracy} +- {CFG.difficulty_spread}, systematic {CFG.systematic}, "
        f"verify {CFG.verify_confirm_correct}/{CFG.verify_confirm_wrong}; {a.faces} faces; oracle confidence"
    )
    print(
        f"at 60% of {a.calibration} calibration faces, Clopper-Pearson (delta {a.delta}, the whole delta in one "
        f"walk) certifies <= {a.target} only if the accepted error is <= {max_err:.4f}\n"
    )
    print(f"{'policy':34} {'answers/face':>12} {'coverage at err<=' + format(max_err, '.3f'):>22} {'acc@60%':>8}")
    pols = [("fixed K=5 + verification", policy_fixed(5)), ("fixed K=10 + verification", policy_fixed(10))]
    pols += [("lead 3, kmax 6 (the default)", policy_lead(3, 6)), ("lead 4, kmax 7", policy_lead(4, 7))]
    pols += [("lead 3, kmax 9", policy_lead(3, 9)), ("lead 2, kmax 6", policy_lead(2, 6))]
    for name, step in pols:
        ans, rows = run_policy(step, a.faces, a.seed)
        cov, acc60 = measure(rows, max_err)
        print(f"{name:34} {ans:12.2f} {cov:22.3f} {acc60:8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
