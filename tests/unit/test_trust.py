"""Trust: self-calibration on labelled faces and a threshold with a guaranteed error rate."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tasks.core.params import Verify
from tasks.method import trust
from tasks.method.guarantee import settle
from tasks.method.trust import CalRow, build, cp_upper, ece, folds_by_subject, load_saved, select_threshold


def _draw(n: int, r: random.Random) -> tuple[list[float], list[bool]]:
    """Scores ~ U(0, 1) with P(wrong | s) = 0.3 (1 - s)^2: the error among s >= t is 0.1 (1 - t)^2."""
    s = [r.random() for _ in range(n)]
    return s, [r.random() >= 0.3 * (1 - x) ** 2 for x in s]


def _true_error(t: float) -> float:
    return 0.1 * (1 - t) ** 2


def test_the_bound_holds_in_at_least_1_minus_delta_of_draws():
    alpha, delta, n, reps = 0.05, 0.1, 600, 200
    r = random.Random(0)
    chosen, violations = [], 0
    for _ in range(reps):
        s, ok = _draw(n, r)
        sel = select_threshold(s, ok, alpha, delta)
        if sel.threshold is None:
            continue
        chosen.append(sel.threshold)
        true_error = _true_error(sel.threshold)
        violations += true_error > alpha
        assert sel.bound <= alpha and sel.errors <= sel.n_accepted
    assert violations / reps <= delta
    # and it is not vacuous: a threshold is found nearly always, well below the ideal's 1.0 end
    # (the ideal threshold, where the true error reaches 0.05, is 1 - sqrt(0.5) = 0.29)
    assert len(chosen) >= 0.9 * reps and np.mean(chosen) < 0.7


def test_a_target_that_cannot_be_met_accepts_nothing_and_says_why():
    r = random.Random(1)
    s, ok = _draw(40, r)
    sel = select_threshold(s, ok, 0.01, 0.1)
    assert sel.threshold is None and "no threshold" in sel.reason
    # all wrong: nothing passes at any size
    sel = select_threshold([0.9] * 500, [False] * 500, 0.05, 0.1)
    assert sel.threshold is None


def test_gated_faces_are_never_counted_as_accepted():
    s = [0.99] * 100 + [0.95] * 100
    ok = [True] * 100 + [False] * 100
    free = select_threshold(s, ok, 0.05, 0.1)
    gated = select_threshold(s, ok, 0.05, 0.1, gated=[False] * 100 + [True] * 100)
    assert free.threshold > 0.95 and gated.threshold <= 0.95 and gated.n_accepted == 100


def test_clopper_pearson_upper_limit():
    assert cp_upper(0, 0, 0.1) == 1.0
    assert cp_upper(0, 45, 0.1) == pytest.approx(1 - 0.1 ** (1 / 45), rel=1e-6)
    assert cp_upper(5, 100, 0.1) > 0.05


def test_folds_keep_a_person_together():
    subj = [f"p{i % 37}" for i in range(300)]
    f = folds_by_subject(subj, 5, 0)
    by = {}
    for s, g in zip(subj, f):
        by.setdefault(s, set()).add(g)
    assert all(len(g) == 1 for g in by.values()) and len(set(f)) == 5


def _rows(n: int, seed: int = 0) -> list[CalRow]:
    r = random.Random(seed)
    rows = []
    for i in range(n):
        top = r.randint(2, 6)
        nv = 6
        right = r.random() < min(0.995, 0.25 + 0.15 * top)
        rows.append(
            CalRow(
                subject=f"s{i // 2}",
                features={"vote_logodds": top - 3.0, "vote_share": top / nv, "consistency": r.random() - 0.5},
                correct=right,
            )
        )
    return rows


def test_self_calibration_with_enough_labelled_faces():
    t = build(_rows(400), Verify(target_error=0.1, delta=0.1))
    rep = t.report
    assert rep["source"] == "self" and rep["calibration_faces"] == 400 and rep["mode"] == "target_error"
    assert rep["oof_ece"] < 0.1 and t.threshold is not None and rep["bound"] <= 0.1
    assert any(w > 0 for w in rep["confidence_model"]["coef"].values())


def test_too_few_labelled_faces_fall_back_and_say_so(tmp_path):
    t = build(_rows(30), Verify(target_error=0.0, min_calibration_faces=100))
    assert t.report["source"] == "default" and "only 30 labelled faces" in t.report["why"]
    assert t.threshold == Verify().min_confidence and "no error guarantee" in t.report["selection"]
    # a target error with too few faces: no threshold certifies it. `auto` (the default) then accepts
    # by min_confidence and says there is no guarantee and how to get one; `required` accepts nothing
    t = build(_rows(30), Verify(target_error=0.05, min_calibration_faces=100))
    assert t.threshold is None
    settle(t, Verify(target_error=0.05))
    assert t.threshold == Verify().min_confidence and t.guarantee == "none" and not t.report["guaranteed"]
    assert "NO GUARANTEE" in t.report["warning"] and "seke review export" in t.report["warning"]
    t = build(_rows(30), Verify(target_error=0.05, min_calibration_faces=100))
    settle(t, Verify(target_error=0.05, guarantee_mode="required"))
    assert t.threshold is None and "required" in t.report["warning"]
    # a calibration file fitted for another annotator is not used
    f = tmp_path / "c.json"
    f.write_text('{"intercept": 0, "coef": {"vote_share": 1}, "annotator": "local"}')
    t = build(_rows(30), Verify(target_error=0.0, calibration=str(f)), annotator="openai")
    assert t.report["source"] == "default" and "fitted for annotator 'local'" in t.report["why"]
    t = build(_rows(30), Verify(target_error=0.0, calibration=str(f)), annotator="local")
    assert t.report["source"] == "file"


def test_equal_mass_ece():
    assert ece([0.8] * 100, [True] * 80 + [False] * 20) == pytest.approx(0.0, abs=1e-9)
    assert ece([0.9] * 100, [True] * 50 + [False] * 50) == pytest.approx(0.4)
    assert trust.ece([], []) != trust.ece([], [])  # nan


def test_an_earlier_runs_trust_is_reused_only_for_the_same_run_kind(tmp_path):
    import json

    first = build(_rows(400), Verify(target_error=0.1), annotator="openai")
    f = tmp_path / "trust.json"
    rep = {
        **{k: v for k, v in first.report.items() if k != "confidence_model"},
        "annotator": "openai",
        "model": "m",
        "prompt_version": "v1",
    }
    f.write_text(json.dumps({"model": first.calibrator.to_json(), "threshold": first.threshold, "report": rep}))
    v = Verify(target_error=0.1, trust_from=str(f))
    again = build(_rows(10), v, annotator="openai", run={"model": "m", "prompt_version": "v1"})
    assert again.report["source"] == "earlier_run" and again.threshold == first.threshold
    assert again.calibrator({"vote_lead": 3.0}) == pytest.approx(first.calibrator({"vote_lead": 3.0}))
    other = build(_rows(10), v, annotator="openai", run={"model": "other", "prompt_version": "v1"})
    assert other.report["source"] == "default" and other.threshold is None


def test_a_trust_file_from_an_older_evidence_model_is_not_reused(tmp_path):
    """An evidence model saved by an earlier version (without the face's own AUs and VA) is
    not read into this one's: the run fits anew rather than scoring with half a model."""
    import json

    from tasks.core.knowledge import load
    from tasks.method import posterior

    state = posterior.initial(load()).to_state()
    f = tmp_path / "trust.json"
    body = {"model": {"intercept": 0.0, "coef": {"vote_lead": 1.0}}, "threshold": 0.9, "report": {}}
    f.write_text(json.dumps({**body, "evidence_model": state}))
    assert load_saved(str(f), {}).evidence is not None
    old = {k: v for k, v in state.items() if k not in ("phi", "eps", "tau", "sig")}
    f.write_text(json.dumps({**body, "evidence_model": old}))
    assert load_saved(str(f), {}) is None
