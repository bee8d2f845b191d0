"""Verified rationales: an annotator's text is kept only when its answer and its words agree
with what verify accepted."""

from __future__ import annotations

from tasks.core import knowledge
from tasks.method import rationale

K = knowledge.load()

VERDICT = {
    "expression": "happy",
    "aus": ["AU06", "AU12"],
    "au_withheld": ["AU25"],
    "au_kept": True,
    "va_kept": True,
    "valence": 0.6,
    "arousal": 0.3,
}


def _s(i: int, text: str, expression="happy", aus=("AU06", "AU12"), va=(0.55, 0.25), **over) -> dict:
    d = dict(
        request_id="r1",
        sample_index=i,
        variant="plain",
        status="ok",
        expression=expression,
        aus=list(aus),
        valence=va[0],
        arousal=va[1],
        rationale=text,
    )
    d.update(over)
    return d


def test_the_agreeing_answer_with_consistent_words_is_chosen():
    smp = [
        _s(0, "The person looks sad, the mouth droops.", expression="sad", aus=("AU15",)),
        _s(1, "Cheeks lift and the lip corners pull up: a happy face."),
        _s(2, "Happy; the jaw drops too.", aus=("AU06", "AU12", "AU26")),
    ]
    p = rationale.pick(VERDICT, smp, K)
    assert p.status == "verified" and p.sample == "r1#1" and p.text.startswith("Cheeks lift")


def test_words_naming_another_expression_or_an_absent_au_are_rejected():
    assert rationale.contradictions("Joyful, though some might read it as anger.", K, "happy", set()) == ["names anger"]
    assert rationale.contradictions("A genuine smile with AU06.", K, "happy", {"AU04"}) == []
    assert rationale.contradictions("The brow lowerer (AU04) is visible.", K, "happy", {"AU04"}) == [
        "names absent AU04"
    ]
    assert rationale.contradictions("The brow lowerer is visible.", K, "happy", {"AU04"}) == ["names absent AU04"]
    assert rationale.contradictions("AU25 may be there.", K, "happy", {"AU04"}) == []  # withheld, not absent
    assert rationale.contradictions("Calm and pleasant, smiling.", K, "happy", set()) == []  # calm: arousal prose
    smp = [_s(0, "Happy, but it could be surprise."), _s(1, "Happy; the brow lowerer (AU04) shows.")]
    assert rationale.pick(VERDICT, smp, K).status == "contradicts"


def test_answers_that_disagree_with_the_accepted_labels_lend_no_text():
    smp = [
        _s(0, "Happy face.", aus=("AU04", "AU15", "AU17")),  # AUs disagree
        _s(1, "Happy face.", va=(-0.5, 0.3)),  # VA far from the accepted VA
        _s(2, "Happy face.", status="invalid"),
        _s(3, "Looks sad.", expression="sad"),
    ]
    assert rationale.pick(VERDICT, smp, K).status == "inconsistent"
    assert rationale.pick(VERDICT, [], K).status == "none"
    # with VA withheld, a far-off VA no longer disqualifies the answer
    assert rationale.pick({**VERDICT, "va_kept": False}, smp, K).sample == "r1#1"


def test_the_choice_does_not_depend_on_sample_order():
    smp = [_s(i, f"Happy, cue {i}.", aus=("AU06", "AU12") if i % 2 else ("AU06",)) for i in range(6)]
    assert rationale.pick(VERDICT, smp, K) == rationale.pick(VERDICT, list(reversed(smp)), K)
