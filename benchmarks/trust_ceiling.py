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
accuracy of the top 60%. Besides the pipeline's rules it solves the Bayes-optimal rule for
this model by dynamic programming (`policy_optimal`): the most any rule that sees the votes
and the verification call can reach with a given number of answers. Last, the ECE that a
perfectly calibrated confidence shows over the study's accepted faces: the floor that
sampling noise puts under the measured ECE.

    python benchmarks/trust_ceiling.py [--faces 40000] [--calibration 343] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
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
# (mu, lam) of the optimal rule: mu ~ 1/(1 - the posterior it accepts), lam the price of an answer
OPTIMAL = [(mu, lam) for mu in (9, 10, 11) for lam in (0.045, 0.05, 0.051, 0.055)]


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
def likelihood(counts: tuple[int, ...]) -> tuple[float, float]:
    """For one answer sequence whose classes got these (sorted) vote counts: its probability
    under the simulator's model, and P(the top answer is the truth | it), exactly."""
    k = len(counts)
    w_other = (1 - P) * (1 - CFG.systematic) / (C - 1)
    w_dis = (1 - P) * CFG.systematic + w_other
    total = top = 0.0
    for t in range(k + 1):  # the truth: an answered class, or index k = any unanswered one
        for d in range(k + 1):  # the face's distractor, likewise
            if d == t and t < k:
                continue
            u = C - k  # unanswered classes
            mult = u * (u - 1) if t == d == k else u if k in (t, d) else 1
            w = np.ones_like(P)
            for c, v in enumerate(counts):
                w = w * (P if c == t else w_dis if c == d else w_other) ** v
            x = float(w.mean()) * mult / (C * (C - 1))
            total += x
            top += x if (t == 0 and k) else 0.0
    return total, (top / total if k else 0.0)


def state(votes: collections.Counter) -> tuple[int, ...]:
    """The sorted vote counts: all that the model's posterior depends on."""
    return tuple(sorted(votes.values(), reverse=True))


def posterior(counts: tuple[int, ...]) -> float:
    """P(the top answer is the truth | sorted vote counts), exactly, under the simulator's model."""
    return likelihood(counts)[1]


def next_answer(counts: tuple[int, ...]) -> list[tuple[float, tuple[int, ...]]]:
    """(probability, sorted counts after it) for each possible next answer."""
    total = likelihood(counts)[0]
    out = []
    for j in range(len(counts)):
        c = tuple(sorted(counts[:j] + (counts[j] + 1,) + counts[j + 1 :], reverse=True))
        out.append((likelihood(c)[0] / total, c))
    if len(counts) < C:
        c = tuple(sorted(counts + (1,), reverse=True))
        out.append((likelihood(c)[0] * (C - len(counts)) / total, c))
    return out


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
        q = posterior(state(v))
        if top[0][1] - (top[1][1] if len(top) > 1 else 0) >= lead:
            q, n = with_verification(q, verify(r, top[0][0] == 0)), n + 1
        return (q, top[0][0] == 0), n

    return step


def policy_fixed(k: int):
    def step(r, draw):
        v = collections.Counter(draw() for _ in range(k))
        lead = v.most_common(1)[0][0]
        q = with_verification(posterior(state(v)), verify(r, lead == 0))
        return (q, lead == 0), k + 1

    return step


def policy_optimal(mu: float, lam: float, cap: int = 12):
    """The Bayes-optimal rule for this model (dynamic programming over sorted vote counts):
    after each answer, stop, ask for one more, or end with one verification call, whichever
    is worth most when an accepted face earns 1 - mu * P(wrong) (accepted only if positive)
    and every answer costs lam. mu sets the error aimed at, lam the answers spent; no rule
    that sees only votes and the verification call can do better under this model."""

    def accept(q: float) -> float:
        return max(0.0, 1 - mu * (1 - q))

    def verified(q: float) -> float:
        yes = q * CFG.verify_confirm_correct + (1 - q) * CFG.verify_confirm_wrong
        return yes * accept(with_verification(q, True)) + (1 - yes) * accept(with_verification(q, False))

    @lru_cache(maxsize=None)
    def act(counts: tuple[int, ...]) -> tuple[float, str]:
        q = posterior(counts)
        options = {"stop": accept(q), "verify": verified(q) - lam} if counts else {}
        if sum(counts) < cap:
            options["more"] = sum(p * act(c)[0] for p, c in next_answer(counts)) - lam
        best = max(options, key=options.get)
        return options[best], best

    def step(r, draw):
        v: collections.Counter = collections.Counter()
        while act(state(v))[1] == "more":
            v[draw()] += 1
        n, how, q = sum(v.values()), act(state(v))[1], posterior(state(v))
        top = v.most_common(1)[0][0]
        if how == "verify":
            q, n = with_verification(q, verify(r, top == 0)), n + 1
        return (q, top == 0), n

    return step


def ece_floor(rows: list[tuple[float, bool]], n: int, coverage: float, reps: int, seed: int) -> np.ndarray:
    """ECE (10 equal-mass bins, as the study measures it) of a perfectly calibrated confidence
    over the top `coverage` of `n` faces: what sampling noise alone shows."""
    from tasks.method.trust import ece

    rng = np.random.default_rng(seed)
    q_all = np.array([x[0] for x in rows])
    out = []
    for _ in range(reps):
        q = q_all[rng.choice(len(q_all), n, replace=False)]
        right = rng.random(n) < q  # right with exactly the stated probability
        keep = np.argsort(-q, kind="stable")[: int(coverage * n)]
        out.append(ece(list(q[keep]), list(right[keep])))
    return np.array(out)


def policy_vote_share(k: int):
    """Fixed K ranked by vote share, no verification: the quality study's K=10 baseline."""

    def step(r, draw):
        v = collections.Counter(draw() for _ in range(k))
        lead, votes = v.most_common(1)[0]
        return (votes / k, lead == 0), k

    return step


def measure_tied(rows: list[tuple[float, bool]], max_err: float) -> tuple[float, float]:
    """(coverage at accepted error <= max_err, accuracy of the top 60%), ranked by confidence, with
    ties broken in expectation: a group of equal confidences is taken in
    part at its mean accuracy, so the result never depends on how tied faces are ordered."""
    conf = np.array([x[0] for x in rows])
    ok = np.array([x[1] for x in rows], float)
    n = len(rows)
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    edges = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1], True])
    right = np.zeros(n)  # expected right answers among the top i + 1
    done = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        mean = ok[a:b].mean()
        right[a:b] = done + mean * np.arange(1, b - a + 1)
        done += ok[a:b].sum()
    err = 1 - right / np.arange(1, n + 1)
    passing = np.flatnonzero(err <= max_err)
    return ((passing.max() + 1) / n if len(passing) else 0.0), 1 - err[int(0.6 * n) - 1]


# ------------------------------------------------------------------ the full evidence
def full_evidence_faces(n: int, seed: int, cfg: SimConfig, policy: str):
    """Faces drawn by the simulator's own code (`simvllm.sim.SimVLLM.draw` and its verification
    answer): every answer's stated label, AUs and VA, sampled by the `lead` rule (k0 2, lead 3,
    kmax 6) or fixed K, then one verification call (leaders only for `lead`). Returns
    (FaceEvidence, index of the truth, votes' answer right?) per face, and answers per face."""
    from simvllm.sim import SimVLLM
    from tasks.core.knowledge import load
    from tasks.method import posterior
    from tasks.method.verification import verification_schema

    sim = SimVLLM(dataclasses_replace(cfg, seed=seed))
    k = load()
    labels = tuple(k.expressions)
    schema = verification_schema(k)
    r = random.Random(seed)
    out, answers = [], 0
    fields = ["expression", "valence", "arousal", "aus"]
    for i in range(n):
        sha = f"ceiling-{seed}-{i}"
        t = sim.truth_of(sha)
        got = [sim.draw(sha, fields, None, r) for _ in range(2 if policy == "lead" else int(policy))]
        lead_ok = False
        while policy == "lead":
            v = collections.Counter(x["expression"] for x in got).most_common(2)
            gap = v[0][1] - (v[1][1] if len(v) > 1 else 0)
            lead_ok = gap >= 3
            if lead_ok or gap + 6 - len(got) < 3:
                break
            got.append(sim.draw(sha, fields, None, r))
        votes = collections.Counter(x["expression"] for x in got)
        top = min((e for e, c in votes.items() if c == max(votes.values())), key=labels.index)
        samples = [{"status": "ok", "variant": "primed", **x} for x in got]
        if policy != "lead" or lead_ok:
            text = 'Proposed answer: {"expression": "' + top + '"}'
            ans = sim._answer_verification(sha, schema, text, r)
            samples.append(
                {"status": "ok", "variant": "verify", "expression": top if ans["confirmed"] else ans["expression"]}
            )
        answers += len(samples)
        ev = posterior.face_evidence(samples, labels, top)
        out.append((ev, labels.index(t.expression), top == t.expression))
    return out, answers / n


def dataclasses_replace(cfg: SimConfig, **kw) -> SimConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def full_evidence(a, max_err: float) -> list[dict]:
    """Coverage at the certifiable error when the ranking reads every answer's AUs and VA
    against its stated label (the evidence model of `tasks.method.posterior`), fitted on many
    labelled faces (the model class's ceiling, not the Bayes-optimal rule) and on the
    calibration faces a 30%-labelled run has; against the same model on votes and
    verification alone. Tie-proof measure."""
    from tasks.core.knowledge import load
    from tasks.method import posterior

    k = load()
    rows = []
    for policy in ("lead", "4"):
        test, ans = full_evidence_faces(a.evidence_faces, a.seed + 1, CFG, policy)
        big, _ = full_evidence_faces(a.evidence_fit, a.seed + 2, CFG, policy)
        small = big[: a.calibration]
        for name, data, sig in (
            ("votes + verification", big, ("verification",)),
            (f"full evidence, fitted on {len(big)} labelled faces", big, ("aus", "va", "verification")),
            (f"full evidence, fitted on {len(small)} (a run's calibration)", small, ("aus", "va", "verification")),
        ):
            m = posterior.fit([(ev, y) for ev, y, _ in data], k, sig)
            scored = []
            for ev, y, _ in test:
                p = m.posterior(ev)
                scored.append((float(p.max()), int(p.argmax()) == y))
            cov, acc60 = measure_tied(scored, max_err)
            best = float(np.mean([ok for _, ok in scored]))
            pol = "lead 3, kmax 6 + verification" if policy == "lead" else "fixed K=4 + verification"
            print(f"{pol:32} {name:52} {ans:6.2f} {cov:8.3f} {acc60:8.4f} {best:8.4f}", flush=True)
            rows.append(
                {
                    "policy": pol,
                    "ranking": name,
                    "answers_per_face": ans,
                    "coverage": cov,
                    "accuracy_at_60": acc60,
                    "best_guess_accuracy": best,
                }
            )
    return rows


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
    ap.add_argument("--answers", type=float, default=5.0, help="the issue's budget of answers per face")
    ap.add_argument("--json", default="", help="also write the numbers here")
    ap.add_argument("--evidence-faces", type=int, default=10000, help="faces drawn with AUs and VA (full evidence)")
    ap.add_argument(
        "--evidence-fit", type=int, default=4000, help="labelled faces the evidence model's ceiling fits on"
    )
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
    print(f"{'policy':40} {'answers/face':>12} {'coverage at err<=' + format(max_err, '.3f'):>22} {'acc@60%':>8}")
    pols = [("fixed K=5 + verification", policy_fixed(5)), ("fixed K=10 + verification", policy_fixed(10))]
    pols += [("fixed K=10, by vote share (the study's)", policy_vote_share(10))]
    pols += [("lead 3, kmax 6 (the previous default)", policy_lead(3, 6)), ("lead 4, kmax 7", policy_lead(4, 7))]
    pols += [("lead 3, kmax 9", policy_lead(3, 9)), ("lead 2, kmax 6", policy_lead(2, 6))]
    pols += [(f"optimal, mu {mu:g}, lam {lam:g}", policy_optimal(mu, lam)) for mu, lam in OPTIMAL]
    out = {"max_error": max_err, "faces": a.faces, "policies": []}
    runs = {}
    for name, step in pols:
        ans, rows = run_policy(step, a.faces, a.seed)
        runs[name] = (ans, rows)
        cov, acc60 = measure_tied(rows, max_err)
        print(f"{name:40} {ans:12.2f} {cov:22.3f} {acc60:8.4f}", flush=True)
        out["policies"].append({"policy": name, "answers_per_face": ans, "coverage": cov, "accuracy_at_60": acc60})
        if name.startswith("lead 3, kmax 6"):
            default_rows = rows
    # the optimal rule is a step function of lam: a budget between two steps is met by using one
    # rule on a share of the faces and the other on the rest
    best = None
    opt = {k: v for k, v in runs.items() if k.startswith("optimal")}
    for lo_name, (lo_ans, lo_rows) in opt.items():
        for hi_name, (hi_ans, hi_rows) in opt.items():
            if not lo_ans <= a.answers <= hi_ans:
                continue
            share = 1.0 if hi_ans == lo_ans else (hi_ans - a.answers) / (hi_ans - lo_ans)
            n = int(share * len(lo_rows))
            cov, acc60 = measure_tied(lo_rows[:n] + hi_rows[n:], max_err)
            if best is None or cov > best["coverage"]:
                best = {"rules": [lo_name, hi_name], "share_first": share, "coverage": cov, "accuracy_at_60": acc60}
    out["optimal_within_budget"] = best
    if best:
        print(
            f"\nthe optimal rule at {a.answers:g} answers per face ({best['rules'][0]} on {best['share_first']:.0%} "
            f"of the faces, {best['rules'][1]} on the rest): coverage {best['coverage']:.3f}, "
            f"acc@60% {best['accuracy_at_60']:.4f}"
        )
    n_unl = round(a.calibration / 0.3 * 0.7)  # the unlabelled faces of the 30%-labelled study
    floor = ece_floor(default_rows, n_unl, 0.57, 300, a.seed)
    p90 = float(np.quantile(floor, 0.9))
    out["ece_floor"] = {"unlabelled_faces": n_unl, "coverage": 0.57, "mean": float(floor.mean()), "p90": p90}
    print(
        f"ECE that a perfectly calibrated confidence shows over the accepted 57% of {n_unl} unlabelled faces "
        f"(10 equal-mass bins, 300 draws): mean {floor.mean():.4f}, 90th percentile {p90:.4f}"
    )
    print(
        f"\nthe full evidence (each answer's AUs and VA read against its stated label), {a.evidence_faces} faces drawn "
        f"by the simulator's own code, ranked by the evidence model's posterior (tie-proof):"
    )
    print(f"{'policy':32} {'ranking':52} {'ans/f':>6} {'cover':>8} {'acc@60':>8} {'best':>8}")
    out["full_evidence"] = full_evidence(a, max_err)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
