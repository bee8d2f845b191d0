"""Exports of a FEID version for training frameworks, each with a dataset card (README.md).

- `hf`: Parquet shards under `data/` whose schema carries Hugging Face `datasets` feature
  metadata, so `datasets.load_dataset("parquet", data_files=...)` (or
  `load_dataset("<dir>")`) decodes the `image` column to PIL images with no cast;
- `sharegpt`: LLaMA-Factory's multimodal ShareGPT layout: a JSON list of
  `{"messages": [{"role", "content"}...], "images": [path]}` with one `<image>` token per
  image, plus the `dataset_info.json` entry that registers it;
- `llava`: LLaVA's instruction-tuning layout: a JSON list of
  `{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}...]}`, `<image>` in
  the first human turn.

The JSON exports write each crop once, as `images/<face id>.jpg`, relative to the export
folder (LLaMA-Factory's `dataset_dir` / LLaVA's `image_folder`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.instructions import IMAGE
from tasks.core.knowledge import AUS, EXPRESSIONS
from tasks.core.records import all_nullable, hf_features
from tasks.core.yamlio import load_yaml

FORMATS = ("hf", "sharegpt", "llava")
IMAGE_TOKEN = IMAGE  # the token FEID puts in its first human turn
ROLE = {"human": "user", "gpt": "assistant"}


@dataclass
class CardInfo:
    """What the dataset card says beyond the rows themselves."""

    name: str = "FEID"
    version: str = "workspace"
    rev: str | None = None
    params: dict = field(default_factory=dict)
    sources_text: str = ""  # licences and attributions of the input images
    metrics: dict = field(default_factory=dict)
    year: int | None = None  # of the version (its commit); None = this year


def export_hf(table: pa.Table, out: Path, rows_per_shard: int = 5000) -> list[Path]:
    # `datasets` applies the features in the metadata only to fields that match its own
    # (all-nullable) Arrow schema exactly, so the schema is made nullable throughout
    base = pa.schema([pa.field(f.name, all_nullable(f.type), nullable=True) for f in table.schema])
    features = hf_features(base)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    schema = base.with_metadata(meta)
    table = table.cast(schema)
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    n = max(1, -(-table.num_rows // rows_per_shard))
    files = []
    for i in range(n):
        f = d / f"train-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table.slice(i * rows_per_shard, rows_per_shard), f, compression="zstd")
        files.append(f)
    return files


def _write_images(rows: Iterable[dict], out: Path) -> dict[str, str]:
    d = out / "images"
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for r in rows:
        rel = f"images/{r['id']}.jpg"
        (out / rel).write_bytes(r["image"]["bytes"])
        paths[r["id"]] = rel
    return paths


def _check_turns(r: dict) -> None:
    conv = r["conversations"]
    if not conv or conv[0]["from"] != "human" or sum(t["value"].count(IMAGE_TOKEN) for t in conv) != 1:
        raise ValueError(f"FEID row {r['id']}: conversations must start with a human turn and hold one {IMAGE_TOKEN}")


def export_sharegpt(rows: list[dict], out: Path, name: str) -> list[Path]:
    imgs = _write_images(rows, out)
    data = []
    for r in rows:
        _check_turns(r)
        data.append(
            {
                "messages": [{"role": ROLE[t["from"]], "content": t["value"]} for t in r["conversations"]],
                "images": [imgs[r["id"]]],
                "id": r["id"],
            }
        )
    f = out / f"{name}_sharegpt.json"
    f.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    info = {
        name: {
            "file_name": f.name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return [f, out / "dataset_info.json"]


def export_llava(rows: list[dict], out: Path, name: str) -> list[Path]:
    imgs = _write_images(rows, out)
    data = []
    for r in rows:
        _check_turns(r)
        data.append(
            {
                "id": r["id"],
                "image": imgs[r["id"]],
                "conversations": [{"from": t["from"], "value": t["value"]} for t in r["conversations"]],
            }
        )
    f = out / f"{name}_llava.json"
    f.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    return [f]


def version_for_export(repo: str, rev: str, name: str) -> tuple[pa.Table, CardInfo]:
    """FEID of version `rev` and what its card says: the params, the input's README (licences
    and attributions), the verify/export metrics and the commit's year. Raises
    `tasks.tools.compare.VersionError` for a version that cannot be read."""
    from tasks.tools import compare as C

    sha = C.resolve(repo, rev)
    st = C.Store(repo, sha)
    prm = load_yaml(st.read("params.yaml")) or {}
    paths = prm.get("paths", {})
    table = st.feid(paths.get("feid", "data/feid"))
    sources, inp = "", paths.get("input", "")
    if inp and "://" not in inp:
        try:
            sources = st.read(f"{inp.rstrip('/')}/README.md").decode()
        except C.VersionError:
            pass
    metrics = {}
    for stage in ("verify", "export"):
        try:
            metrics[stage] = json.loads(st.read(f"{paths.get('metrics', 'metrics')}/{stage}.json"))
            metrics[stage].pop("validation", None)
        except (C.VersionError, ValueError):
            pass
    card = CardInfo(name=name, version=rev, rev=sha, params=prm, sources_text=sources, metrics=metrics)
    card.year = _year(repo, sha)
    return table, card


def _year(repo: str, sha: str | None) -> int | None:
    """The year of a version's commit (None: the working tree, or not a local git repo)."""
    if not sha:
        return None
    r = subprocess.run(["git", "show", "-s", "--format=%cd", "--date=format:%Y", sha], cwd=repo, capture_output=True)
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None


def export(table: pa.Table, fmt: str, out: str | Path, card: CardInfo, overwrite: bool = False) -> dict:
    """Write one export of a FEID table (FeidRecord schema) and its dataset card."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    name = card.name.lower()
    if fmt == "hf":
        files = export_hf(table, out)
    else:
        rows = table.to_pylist()
        files = (export_sharegpt if fmt == "sharegpt" else export_llava)(rows, out, name)
    light = table.drop_columns([c for c in ("image", "conversations") if c in table.column_names]).to_pylist()
    (out / "README.md").write_text(dataset_card(light, fmt, card, [f.relative_to(out) for f in files]))
    return {
        "format": fmt,
        "out": str(out),
        "rows": table.num_rows,
        "files": [str(f) for f in files],
        "images": table.num_rows if fmt != "hf" else 0,
    }


# ---------------------------------------------------------------- dataset card
def _mean(xs) -> float:
    kept = [x for x in xs if x is not None]
    return round(sum(kept) / len(kept), 3) if kept else 0.0


def _stats(rows: list[dict]) -> dict:
    n = len(rows) or 1
    return {
        "rows": len(rows),
        "per_expression": dict(Counter(r["expression"] for r in rows).most_common()),
        "per_source": dict(Counter(r["source"] for r in rows).most_common()),
        "au_rate": {
            a: round(sum(a in (r["aus"] or []) for r in rows) / n, 3)
            for a in AUS
            if any(a in (r["aus"] or []) for r in rows)
        },
        # over the rows that keep their VA (a withheld VA is null)
        "mean_valence": _mean(r["valence"] for r in rows),
        "mean_arousal": _mean(r["arousal"] for r in rows),
        "mean_confidence": round(sum(r["confidence"] for r in rows) / n, 3),
    }


def _demote(md: str) -> str:
    """Headings of an embedded markdown file, two levels down (they sit under an H2)."""
    return "\n".join("##" + ln if ln.startswith("#") else ln for ln in md.splitlines())


SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
SIZE_CATEGORIES += [(10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B")]
SIZE_CATEGORIES += [(10**11, "10B<n<100B"), (10**12, "100B<n<1T")]


def size_category(n: int) -> str:
    """Hugging Face's `size_categories` value for `n` rows (any size)."""
    return next((c for top, c in SIZE_CATEGORIES if n < top), "n>1T")


def card_data(rows: int, fmt: str, name: str):
    """The card's YAML header (`huggingface_hub.DatasetCardData`). The licence is `other`,
    named, because every image keeps its source's licence (the card lists them)."""
    from huggingface_hub import DatasetCardData

    extra = {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]}
    return DatasetCardData(
        license="other",
        license_name=f"{name.lower()}-source-licences",
        license_link="README.md#sources-and-licences",
        task_categories=["image-text-to-text", "image-classification"],
        tags=["facial-expression", "emotion", "action-units", "instruction-tuning", "biometric"],
        pretty_name=name,
        size_categories=[size_category(rows)],
        **(extra if fmt == "hf" else {}),
    )


def _card_header(s: dict, fmt: str, card: CardInfo, files: list[Path]) -> list[str]:
    L = [
        f"# {card.name}: facial-emotion instruction data",
        "",
        f"Version `{card.version}`"
        + (f" (commit `{card.rev}`)" if card.rev else " (working tree)")
        + f", exported as **{fmt}**. Every row is one face that passed self-verification (SV-UAMC): its "
        "expression, valence/arousal and action units (a granularity verify could not trust is withheld), "
        "with per-AU probabilities, a calibrated confidence and instruction/answer turns drawn from a "
        "versioned bank; the description turn is the annotator's own verified rationale where there is one.",
        "",
        "## Files",
        "",
    ]
    L += [f"- `{f}`" for f in files]
    if fmt == "hf":
        L += [
            "",
            "```python",
            "from datasets import load_dataset",
            'ds = load_dataset("parquet", data_files="data/*.parquet")["train"]',
            'ds[0]["image"]  # PIL image',
            "```",
        ]
    elif fmt == "sharegpt":
        L += [
            "",
            "LLaMA-Factory: copy this folder into your `dataset_dir` (or point `dataset_dir` here) and train "
            f"with `dataset: {card.name.lower()}`; `dataset_info.json` holds the entry (merge it into yours).",
        ]
    else:
        L += ["", "LLaVA: `--data_path " + f"{card.name.lower()}_llava.json --image_folder <this folder>`."]
    return L


PERSONAL = """
## Personal and sensitive information

Every row holds a photograph of a person's face. Faces are **biometric data**: under the
GDPR (Art. 9) and similar laws, processing them to identify a person is a special category
of personal data, and emotion labels add inferences about that person. FEID stores no names
or identity labels, but the faces themselves can identify people.

- Use the images only as their source licences (above) and the consent under which they
  were collected allow. Check both before publishing this dataset.
- Do not use FEID to identify people, or to infer emotions for decisions about them
  (hiring, policing, education, insurance): expression labels describe a facial display,
  not an inner state, and are less reliable for some groups.
- Honour removal requests: remove the person's rows and publish a new version.
- The `source` column says where each image came from; `subject` identifiers of the sources
  are not exported.
"""


def _card_statistics(s: dict, label_sets: list[str], au_sets: list[str]) -> list[str]:
    L: list[str] = []
    L += [
        "",
        "## Statistics",
        "",
        f"- rows (accepted faces): {s['rows']}",
        f"- mean confidence {s['mean_confidence']}; mean valence {s['mean_valence']:+.3f}, "
        f"mean arousal {s['mean_arousal']:+.3f}",
        "",
        "| expression | rows |",
        "|---|---|",
    ]
    L += [f"| {e} | {n} |" for e, n in s["per_expression"].items()]
    L += ["", "| source | rows |", "|---|---|"] + [f"| {e} | {n} |" for e, n in s["per_source"].items()]
    if s["au_rate"]:
        L += ["", "Share of rows with each AU active: " + ", ".join(f"{a} {v}" for a, v in s["au_rate"].items())]
    L += [
        "",
        "## Label set and AU set",
        "",
        f"- expressions: {', '.join(EXPRESSIONS)}",
        f"- action units (FACS): {', '.join(AUS)}",
        "- per row, `label_set` / `au_set` are the classes and AUs that row's labels cover "
        f"(found here: label sets {label_sets}; AU sets {au_sets}). Labels a source did not give were "
        "generated by the annotator and verified; `au_probabilities` holds the occurrence rate of each AU "
        "(null = not asked).",
        "",
    ]
    return L


def _card_annotation(card: CardInfo, prov: dict) -> list[str]:
    p = card.params
    L: list[str] = []
    L += ["## Sources and licences", ""]
    L += [
        _demote(card.sources_text.strip())
        or "No source description was found: add one (a README.md next to the input "
        "images) before publishing. The images keep their original licences."
    ]
    L += ["", "## Annotation", ""]
    for k, v in prov.items():
        L.append(f"- {k}: {', '.join(f'`{x}`' for x in v)}")
    for sec in ("prompt", "annotator", "sample", "verify", "crop"):
        if sec in p:
            L.append(f"- `{sec}`: `{json.dumps(p[sec], sort_keys=True)}`")
    cal = (card.metrics.get("verify") or {}).get("calibration") or {}
    if cal:
        L += ["", "## How far to trust the labels", ""]
        if cal.get("guaranteed"):
            kind = cal.get("guarantee")
            L.append(
                f"Generated expressions (`guarantee: {kind}` rows): "
                + (
                    f"error <= {cal.get('target_error')} with probability >= {1 - cal.get('delta', 0):.2f}"
                    if kind == "pac"
                    else f"expected error <= {cal.get('target_error')}"
                )
                + f", certified on {cal.get('calibration_faces')} labelled faces of this run."
            )
        else:
            L.append(
                "**No guarantee** for the generated expressions (`guarantee: none` rows): they are kept by a "
                "calibrated confidence, not certified. To certify them, label a blind random sample of the faces "
                "(`seke review export`) and rebuild."
                + (f" Estimate: {cal['label_budget_line']}." if cal.get("label_budget_line") else "")
            )
        L.append("Rows with `guarantee: source` carry the source's (or a reviewer's) own label.")
    if card.metrics:
        L += [
            "",
            "Pipeline metrics of this version:",
            "",
            "```json",
            json.dumps(card.metrics, indent=1, sort_keys=True),
            "```",
        ]
    return L


def _card_citation(card: CardInfo, prov: dict) -> list[str]:
    L: list[str] = []
    L += [
        "",
        "## Citation",
        "",
        "Cite this dataset version and every source listed above:",
        "",
        "```bibtex",
        "@misc{feid,",
        "  title  = {FEID: knowledge-enhanced, self-verified facial-emotion instruction data},",
        f"  note   = {{version {card.version}{', commit ' + card.rev if card.rev else ''}, params "
        f"{', '.join(prov.get('params_hash', []))}}},",
        f"  year   = {{{card.year or date.today().year}}}",
        "}",
        "```",
        "",
    ]
    return L


def dataset_card(rows: list[dict], fmt: str, card: CardInfo, files: list[Path]) -> str:
    s = _stats(rows)
    prov = {
        k: sorted({str(r[k]) for r in rows})
        for k in ("annotator", "model", "prompt_version", "params_hash", "knowledge_version")
        if rows and k in rows[0]
    }
    label_sets = sorted({",".join(r["label_set"]) for r in rows})
    au_sets = sorted({",".join(r["au_set"]) for r in rows})
    L = _card_header(s, fmt, card, files) + _card_statistics(s, label_sets, au_sets)
    L += _card_annotation(card, prov) + PERSONAL.splitlines() + _card_citation(card, prov)
    from huggingface_hub import DatasetCard

    body = "\n".join(L)
    return str(DatasetCard(f"---\n{card_data(s['rows'], fmt, card.name).to_yaml()}\n---\n\n{body}"))


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload an export folder (data and card) as a Hugging Face dataset repository. The
    token comes from the environment (`HF_TOKEN`) or `huggingface-cli login`, never from
    params. Returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", commit_message="FEID export")
    return str(url)
