"""`data/feid` is Hugging Face native: its Parquet files carry the `datasets` features, so
`load_dataset("parquet", data_dir=...)` decodes `image` as an Image, with the installed
`datasets` and with 2.16.0, the oldest that LLaMA-Factory supports."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.core import knowledge
from tasks.core.knowledge import AUS
from tasks.core.params import Export
from tasks.core.records import FeidRecord
from tasks.infra.io import RecordWriter
from tasks.stages.export import feid_row

OLDEST_DATASETS = "2.16.0"  # LLaMA-Factory's minimum (its README's install table)
ROOT = Path(__file__).resolve().parents[2]


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24 + i, 24 + i), (10 * i, 80, 120)).save(buf, format="JPEG")
    return buf.getvalue()


def _feid(d: Path, n: int = 6) -> Path:
    """A FEID directory with `n` rows written by the export stage's own writer."""
    k = knowledge.load()
    d.mkdir(parents=True)
    w = RecordWriter(str(d / "feid.parquet"), FeidRecord)
    for i in range(n):
        v = dict(
            face_id=f"f{i}_0",
            expression="happy" if i % 2 else "sad",
            expression_source="annotator",
            expression_status="accepted",
            expression_confidence=0.9,
            confidence=0.9,
            valence=None if i == 0 else 0.5,
            arousal=None if i == 0 else 0.1,
            va_status="withheld" if i == 0 else "accepted",
            aus=["AU06", "AU12"],
            au_probs=[0.8 if a in ("AU06", "AU12") else 0.1 for a in AUS],
            au_status="accepted",
            au_withheld=[],
        )
        face = {"crop": _jpeg(i), "source": "t", "label_set": [], "au_set": []}
        w.write(feid_row(v, face, k, Export(), annotator="a", model="m", prompt_version="p", params_hash="h"))
    w.commit()
    return d


def test_feid_parquet_carries_the_features_metadata(tmp_path):
    d = _feid(tmp_path / "feid")
    meta = json.loads(pq.read_schema(d / "feid.parquet").metadata[b"huggingface"])
    feats = meta["info"]["features"]
    assert feats["image"] == {"_type": "Image"}
    assert isinstance(feats["conversations"], list) and set(feats["conversations"][0]) == {"from", "value"}
    assert set(feats) == set(FeidRecord.columns())


def test_load_dataset_decodes_every_image(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = _feid(tmp_path / "feid")
    ds = datasets.load_dataset("parquet", data_dir=str(d), split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["image"], datasets.Image)
    sizes = [ex["image"].size for ex in ds]  # decodes every image
    assert sizes == [(24 + i, 24 + i) for i in range(6)]
    assert ds[0]["valence"] is None and ds[1]["conversations"][0]["from"] == "human"


@pytest.mark.e2e
def test_oldest_supported_datasets_decodes_feid(tmp_path):
    """A fresh venv with datasets==2.16.0 (from the package registry) loads the same FEID."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed in this environment")
    d = _feid(tmp_path / "feid")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True)
    py = venv / "bin" / "python"
    pins = [f"datasets=={OLDEST_DATASETS}", "pyarrow<16", "numpy<2", "pillow"]  # what 2.16.0 ran with
    # what the registry held before a fixed date, so a new release of a dependency cannot break this
    # test on a day nothing here changed (label-studio's venv broke that way the day sentry-sdk 3.0 came out)
    args = [uv, "pip", "install", "-q", "--exclude-newer", "2026-12-01T00:00:00Z", "--python", str(py), *pins]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"could not install datasets=={OLDEST_DATASETS} from the package registry: {r.stderr[-300:]}")
    code = (
        "import sys, datasets\n"
        "ds = datasets.load_dataset('parquet', data_dir=sys.argv[1], split='train', cache_dir=sys.argv[2])\n"
        "assert isinstance(ds.features['image'], datasets.Image), ds.features['image']\n"
        "print(datasets.__version__, [ex['image'].size[0] for ex in ds])\n"
    )
    out = subprocess.run(
        [str(py), "-c", code, str(d), str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        env={"HF_DATASETS_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == OLDEST_DATASETS
    assert out.stdout.strip().endswith(str([24 + i for i in range(6)]))
