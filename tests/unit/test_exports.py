"""Each export loads with its consumer: `datasets` for hf; for ShareGPT (LLaMA-Factory) and
LLaVA a loader that checks the documented layouts. Every image decodes and no accepted face
is lost."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from tasks.core.knowledge import AUS
from tasks.core.knowledge import load as load_knowledge
from tasks.core.params import Export
from tasks.core.records import FeidRecord
from tasks.stages.export import feid_row
from tasks.tools import publish as X

N = 12


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (20 * i % 255, 100, 200 - 10 * i)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def feid() -> pa.Table:
    """A small FEID table built by the export stage's own row builder."""
    k = load_knowledge()
    rows = []
    for i in range(N):
        expr = ("neutral", "happy", "sad")[i % 3]
        v = {
            "face_id": f"{i:064x}_0",
            "expression": expr,
            "expression_source": "annotator",
            "vote_share": 0.8,
            "valence": 0.1 * (i % 5) - 0.2,
            "arousal": 0.05 * i - 0.3,
            "aus": ["AU06", "AU12"] if expr == "happy" else [],
            "au_probs": [0.9 if a in ("AU06", "AU12") and expr == "happy" else 0.1 for a in AUS],
            "confidence": 0.7,
            "expression_status": "accepted",
            "expression_confidence": 0.7,
            "va_status": "accepted",
            "au_status": "accepted",
            "au_withheld": [],
        }
        face = {"crop": _jpeg(i), "source": "london" if i % 2 else "demo", "label_set": [], "au_set": []}
        rows.append(
            feid_row(
                v,
                face,
                k,
                Export(),
                annotator="local",
                model="local-ensemble-v1",
                prompt_version="seke-v1",
                params_hash="abc",
            ).model_dump(by_alias=True)
        )
    return pa.Table.from_pylist(rows, schema=FeidRecord.arrow_schema())


def _card(tmp: Path) -> X.CardInfo:
    return X.CardInfo(
        version="v-test",
        rev="0" * 40,
        params={"verify": {"min_vote_share": 0.6}},
        sources_text="# Sample\n\n| files | licence |\n|---|---|\n| london | CC BY 4.0 |",
    )


def _check_card(out: Path, fmt: str) -> None:
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    for needle in (
        "## Statistics",
        "## Label set and AU set",
        "## Sources and licences",
        "CC BY 4.0",
        "## Annotation",
        "local-ensemble-v1",
        "min_vote_share",
        "## Citation",
        "@misc{feid",
        f"rows (accepted faces): {N}",
    ):
        assert needle in card, (fmt, needle)


def test_hf_export_loads_with_datasets(feid, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    res = X.export(feid, "hf", out, _card(tmp_path))
    assert res["rows"] == N
    ds = datasets.load_dataset(
        "parquet", data_files=str(out / "data" / "*.parquet"), cache_dir=str(tmp_path / "hf_cache")
    )["train"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert sorted(ds["id"]) == sorted(feid["id"].to_pylist())
    for row in ds:
        assert row["image"].size == (64, 64)
        assert row["conversations"][0]["from"] == "human" and "<image>" in row["conversations"][0]["value"]
    # the folder itself is a loadable dataset (the card's `configs`)
    ds2 = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf_cache2"))["train"]
    assert ds2.num_rows == N
    _check_card(out, "hf")


def load_llamafactory_sharegpt(dataset_dir: Path, name: str) -> list[dict]:
    """The checks LLaMA-Factory's ShareGPT converter makes (data/README.md, multimodal
    `messages` + `images` with role/content tags): alternating user/assistant turns starting
    with the user, as many `<image>` tokens as images, image paths relative to dataset_dir."""
    info = json.loads((dataset_dir / "dataset_info.json").read_text())[name]
    assert info["formatting"] == "sharegpt"
    cols, tags = info["columns"], info["tags"]
    data = json.loads((dataset_dir / info["file_name"]).read_text())
    assert isinstance(data, list)
    out = []
    for ex in data:
        msgs, imgs = ex[cols["messages"]], ex[cols["images"]]
        assert len(msgs) % 2 == 0 and msgs
        for i, m in enumerate(msgs):
            assert m[tags["role_tag"]] == (tags["user_tag"] if i % 2 == 0 else tags["assistant_tag"])
            assert isinstance(m[tags["content_tag"]], str) and m[tags["content_tag"]]
        assert sum(m[tags["content_tag"]].count("<image>") for m in msgs) == len(imgs) == 1
        decoded = [Image.open(dataset_dir / p).convert("RGB") for p in imgs]
        out.append({"id": ex.get("id"), "images": decoded, "messages": msgs})
    return out


def load_llava(json_path: Path, image_folder: Path) -> list[dict]:
    """LLaVA's LazySupervisedDataset layout: `image` relative to image_folder, `conversations`
    alternating human/gpt, `<image>` in the first human turn only."""
    data = json.loads(json_path.read_text())
    out = []
    for ex in data:
        conv = ex["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].count("<image>") == 1
        assert all("<image>" not in t["value"] for t in conv[1:])
        out.append({"id": ex["id"], "image": Image.open(image_folder / ex["image"]).convert("RGB"), "conv": conv})
    return out


def test_sharegpt_export_loads_like_llamafactory(feid, tmp_path):
    out = tmp_path / "sg"
    X.export(feid, "sharegpt", out, _card(tmp_path))
    rows = load_llamafactory_sharegpt(out, "feid")
    assert sorted(r["id"] for r in rows) == sorted(feid["id"].to_pylist())
    assert all(r["images"][0].size == (64, 64) for r in rows)
    _check_card(out, "sharegpt")


def test_llava_export_loads(feid, tmp_path):
    out = tmp_path / "llava"
    X.export(feid, "llava", out, _card(tmp_path))
    rows = load_llava(out / "feid_llava.json", out)
    assert sorted(r["id"] for r in rows) == sorted(feid["id"].to_pylist())
    src = {r["id"]: r["image"]["bytes"] for r in feid.to_pylist()}
    for r in rows:  # the exported crop is the FEID crop, byte for byte
        assert (out / f"images/{r['id']}.jpg").read_bytes() == src[r["id"]]
    _check_card(out, "llava")


def test_export_refuses_to_overwrite_and_unknown_format(feid, tmp_path):
    out = tmp_path / "x"
    X.export(feid, "llava", out, _card(tmp_path))
    with pytest.raises(FileExistsError):
        X.export(feid, "llava", out, _card(tmp_path))
    X.export(feid, "sharegpt", out, _card(tmp_path), overwrite=True)
    assert not (out / "feid_llava.json").exists()
    with pytest.raises(ValueError):
        X.export(feid, "alpaca", tmp_path / "y", _card(tmp_path))


def test_card_of_a_feid_with_withheld_va_averages_the_kept_values(feid, tmp_path):
    """A withheld VA is null in FEID; the card's means are over the rows that keep theirs
    (the card used to crash on the sample set's own FEID)."""
    rows = feid.drop_columns(["image"]).to_pylist()
    rows[0]["valence"] = rows[0]["arousal"] = None
    card = X.dataset_card(rows, "hf", _card(tmp_path), [])
    kept = [r["valence"] for r in rows[1:]]
    assert f"mean valence {round(sum(kept) / len(kept), 3):+.3f}" in card


def test_card_header_is_valid_for_any_size_and_names_its_licence(feid, tmp_path):
    from huggingface_hub import DatasetCard

    assert [X.size_category(n) for n in (0, 999, 1000, 25_000, 3_000_000, 10**13)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
        "n>1T",
    ]
    out = tmp_path / "hf"
    X.export(feid, "hf", out, X.CardInfo(year=2031, sources_text="| london | CC BY 4.0 |"))
    card = DatasetCard.load(out / "README.md")
    d = card.data.to_dict()
    assert d["license"] == "other" and d["license_name"] and d["size_categories"] == [X.size_category(N)]
    assert "## Personal and sensitive information" in card.text and "biometric" in card.text
    assert "year   = {2031}" in card.text


def test_push_to_hub_uploads_the_export_folder(feid, tmp_path, monkeypatch):
    """The upload goes through huggingface_hub's HfApi (recorded here: no hub runs offline)."""
    import huggingface_hub

    calls = []

    class Api:
        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    out = tmp_path / "hf"
    X.export(feid, "hf", out, _card(tmp_path))
    url = X.push_to_hub(out, "lab/feid", private=True)
    assert url.endswith("lab/feid")
    assert calls[0][:2] == ("create", "lab/feid") and calls[0][2]["repo_type"] == "dataset" and calls[0][2]["private"]
    assert calls[1][2]["folder_path"] == str(out) and calls[1][2]["repo_type"] == "dataset"
