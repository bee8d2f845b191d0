"""export: FEID rows, their conversations, and the Parquet layout Hugging Face reads."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
from PIL import Image

from tasks.core import instructions, knowledge
from tasks.core.knowledge import AUS
from tasks.core.params import Export
from tasks.core.records import FeidRecord
from tasks.infra.io import RecordWriter
from tasks.stages.export import feid_row

K = knowledge.load()
EX = Export()
ALL = Export(multi_turn=1.0)


def _crop() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 90, 80)).save(buf, format="JPEG")
    return buf.getvalue()


def _verdict(**over):
    v = dict(
        face_id="abc_0",
        accepted=True,
        reasons=[],
        confidence=0.8,
        expression="happy",
        expression_source="annotator",
        vote_share=0.75,
        valence=0.6,
        arousal=0.3,
        aus=["AU06", "AU12"],
        au_probs=[0.5 if a in ("AU06", "AU12") else 0.0 for a in AUS],
        expression_status="accepted",
        expression_confidence=0.75,
        va_status="accepted",
        au_status="accepted",
        au_withheld=[],
    )
    v.update(over)
    return v


FACE = dict(crop=_crop(), source="london", label_set=[], au_set=[])


def test_multi_turn_conversation_covers_every_kept_granularity_and_alternates():
    r = feid_row(_verdict(), FACE, K, ALL, annotator="local", model="m", prompt_version="v1", params_hash="h")
    turns = r.conversations
    assert [t.from_ for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) >= 6
    assert turns[0].value.startswith("<image>\n") and sum("<image>" in t.value for t in turns) == 1
    answers = " ".join(t.value for t in turns if t.from_ == "gpt")
    assert "happy" in answers and "+0.60" in answers and "AU12 (lip corner puller)" in answers
    assert r.description_source == "template" and r.instructions_version == "instr-v1"


def test_row_takes_labels_from_the_verdict_and_provenance_from_the_run():
    r = feid_row(_verdict(), FACE, K, EX, annotator="local", model="m", prompt_version="v1", params_hash="h")
    assert (r.expression, r.expression_confidence, r.valence, r.aus) == ("happy", 0.75, 0.6, ["AU06", "AU12"])
    assert r.label_set == list(K.expressions) and r.au_set == list(AUS)
    assert r.au_probabilities.AU12 == 0.5 and (r.annotator, r.params_hash) == ("local", "h")
    assert r.image.bytes == FACE["crop"] and r.image.path == "abc_0.jpg"


def test_prior_expression_has_full_expression_confidence():
    r = feid_row(
        _verdict(expression_source="prior", expression_status="prior", vote_share=None),
        FACE,
        K,
        EX,
        annotator="local",
        model="m",
        prompt_version="v1",
        params_hash="h",
    )
    assert r.expression_confidence == 1.0


def test_parquet_layout_round_trips(tmp_path):
    url = str(tmp_path / "feid.parquet")
    w = RecordWriter(url, FeidRecord)
    w.write(feid_row(_verdict(), FACE, K, EX, annotator="local", model="m", prompt_version="v1", params_hash="h"))
    w.commit()
    t = pq.read_table(url)
    assert t.schema == FeidRecord.arrow_schema()
    row = t.to_pylist()[0]
    assert set(row["image"]) == {"bytes", "path"}
    assert Image.open(io.BytesIO(row["image"]["bytes"])).size == (32, 32)
    assert row["conversations"][0]["from"] == "human"


def test_failed_writer_leaves_nothing(tmp_path):
    url = str(tmp_path / "out.parquet")
    w = RecordWriter(url, FeidRecord)
    w.write(feid_row(_verdict(), FACE, K, EX, annotator="local", model="m", prompt_version="v1", params_hash="h"))
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_withheld_granularities_are_null_and_have_no_turns():
    v = _verdict(va_status="withheld", au_status="partial", au_withheld=["AU06"])
    r = feid_row(v, FACE, K, ALL, annotator="local", model="m", prompt_version="v1", params_hash="h")
    assert r.valence is None and r.arousal is None and r.va_status == "withheld"
    assert r.aus == ["AU12"] and r.aus_withheld == ["AU06"] and r.au_probabilities.AU06 is None
    asked = " ".join(t.value for t in r.conversations if t.from_ == "human")
    assert "valence" not in asked.lower() and "action units" in asked
    assert "valence" not in " ".join(t.value for t in r.conversations if t.from_ == "gpt").lower()
    r = feid_row(
        _verdict(au_status="withheld", au_withheld=list(AUS)),
        FACE,
        K,
        ALL,
        annotator="local",
        model="m",
        prompt_version="v1",
        params_hash="h",
    )
    assert r.aus == [] and not any("action unit" in t.value.lower() for t in r.conversations)


def _face(i: int, **over) -> instructions.Face:
    d = dict(id=f"f{i}", expression="sad", labels=list(K.expressions), valence=-0.5, arousal=-0.2, aus=["AU01", "AU15"])
    d.update(over)
    return instructions.Face(description="The brows rise at the inner ends.", **d)


def test_instruction_draw_is_seeded_per_face_and_varies_across_faces():
    bank = instructions.load_bank("v1")
    conv = lambda i, seed=0: instructions.conversation(_face(i), K, bank, EX.task_mix, 0.5, seed)  # noqa: E731
    assert conv(7) == conv(7)  # a re-run is identical
    asked = {t["value"].removeprefix("<image>\n") for i in range(300) for t in conv(i) if t["from"] == "human"}
    assert len(asked) >= 15  # many phrasings, not one template
    lengths = {len(conv(i)) for i in range(300)}
    assert 2 in lengths and max(lengths) >= 6  # single-turn and multi-turn rows
    assert [conv(i) for i in range(20)] != [conv(i, seed=1) for i in range(20)]


def test_withheld_granularities_never_get_a_turn_in_any_draw():
    bank = instructions.load_bank("v1")
    for i in range(200):
        turns = instructions.conversation(_face(i, valence=None, arousal=None, aus=None), K, bank, EX.task_mix, 0.5, 0)
        text = " ".join(t["value"] for t in turns).lower()
        assert "valence" not in text and "action unit" not in text
        assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1


def test_task_mix_is_validated_and_a_missing_bank_is_a_clear_error(tmp_path):
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="task_mix"):
        Export(task_mix={"poetry": 1.0})
    with pytest.raises(FileNotFoundError, match="instruction bank"):
        instructions.load_bank(str(tmp_path / "none.yaml"))
    (tmp_path / "b.yaml").write_text("version: x\nquestions: {classification: [a]}\n")
    with pytest.raises(ValueError, match="lacks phrasings"):
        instructions.load_bank(str(tmp_path / "b.yaml"))


def test_verified_rationale_becomes_the_description_turn():
    v = _verdict(
        rationale="Cheeks lift and the mouth corners pull up.", rationale_status="verified", rationale_sample="r#1"
    )
    r = feid_row(
        v, FACE, K, Export(task_mix={"description": 1.0}), annotator="a", model="m", prompt_version="v", params_hash="h"
    )
    assert r.description_source == "annotator" and r.rationale_sample == "r#1"
    assert r.conversations[-1].value == "Cheeks lift and the mouth corners pull up."
    v = _verdict(rationale="Looks sad.", rationale_status="contradicts")
    r = feid_row(
        v, FACE, K, Export(task_mix={"description": 1.0}), annotator="a", model="m", prompt_version="v", params_hash="h"
    )
    assert r.description_source == "template" and r.rationale_sample is None
    assert r.conversations[-1].value.startswith("The face shows happy.")
