"""The evidence model (tasks/method/posterior.py), the conformal selection and the label
budget (tasks/method/trust.py), on data drawn from known generative models."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tasks.core.knowledge import AUS, load
from tasks.method import guarantee, posterior, trust

K = load()
LABELS = tuple(K.expressions)
C = len(LABELS)


def _truth_tables(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """AU rates and VA centres of the 'real' annotator: the prototypes, perturbed, so that the
    knowledge priors are not exactly right."""
    theta = np.full((C, len(AUS)), 0.04)
    mu = np.zeros((C, 2))
    for i, e in enumerate(LABELS):
        core, often = K.prototype(e)
        for a in often:
            theta[i, AUS.index(a)] = 0.3
        for a in core:
            theta[i, AUS.index(a)] = 0.9
        cv, ca, _ = K.va_centroid(e)
        mu[i] = (cv, ca)
    theta = np.clip(theta + rng.normal(0, 0.03, theta.shape), 0.01, 0.99)
    return theta, mu + rng.normal(0, 0.05, mu.shape)


def draw_faces(n: int, seed: int, lam: float, beta: float, rho=0.7, conf=(0.9, 0.3), n_answers=5):
    """Faces from the evidence model's own generative story with known parameters: per-face
    accuracy and distractor; each face's own AUs and VA; each answer's AUs and VA follow its
    stated label with `lam` / `beta`, else the face's own (an AU misread 3% of the time);
    one verification answer on the majority label."""
    rng = np.random.default_rng(seed)
    theta, mu = _truth_tables(rng)
    out = []
    for _ in range(n):
        y = int(rng.integers(C))
        acc = rng.uniform(0.4, 1.0)
        d = int(rng.choice([c for c in range(C) if c != y]))
        own_aus = rng.random(len(AUS)) < theta[y]
        own_va = mu[y] + rng.normal(0, 0.15, 2)
        stated = []
        for _ in range(n_answers):
            if rng.random() < acc:
                stated.append(y)
            elif rng.random() < rho:
                stated.append(d)
            else:
                stated.append(int(rng.choice([c for c in range(C) if c != y])))
        aus = np.array(
            [
                [
                    float(rng.random() < theta[s, u] if rng.random() < lam else own_aus[u] != (rng.random() < 0.03))
                    for u in range(len(AUS))
                ]
                for s in stated
            ]
        )
        va = np.array([beta * mu[s] + (1 - beta) * own_va + rng.normal(0, 0.12, 2) for s in stated])
        prop = int(np.bincount(stated, minlength=C).argmax())
        ok = rng.random() < (conf[0] if prop == y else conf[1])
        corr = -1
        if not ok:
            others = [c for c in ([y] * 3 + [d] * 2 + list(range(C))) if c != prop]
            corr = int(rng.choice(others))
        ev = posterior.FaceEvidence(np.array(stated), aus, va, prop, [(bool(ok), corr)])
        out.append((ev, y))
    return out


def _accuracy(m: posterior.EvidenceModel, data) -> float:
    return float(np.mean([m.posterior(ev).argmax() == y for ev, y in data]))


def test_recovers_known_parameters():
    data = draw_faces(1500, seed=1, lam=0.8, beta=0.7, rho=0.7, conf=(0.9, 0.3))
    m = posterior.fit(data, K)
    assert abs(float(m.lam.mean()) - 0.8) < 0.08
    assert np.all(np.abs(m.beta - 0.7) < 0.1)
    assert abs(m.rho - 0.7) < 0.1
    assert abs(m.eps - 0.03) < 0.02 and np.all(np.abs(m.tau - 0.15) < 0.07) and np.all(np.abs(m.sig - 0.12) < 0.03)
    assert abs(m.conf[0] - 0.9) < 0.05
    assert abs(float((m.pi * posterior.GRID).sum()) - 0.7) < 0.05  # mean of U(0.4, 1.0)


def test_au_va_evidence_beats_votes_when_it_leaks():
    cal = draw_faces(600, seed=2, lam=0.8, beta=0.8)
    test = draw_faces(800, seed=3, lam=0.8, beta=0.8)
    full = posterior.fit(cal, K)
    votes = posterior.fit(cal, K, signals=("verification",))
    assert _accuracy(full, test) > _accuracy(votes, test) + 0.03


def test_falls_back_to_votes_when_nothing_leaks():
    """A model that rationalises fully: AUs and VA always follow the stated label. The fit
    learns that they carry nothing, and its best guesses match the votes-only model's."""
    cal = draw_faces(600, seed=4, lam=1.0, beta=1.0)
    test = draw_faces(800, seed=5, lam=1.0, beta=1.0)
    full = posterior.fit(cal, K)
    votes = posterior.fit(cal, K, signals=("verification",))
    assert full.lam.mean() > 0.9 and np.all(full.beta > 0.9)
    same = np.mean([full.posterior(ev).argmax() == votes.posterior(ev).argmax() for ev, _ in test])
    assert same > 0.97
    assert _accuracy(full, test) >= _accuracy(votes, test) - 0.01


def test_state_round_trip():
    m = posterior.fit(draw_faces(200, seed=6, lam=0.8, beta=0.8), K)
    m2 = posterior.EvidenceModel.from_state(m.to_state())
    ev = draw_faces(1, seed=7, lam=0.8, beta=0.8)[0][0]
    assert np.allclose(m.posterior(ev), m2.posterior(ev))


def _scores(n: int, r: random.Random, a: float = 6, b: float = 1.2) -> tuple[list[float], list[bool]]:
    """Scores whose faces are right with probability equal to the score (calibrated)."""
    s = [r.betavariate(a, b) for _ in range(n)]
    return s, [r.random() < x for x in s]


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_fdr_selection_controls_the_expected_error(alpha):
    r = random.Random(11)
    fdp = []
    for _ in range(300):
        cs, cc = _scores(150, r)
        ts, tc = _scores(300, r)
        sel = guarantee.select_fdr(cs, cc, ts, alpha)
        chosen = [ok for s, ok in zip(ts, tc) if sel["threshold"] is not None and s >= sel["threshold"]]
        fdp.append(1 - np.mean(chosen) if chosen else 0.0)
    assert np.mean(fdp) <= alpha + 0.005  # the mean over 300 draws; its standard error is about 0.001
    assert np.mean([f > 0 for f in fdp]) > 0.5  # it does select (a selector of nothing would pass too)


def test_label_budget_predicts_a_run_with_that_many_more_labels():
    """The estimate from 200 calibration faces of the coverage at +600, against Learn-then-Test
    on 800 faces drawn from the same distribution, averaged over draws (one draw's estimate
    varies by about 0.2 at 200 faces: the docs say so)."""
    for a in (12, 20):
        r = random.Random(5)
        est, real = [], []
        for _ in range(20):
            s, c = _scores(200, r, a, 1.0)
            est.append(guarantee.label_budget(s, c, 0.05, 0.1, extra=(600,))[0]["coverage"])
            s8, c8 = _scores(800, r, a, 1.0)
            real.append(trust.select_threshold(s8, c8, 0.05, 0.1).coverage)
        assert abs(np.mean(est) - np.mean(real)) < 0.1
        assert np.mean(real) > 0.3  # the comparison is not between two zeros


def test_frontier_is_a_bound_per_coverage():
    r = random.Random(3)
    s, c = _scores(400, r)
    f = guarantee.frontier(s, c, 0.1)
    assert [p["coverage"] for p in f] == [round(i / 10, 3) for i in range(1, 11)]
    assert all(p["bound"] >= p["error"] for p in f)
    assert f[0]["error"] <= f[-1]["error"]


def test_build_fits_the_evidence_model_and_reports_what_it_used():
    from tasks.core.params import Verify

    data = draw_faces(400, seed=8, lam=0.8, beta=0.8)
    rows = [
        trust.CalRow(f"p{i // 2}", {}, int(ev.proposal) == y, evidence=ev, truth=y, label=int(ev.proposal))
        for i, (ev, y) in enumerate(data)
    ]
    tr = trust.build(rows, Verify(), "openai")
    guarantee.finish(tr, Verify(), [0.99, 0.5])
    rep = tr.report
    assert tr.evidence is not None and rep["source"] == "self"
    assert set(rep["evidence_model"]["signals"]) == {"aus", "va", "verification", "second_opinion"}
    assert 0.6 < rep["evidence_model"]["au_follow_stated_mean"] < 0.95
    assert rep["evidence_best_guess_accuracy_oof"] > 0.85  # the votes alone: about 0.82 on these faces
    assert [p["coverage"] for p in rep["frontier"]][-1] == 1.0 and rep["label_budget"]
    assert rep["guaranteed"] == (rep["pac"]["threshold"] is not None) and "fdr" in rep


def test_second_opinion_is_cached_by_crop(tmp_path):
    from tasks.method import second_opinion

    if second_opinion.status():
        pytest.skip(second_opinion.status())
    import hashlib
    from pathlib import Path

    img = Path(__file__).resolve().parents[2] / "data/sample/images/london_happy_001_08.jpg"
    crop = img.read_bytes()
    sha = hashlib.sha256(crop).hexdigest()
    ops = second_opinion.Opinions(str(tmp_path))
    first = ops.label(sha, crop)
    assert first in LABELS and ops.fresh == 1
    again = second_opinion.Opinions(str(tmp_path))
    assert again.label(sha, b"not an image") == first and again.fresh == 0  # from the cache, not recomputed
    assert again.label("other", b"not an image") is None  # an unreadable crop has no opinion
