"""Great Expectations suites: one schema source, and a bad value fails with a readable message."""

from __future__ import annotations

import pandas as pd
import pytest

from expectations import ExpectationsFailed, check
from expectations.suites import HEAVY, au_frame, label_distribution
from tasks.core.params import Params, Paths
from tasks.core.records import FeidRecord, Verdict

P = Params(paths=Paths(input="x"))


def _verdicts(**over):
    row = dict(
        face_id="a_0",
        accepted=True,
        reasons=[],
        confidence=0.9,
        expression="happy",
        expression_source="annotator",
        vote_share=1.0,
        entropy=0.0,
        n_samples=3,
        n_failed=0,
        valence=0.5,
        arousal=0.2,
        valence_std=0.0,
        arousal_std=0.0,
        va_source="annotator",
        aus=["AU12"],
        au_probs=None,
        au_entropy=0.0,
        au_source="annotator",
        prior_agreement=None,
        consistency=0.8,
        withheld=[],
        expression_status="accepted",
        expression_confidence=0.9,
        guarantee="pac",
        va_status="accepted",
        au_withheld=[],
        au_status="accepted",
        rationale="Cheeks lift.",
        rationale_sample="r#0",
        rationale_status="verified",
    )
    row.update(over)
    return pd.DataFrame([row, {**row, "face_id": "b_0"}])


def test_good_verdicts_pass():
    df = _verdicts()
    s = check("verify", {"verdicts": df, "au_codes": au_frame(df)}, P, {"faces": 2})
    assert s["success"] and s["evaluated"] > 5 and s["failed"] == 0


@pytest.mark.parametrize(
    "over,needle",
    [({"valence": 1.5}, "valence"), ({"expression": "bored"}, "expression"), ({"confidence": -0.1}, "confidence")],
)
def test_out_of_range_values_fail_readably(over, needle):
    df = _verdicts(**over)
    with pytest.raises(ExpectationsFailed) as e:
        check("verify", {"verdicts": df, "au_codes": au_frame(df)}, P, {"faces": 2})
    msg = str(e.value)
    assert "verify.verdicts" in msg and needle in msg and "expect_column_values" in msg


def test_row_counts_must_add_up():
    df = _verdicts()
    with pytest.raises(ExpectationsFailed, match="row_count"):
        check("verify", {"verdicts": df, "au_codes": au_frame(df)}, P, {"faces": 3})


def test_unknown_au_code_fails():
    df = _verdicts(aus=["AU12", "AU99"])
    with pytest.raises(ExpectationsFailed, match="AU99"):
        check("verify", {"verdicts": df, "au_codes": au_frame(df)}, P, {"faces": 2})


def test_label_distribution_bound_is_a_parameter():
    fe = pd.DataFrame({"expression": ["happy"] * 9 + ["sad"]})
    dist = label_distribution(fe)
    assert dict(zip(dist.expression, dist.share)) == {"happy": 0.9, "sad": 0.1}
    strict = P.model_copy(update={"expectations": P.expectations.model_copy(update={"max_class_share": 0.8})})
    import great_expectations.expectations as gxe

    from expectations.suites import SUITES

    suite = SUITES["export"](gxe, strict, {"faces": 40, "accepted": 40})["label_distribution"]
    assert any(getattr(e, "max_value", None) == 0.8 for e in suite)


def test_a_handful_of_faces_is_not_held_to_the_distribution_bounds():
    """One accepted face is 100% of one class: noise, not a finding (a small run must not fail)."""
    import great_expectations.expectations as gxe

    from expectations.suites import SUITES

    n = P.expectations.min_faces_for_distribution
    assert SUITES["export"](gxe, P, {"faces": 1, "accepted": 1})["label_distribution"] == []
    assert SUITES["export"](gxe, P, {"faces": n - 1, "accepted": n - 1})["label_distribution"] == []
    assert len(SUITES["export"](gxe, P, {"faces": n, "accepted": n})["label_distribution"]) == 2


def test_suites_take_their_columns_from_the_records():
    import great_expectations.expectations as gxe

    from expectations.suites import SUITES

    feid = SUITES["export"](gxe, P, {"faces": 1, "accepted": 1})["feid"][0]
    assert set(feid.column_set) == {c for c in FeidRecord.columns() if c not in HEAVY}
    ver = SUITES["verify"](gxe, P, {"faces": 1})["verdicts"][0]
    assert set(ver.column_set) == set(Verdict.columns())


def test_the_full_result_keeps_every_expectation_and_what_it_observed():
    df = _verdicts()
    s = check("verify", {"verdicts": df, "au_codes": au_frame(df)}, P, {"faces": 2})
    rep = s["report"]
    assert len(rep["results"]) == s["evaluated"] and all(r["success"] for r in rep["results"])
    assert any(
        r["expectation"] == "expect_table_row_count_to_equal" and r["observed_value"] == 2 for r in rep["results"]
    )
    with pytest.raises(ExpectationsFailed) as e:
        check("verify", {"verdicts": _verdicts(valence=1.5), "au_codes": au_frame(df)}, P, {"faces": 2})
    bad = [r for r in e.value.report["results"] if not r["success"]]
    assert bad and bad[0]["kwargs"]["column"] == "valence" and bad[0]["unexpected_count"] == 2


def test_a_distribution_bound_on_a_few_faces_is_reported_not_enforced():
    from expectations.suites import not_enforced

    ld = pd.DataFrame({"expression": ["happy"], "share": [1.0]})
    got = not_enforced("export", {"label_distribution": ld}, P, {"accepted": 1})
    assert got and got[0]["would_fail"] and got[0]["observed_shares"] == {"happy": 1.0}
    assert not_enforced("export", {"label_distribution": ld}, P, {"accepted": 10_000}) == []
