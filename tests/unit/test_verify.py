"""SV-UAMC on constructed samples with known answers: every uncertainty measure, the
stopping rule, the consistency scores, the decision rule, and the monotonicity property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core.knowledge import AUS, EXPRESSIONS, load
from tasks.core.params import Sample, Verify
from tasks.method import uamc
from tasks.method.decide import calibration_row, confidence, decide
from tasks.method.evidence import (
    au_agreement,
    binary_entropy,
    entropy_bits,
    mean_std,
    measure,
    mirror,
    uncertainty_reasons,
)
from tasks.method.stopping import best_posterior, settled, stop_lead, stop_now, wants_verification

K = load()


def face(**kw) -> dict:
    d = dict(
        face_id="f",
        prior_expression=None,
        prior_valence=None,
        prior_arousal=None,
        prior_aus=None,
        au_set=[],
        label_set=[],
    )
    d.update(kw)
    return d


def smp(expr="happy", va=(0.76, 0.48), aus=("AU06", "AU12"), variant="primed", rid="r1", status="ok") -> dict:
    return dict(
        request_id=rid,
        variant=variant,
        status=status,
        expression=expr,
        valence=None if va is None else va[0],
        arousal=None if va is None else va[1],
        aus=None if aus is None else list(aus),
    )


# ------------------------------------------------------------------ measures
def test_entropy_and_binary_entropy():
    assert entropy_bits([5]) == 0.0
    assert entropy_bits([1, 1]) == pytest.approx(1.0)
    assert entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)
    assert entropy_bits([]) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    assert binary_entropy(0.25) == pytest.approx(0.8112781, abs=1e-6)


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)


def test_vote_share_entropy_and_tie_break():
    s = measure(face(), [smp("happy"), smp("happy"), smp("sad"), smp("neutral")], K)
    assert (s.expression, s.vote_share, s.top_votes, s.n_votes) == ("happy", 0.5, 2, 4)
    assert s.entropy == pytest.approx(1.5)
    # a tie breaks towards the label set's order, whatever the sample order
    assert measure(face(), [smp("sad"), smp("happy")], K).expression == "happy"
    assert measure(face(), [smp("happy"), smp("sad")], K).expression == "happy"


def test_va_std_and_au_entropy():
    s = measure(face(), [smp(va=(0.2, 0.0), aus=("AU12",)), smp(va=(0.6, 0.4), aus=())], K)
    assert (s.valence, s.valence_std) == pytest.approx((0.4, 0.2))
    assert (s.arousal, s.arousal_std) == pytest.approx((0.2, 0.2))
    i = AUS.index("AU12")
    assert s.au_probs[i] == 0.5
    # one AU of 17 at p = 0.5 (1 bit), the others certain
    assert s.au_entropy == pytest.approx(1 / len(AUS))


def test_failed_and_verify_samples_are_not_votes():
    s = measure(face(), [smp(), smp(status="error", expr=None), smp("sad", variant="verify", rid="v")], K)
    assert (s.n_samples, s.n_ok, s.n_failed, s.n_votes) == (2, 1, 1, 1)
    assert s.verified is False  # the verification answer named another label


def test_verification_confirms_only_the_aggregate():
    s = measure(face(), [smp(), smp(), smp("happy", variant="verify", rid="v")], K)
    assert s.verified is True
    s = measure(face(), [smp(), smp(), smp(None, variant="verify", rid="v")], K)
    assert s.verified is False


def test_prior_agreement_expression_and_aus():
    f = face(prior_expression="happy")
    s = measure(f, [smp(variant="blind"), smp("sad", variant="blind"), smp(variant="blind")], K)
    assert s.expression_source == "prior" and s.prior_agreement == pytest.approx(2 / 3)
    assert au_agreement({"AU06", "AU12"}, {"AU12"}) == 0.5
    assert au_agreement(set(), set()) == 1.0
    f = face(au_set=["AU06", "AU12", "AU04"], prior_aus=["AU06", "AU12"])
    s = measure(f, [smp(variant="blind", aus=("AU06", "AU12")), smp(variant="blind", aus=("AU04",))], K)
    assert s.prior_agreement == pytest.approx(0.5)  # Jaccard 1 and 0
    # prior AUs are used as the face's AU rates (they feed consistency), not re-estimated
    assert s.au_probs[AUS.index("AU06")] == 1.0 and s.au_probs[AUS.index("AU04")] == 0.0


# ------------------------------------------------------------------ consistency
def test_consistency_scores():
    # happy with its prototype AUs exactly at its VA centroid: perfect
    assert K.consistency("happy", {"AU06": 1.0, "AU12": 1.0}, 0.76, 0.48) == pytest.approx(1.0)
    # none of the prototype AUs: AU part 0; VA at the centroid: 1 -> mean 0.5
    assert K.consistency("happy", {"AU06": 0.0, "AU12": 0.0}, 0.76, 0.48) == pytest.approx(0.5)
    # neutral: one minus the mean AU rate
    assert K.consistency("neutral", {"AU06": 1.0, "AU12": 0.0}, None, None) == pytest.approx(0.5)
    # VA one spread away: exp(-1/2)
    v, a, s = K.va_centroid("sad")
    assert K.consistency("sad", None, v + s, a) == pytest.approx(math.exp(-0.5))
    assert K.consistency("sad", None, None, None) is None
    # reliability weights: a zero-weight AU does not count
    assert K.consistency("happy", {"AU06": 0.0, "AU12": 1.0}, None, None, {"AU06": 0.0}) == pytest.approx(1.0)


def test_consistency_margin_prefers_the_label_the_aus_tell():
    sm = [smp("happy", aus=("AU06", "AU12")), smp("happy", aus=("AU06", "AU12")), smp("sad", aus=("AU06", "AU12"))]
    s = measure(face(), sm, K)
    assert s.consistency_margin > 0
    sm = [smp("sad", aus=("AU06", "AU12"), va=(0.7, 0.5))] * 2 + [smp("happy", aus=("AU06", "AU12"), va=(0.7, 0.5))]
    assert measure(face(), sm, K).consistency_margin < 0


# ------------------------------------------------------------------ stopping rule
def test_majority_posterior_closed_form():
    assert uamc.majority_posterior(3, 3) == pytest.approx(15 / 16)
    assert uamc.majority_posterior(2, 2) == pytest.approx(7 / 8)
    assert uamc.majority_posterior(4, 5) == pytest.approx(57 / 64)
    assert uamc.majority_posterior(0, 0) == 0.5
    # against numerical integration of the Beta(t+1, n-t+1) density over (1/2, 1)
    t, n = 5, 8
    grid = [(i + 0.5) / 20000 for i in range(20000)]
    dens = [x**t * (1 - x) ** (n - t) for x in grid]
    assert uamc.majority_posterior(t, n) == pytest.approx(
        sum(d for x, d in zip(grid, dens) if x > 0.5) / sum(dens), abs=1e-4
    )


def test_stop_now():
    assert stop_now(2, 2, 3, 0.5) == (False, "too_few")
    assert stop_now(3, 3, 3, 0.93) == (True, "certain")
    assert stop_now(2, 3, 3, 0.93) == (False, "uncertain")
    assert stop_now(2, 6, 3, 0.93, futility=0.5, futility_after=5) == (True, "hopeless")
    assert stop_now(3, 3, 3, 0.93, consistency=0.1, min_consistency=0.3) == (False, "knowledge_conflict")


def test_settled_bayes_and_naive():
    sp = Sample(k0=2, kmax=6, stop_min_samples=2, stop_confidence=0.87, stop_rule="bayes")
    assert settled(face(), [smp(), smp()], K, sp)  # 2 of 2: 7/8
    assert not settled(face(), [smp(), smp("sad")], K, sp)
    assert not settled(face(), [smp()], K, sp)  # too few
    assert settled(face(), [smp(status="error", expr=None)] * 2, K, sp)  # all failing: stop
    naive = Sample(stop_rule="naive", stop_min_samples=2, stop_vote_share=0.8)
    assert settled(face(), [smp(), smp()], K, naive)
    assert not settled(face(), [smp(), smp(), smp("sad")], K, naive)
    # a blind request needs only blind_k answers
    f = face(au_set=["AU12"], prior_aus=["AU12"])
    assert settled(f, [smp(), smp(), smp(variant="blind", rid="b")], K, sp.model_copy(update={"blind_k": 1}))


def test_stop_lead():
    assert stop_lead(2, 0, 2, 3, 3, 5) == (False, "too_few")
    assert stop_lead(3, 0, 3, 3, 3, 5) == (True, "certain")
    assert stop_lead(4, 1, 5, 3, 3, 5) == (True, "certain")  # 4-1: the lead, not the share
    assert stop_lead(2, 1, 3, 3, 3, 5) == (False, "uncertain")  # can still reach 4-1
    assert stop_lead(1, 1, 3, 3, 3, 5) == (True, "hopeless")  # 1-1-1 cannot lead by 3 in 5
    assert stop_lead(3, 2, 5, 3, 3, 5) == (True, "hopeless")


def test_settled_lead_and_the_calibration_mirror():
    sp = Sample(k0=3, kmax=5, stop_min_samples=3, stop_lead=3)
    assert settled(face(), [smp()] * 3, K, sp)
    assert not settled(face(), [smp(), smp(), smp("sad")], K, sp)
    assert settled(face(), [smp(), smp("sad"), smp("anger")], K, sp)  # hopeless
    # a labelled face: its blind request must settle by the same rule as an unlabelled face
    f = face(prior_expression="happy")
    own = [smp(expr=None, rid="p")] * 3
    assert not settled(f, own + [smp(variant="blind", rid="b")], K, sp)
    assert not settled(f, own + [smp(variant="blind", rid="b")] * 2 + [smp("sad", variant="blind", rid="b")], K, sp)
    assert settled(f, own + [smp(variant="blind", rid="b")] * 3, K, sp)


def test_mirror_measures_a_labelled_face_as_unlabelled():
    f = face(prior_expression="happy", au_set=["AU12"], prior_aus=["AU12"])
    sm = (
        [smp(expr=None, rid="p")] * 2
        + [smp("sad", variant="blind", rid="b")] * 3
        + [smp("sad", variant="verify_blind", rid="vb")]
    )
    mf, ms = mirror(f, sm)
    assert mf["prior_expression"] is None and mf["au_set"] == [] and len(ms) == 4
    s = measure(mf, ms, K)
    assert s.expression == "sad" and s.expression_source == "annotator" and s.verified is True
    row = calibration_row(f, sm, K, Verify())
    assert row.correct is False and row.features["verified"] == 1.0 and row.features["vote_lead"] == 3.0
    # the mirror's verification answers never count as the face's own
    assert measure(f, sm, K).verified is None and measure(f, sm, K).n_samples == 5


def test_wants_verification():
    s = measure(face(), [smp(), smp()], K)
    assert wants_verification(s, Sample(verify_round="all"))
    assert not wants_verification(s, Sample(verify_round="none"))
    # uncertain: the evidence posterior of the best label (votes, AUs, VA) under the knowledge priors
    clean, odd = [smp()] * 3, [smp()] * 2 + [smp(aus=("AU01", "AU04", "AU15"))]  # 3-0; the third's AUs are sad's
    p_clean, p_odd = best_posterior(face(), clean, K), best_posterior(face(), odd, K)
    assert p_odd < p_clean
    below = Sample(verify_round="uncertain", verify_below=(p_odd + p_clean) / 2)
    assert not wants_verification(measure(face(), clean, K), below, face(), clean, K)
    assert wants_verification(measure(face(), odd, K), below, face(), odd, K)
    assert not wants_verification(
        measure(face(prior_expression="happy"), [smp(variant="blind")], K), Sample(verify_round="all")
    )
    leaders = Sample(verify_round="leaders", stop_lead=3)
    assert not wants_verification(s, leaders)  # 2-0
    assert wants_verification(measure(face(), [smp()] * 3, K), leaders)  # 3-0
    assert not wants_verification(measure(face(), [smp(), smp("sad"), smp("anger")], K), leaders)


# ------------------------------------------------------------------ decision rule
def test_decide_accepts_a_consistent_unanimous_face():
    v = decide(face(), [smp()] * 5, K, Verify())
    assert v.accepted and v.expression == "happy" and v.reasons == []
    assert 0.5 < v.confidence <= 1


def test_decide_rejects_with_reasons():
    assert decide(face(), [], K, Verify()).reasons == ["no_samples"]
    assert decide(face(), [smp(status="error", expr=None)], K, Verify()).reasons == ["api_failure"]
    split = [smp("happy"), smp("sad", va=(-0.6, -0.3), aus=("AU01", "AU04", "AU15")), smp("anger"), smp("fear")]
    v = decide(face(), split, K, Verify(min_confidence=0.6))
    assert not v.accepted and "low_confidence" in v.reasons
    v = decide(face(), [smp(va=(0.9, 0.9)), smp(va=(-0.9, -0.9))], K, Verify(per_granularity=False))
    assert not v.accepted and "va_spread" in v.reasons
    # a knowledge conflict: happy said with sad's AUs and VA
    v = decide(face(), [smp("happy", va=(-0.63, -0.27), aus=("AU01", "AU04", "AU15"))] * 3, K, Verify())
    assert "knowledge_conflict" in v.reasons
    assert decide(
        face(), [smp("happy", va=(-0.63, -0.27), aus=("AU01", "AU04", "AU15"))] * 3, K, Verify(use_consistency=False)
    ).accepted
    # blind samples contradicting a known label
    f = face(prior_expression="happy")
    v = decide(
        f, [smp(expr=None, va=(0.7, 0.5), aus=("AU06", "AU12"))] * 2 + [smp("sad", variant="blind")] * 3, K, Verify()
    )
    # the source's label is kept; what the annotator generated for a face it misreads is not
    assert v.accepted and v.expression_status == "prior" and "va:prior_disagreement" in v.withheld
    assert v.va_status == "withheld" and v.au_status == "withheld"
    assert not decide(f, [smp(expr=None)] * 2 + [smp("sad", variant="blind")] * 3, K, Verify(use_priors=False)).withheld


# ------------------------------------------------------------------ per-granularity acceptance
def test_va_spread_withholds_only_va():
    v = decide(face(), [smp(va=(0.9, 0.9)), smp(va=(-0.9, -0.9))] * 2, K, Verify())
    assert v.accepted and v.expression_status == "accepted" and v.va_status == "withheld"
    assert v.withheld == ["va:va_spread"] and v.au_status == "accepted"


def test_each_au_is_decided_on_its_own():
    sm = [smp(aus=("AU06", "AU12", "AU25")), smp(aus=("AU06", "AU12"))]
    v = decide(face(), sm, K, Verify())
    assert v.accepted and v.au_withheld == ["AU25"] and v.au_status == "partial"
    assert "aus:au_entropy" in v.withheld and v.va_status == "accepted"


def test_a_withheld_expression_withholds_what_follows_it():
    # VA and AUs follow the label a VLLM states, so an untrusted label taints them
    split = [smp("happy"), smp("sad", va=(0.7, 0.5), aus=("AU06", "AU12")), smp("anger", va=(0.7, 0.5))]
    v = decide(face(), split, K, Verify(min_confidence=0.99))
    assert not v.accepted and v.expression_status == "withheld"
    assert v.va_status == "withheld" and "va:expression_withheld" in v.withheld and v.au_status == "withheld"
    assert "low_confidence" in v.reasons


def test_no_threshold_means_no_generated_expression():
    from tasks.method import uamc
    from tasks.method.trust import Trust

    none = Trust(uamc.calibrator(""), None, {})
    v = decide(face(), [smp()] * 5, K, Verify(), none)
    assert not v.accepted and v.reasons == ["no_guarantee"]
    # a source's label needs no guarantee
    assert decide(face(prior_expression="happy"), [smp(expr=None)] * 2, K, Verify(), none).accepted


def test_decide_failed_verification():
    sm = [smp()] * 3 + [smp("sad", variant="verify", rid="v")]
    v = decide(face(), sm, K, Verify(require_confirmation=True))
    assert not v.accepted and "failed_verification" in v.reasons
    assert decide(face(), sm, K, Verify(require_confirmation=True, use_verification=False)).accepted
    ok = decide(face(), [smp()] * 3 + [smp("happy", variant="verify", rid="v")], K, Verify())
    assert ok.confidence > decide(face(), sm, K, Verify()).confidence


def test_confidence_uses_the_calibration_file(tmp_path):
    f = tmp_path / "cal.json"
    f.write_text('{"intercept": 0.0, "coef": {"vote_share": 0.0}}')
    s = measure(face(), [smp()] * 3, K)
    assert confidence(s, Verify(calibration=str(f))) == pytest.approx(0.5)
    f.write_text('{"intercept": 0.0, "coef": {"vote_share": -1.0}}')
    uamc.calibrator.cache_clear()
    with pytest.raises(ValueError, match="wrong sign"):
        confidence(s, Verify(calibration=str(f)))


def test_uncertainty_reasons_thresholds():
    s = measure(face(), [smp(), smp("sad")], K)
    assert uncertainty_reasons(s, 0.6, 2.0, 1.0, 1.0) == ["uncertain_expression"]
    assert uncertainty_reasons(s, 0.5, 2.0, 1.0, 1.0) == []


# ------------------------------------------------------------------ property
AGREE = dict(expr="happy", va=(0.76, 0.48), aus=("AU06", "AU12"))
answers = st.builds(
    lambda e, v, a, au: smp(e, (v, a), au),
    st.sampled_from(EXPRESSIONS),
    st.floats(-1, 1),
    st.floats(-1, 1),
    st.sets(st.sampled_from(AUS), max_size=5).map(sorted),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(answers, min_size=1, max_size=8), st.integers(1, 5), st.sampled_from(["", "sim", "local"]), st.booleans()
)
def test_adding_agreeing_samples_never_lowers_confidence(base, extra, cal, verified):
    """Samples that agree with the face's current answer (same expression, its prototype AUs,
    its VA centroid) never lower the confidence, whatever came before and with any shipped
    calibration."""
    from pathlib import Path

    path = "" if not cal else str(Path(__file__).resolve().parents[2] / "tasks" / "calibration" / f"{cal}.json")
    if path and not Path(path).exists():
        path = ""
    v = Verify(calibration=path)
    top = measure(face(), base, K).expression
    core, _ = K.prototype(top)
    cv, ca, _ = K.va_centroid(top)
    ver = [smp(top if verified else "contempt" if top != "contempt" else "sad", variant="verify", rid="v")]
    before = decide(face(), base + ver, K, v).confidence
    after = decide(face(), base + [smp(top, (cv, ca), core)] * extra + ver, K, v).confidence
    assert measure(face(), base + [smp(top, (cv, ca), core)] * extra, K).expression == top
    assert after >= before - 1e-12
