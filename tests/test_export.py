"""export: FEID rows, their conversations, and the Parquet layout Hugging Face reads."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
from PIL import Image

from tasks.core import knowledge
from tasks.core.knowledge import AUS
from tasks.core.records import FeidRecord
from tasks.infra.io import RecordWriter
from tasks.stages.export import conversations, feid_row

K = knowledge.load()


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


def test_conversations_cover_every_task_and_alternate():
    turns = conversations(K, "happy", 0.6, 0.3, ["AU06", "AU12"])
    assert [t.from_ for t in turns] == ["human", "gpt"] * 4
    assert turns[0].value.startswith("<image>\n") and sum("<image>" in t.value for t in turns) == 1
    assert turns[1].value == "happy"
    assert "+0.60" in turns[3].value and "+0.30" in turns[3].value
    assert "AU12 (lip corner puller)" in turns[5].value
    assert "happy" in turns[7].value and "AU06, AU12" in turns[7].value


def test_row_takes_labels_from_the_verdict_and_provenance_from_the_run():
    r = feid_row(_verdict(), FACE, K, annotator="local", model="m", prompt_version="v1", params_hash="h")
    assert (r.expression, r.expression_confidence, r.valence, r.aus) == ("happy", 0.75, 0.6, ["AU06", "AU12"])
    assert r.label_set == list(K.expressions) and r.au_set == list(AUS)
    assert r.au_probabilities.AU12 == 0.5 and (r.annotator, r.params_hash) == ("local", "h")
    assert r.image.bytes == FACE["crop"] and r.image.path == "abc_0.jpg"


def test_prior_expression_has_full_expression_confidence():
    r = feid_row(
        _verdict(expression_source="prior", expression_status="prior", vote_share=None),
        FACE,
        K,
        annotator="local",
        model="m",
        prompt_version="v1",
        params_hash="h",
    )
    assert r.expression_confidence == 1.0


def test_parquet_layout_round_trips(tmp_path):
    url = str(tmp_path / "feid.parquet")
    w = RecordWriter(url, FeidRecord)
    w.write(feid_row(_verdict(), FACE, K, annotator="local", model="m", prompt_version="v1", params_hash="h"))
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
    w.write(feid_row(_verdict(), FACE, K, annotator="local", model="m", prompt_version="v1", params_hash="h"))
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_withheld_granularities_are_null_and_have_no_turns():
    v = _verdict(va_status="withheld", au_status="partial", au_withheld=["AU06"])
    r = feid_row(v, FACE, K, annotator="local", model="m", prompt_version="v1", params_hash="h")
    assert r.valence is None and r.arousal is None and r.va_status == "withheld"
    assert r.aus == ["AU12"] and r.aus_withheld == ["AU06"] and r.au_probabilities.AU06 is None
    asked = " ".join(t.value for t in r.conversations if t.from_ == "human")
    assert "valence" not in asked.lower() and "action units" in asked
    assert "valence" not in r.conversations[-1].value
    r = feid_row(
        _verdict(au_status="withheld", au_withheld=list(AUS)),
        FACE,
        K,
        annotator="local",
        model="m",
        prompt_version="v1",
        params_hash="h",
    )
    assert r.aus == [] and not any("action units (FACS)" in t.value for t in r.conversations)
