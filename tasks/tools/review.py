"""The human review loop with Label Studio: faces out as a project, people's labels back as priors.

`export_project` writes a Label Studio project folder:
- `label_config.xml`: the expression (one of the 8), valence and arousal in [-1, 1], and the
  AUs (several, or "none");
- `tasks.json`: one task per face, with the crop as a data URL (the project needs no file
  server) and `face_id`, `path`, `purpose` in its data. Two kinds, never the same face twice:
  - `calibration`: a seeded random sample of the faces with no known expression. These are
    exchangeable with the rest, so their labels make the error guarantee of
    `verify.target_error` honest (docs/method.md). They carry **no** pre-annotation: showing
    the model's answer would pull the person towards it and bias the calibration;
  - `review`: the rejected faces, then the accepted generated ones from the least confident
    up, each with the model's answer as a pre-annotation to correct.

`import_labels` reads Label Studio's JSON export and writes a manifest-compatible CSV (`path`,
`expression`, `label_set`, `valence`, `arousal`, `AU01`...`AU26`, `face_id`, `reviewer`,
`label_origin`). `paths.review` points ingest at it: the next `dvc repro` uses those labels as
priors and as calibration labels, and FEID's `label_origin` says they came from people.
"""

from __future__ import annotations

import base64
import csv
import json
import random
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import quoteattr

from tasks.core import knowledge
from tasks.core.params import Params
from tasks.infra import io

NONE_AU = "none"  # the AU choice that says "no AU is active" (an unanswered AU question says nothing)


def label_config(k: knowledge.Knowledge | None = None) -> str:
    k = k or knowledge.load()
    cat = k.au_catalogue
    exprs = "\n".join(f'    <Choice value="{e}"/>' for e in k.expressions)
    aus = "\n".join(f"    <Choice value={quoteattr(a)} hint={quoteattr(cat[a]['name'])}/>" for a in k.aus)
    return f"""<View>
  <Image name="face" value="$image" zoom="true" maxWidth="360px"/>
  <Header value="$note" size="6"/>
  <Header value="Expression"/>
  <Choices name="expression" toName="face" choice="single-radio" showInline="true">
{exprs}
  </Choices>
  <Header value="Valence (unpleasant -1 .. pleasant 1) and arousal (calm -1 .. excited 1)"/>
  <Number name="valence" toName="face" min="-1" max="1" step="0.05"/>
  <Number name="arousal" toName="face" min="-1" max="1" step="0.05"/>
  <Header value="Active action units"/>
  <Choices name="aus" toName="face" choice="multiple" showInline="true">
    <Choice value="{NONE_AU}" hint="no action unit is active"/>
{aus}
  </Choices>
</View>
"""


def _prediction(v: dict, model: str) -> dict:
    """The model's answer of one verdict as a Label Studio pre-annotation."""
    res = [_choice("expression", [v["expression"]])] if v.get("expression") else []
    for key in ("valence", "arousal"):
        if v.get(key) is not None:
            res.append({"from_name": key, "to_name": "face", "type": "number", "value": {"number": round(v[key], 2)}})
    if v.get("aus") is not None:
        res.append(_choice("aus", list(v["aus"]) or [NONE_AU]))
    return {"model_version": model, "score": v.get("expression_confidence") or 0.0, "result": res}


def _choice(name: str, values: list[str]) -> dict:
    return {"from_name": name, "to_name": "face", "type": "choices", "value": {"choices": values}}


def select(verdicts: list[dict], faces: dict[str, dict], n_calibration: int, n_review: int, seed: int):
    """(calibration face ids, review face ids): a seeded random sample of the faces with no
    known expression, then the rejected and least confident generated faces not already drawn."""
    pool = sorted(f for f, face in faces.items() if not face.get("prior_expression"))
    cal = sorted(random.Random(seed).sample(pool, min(n_calibration, len(pool))))
    drawn = set(cal)
    rejected = [v for v in verdicts if not v["accepted"] and v["face_id"] not in drawn]
    generated = [v for v in verdicts if v["accepted"] and v.get("expression_source") == "annotator"]
    weak = sorted(
        (v for v in generated if v["face_id"] not in drawn),
        key=lambda v: (v.get("expression_confidence") or 0.0, v["face_id"]),
    )
    review = [v["face_id"] for v in sorted(rejected, key=lambda v: v["face_id"]) + weak][:n_review]
    return cal, review


def export_project(p: Params, out: Path, n_calibration: int = 100, n_review: int = 100, seed: int = 0) -> dict:
    """Write `label_config.xml` and `tasks.json` for this workspace's faces into `out`."""
    verdicts = io.read_table(io.join(p.paths.verify, "verdicts.parquet")).to_pylist()
    cols = ["face_id", "path", "crop", "prior_expression", "n_faces", "subject"]
    faces = {f["face_id"]: f for f in io.iter_rows(io.join(p.paths.crop, "faces.parquet"), columns=cols)}
    by = {v["face_id"]: v for v in verdicts}
    cal, rev = select(verdicts, faces, n_calibration, n_review, seed)
    model = f"{p.annotator.backend}/{p.annotator.model}"
    tasks = []
    for purpose, ids in (("calibration", cal), ("review", rev)):
        for fid in ids:
            f, v = faces[fid], by.get(fid) or {}
            note = "calibration sample: label what you see" if purpose == "calibration" else _why(v)
            data = {
                "image": "data:image/jpeg;base64," + base64.b64encode(f["crop"]).decode(),
                "face_id": fid,
                "path": f["path"],
                "n_faces": f["n_faces"],
                "purpose": purpose,
                "note": note,
            }
            task = {"data": data}
            if purpose == "review" and v:
                task["predictions"] = [_prediction(v, model)]
            tasks.append(task)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_config.xml").write_text(label_config())
    (out / "tasks.json").write_text(json.dumps(tasks))
    return {"tasks": len(tasks), "calibration": len(cal), "review": len(rev)}


def _why(v: dict) -> str:
    if not v:
        return "review"
    if not v["accepted"]:
        return "rejected: " + ", ".join(v.get("reasons") or ["?"])
    return f"accepted with confidence {v.get('expression_confidence') or 0:.2f}: check it"


def _annotation(task: dict) -> dict | None:
    """The task's latest annotation that was not skipped."""
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(anns, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0), default=None)


def _values(result: list[dict]) -> dict:
    out: dict = {}
    for r in result:
        name, val = r.get("from_name"), r.get("value") or {}
        if name in ("expression", "aus") and "choices" in val:
            out[name] = list(val["choices"])
        elif name in ("valence", "arousal") and "number" in val:
            out[name] = float(val["number"])
    return out


def columns(k: knowledge.Knowledge | None = None) -> list[str]:
    k = k or knowledge.load()
    return ["path", "expression", "label_set", "valence", "arousal", *k.aus, "face_id", "reviewer", "label_origin"]


def write_empty(dest: Path) -> None:
    """A labels file with no labels yet (`paths.review` is a DVC dependency, so it must exist)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(",".join(columns()) + "\n")


def import_labels(export: Path, dest: Path) -> dict:
    """Label Studio's JSON export -> the labels CSV that `paths.review` reads, merged with the
    labels already there (a newer label of the same path wins). Returns counts, with the
    tasks left out and why."""
    k = knowledge.load()
    tasks = json.loads(Path(export).read_text())
    rows = {r["path"]: r for r in csv.DictReader(open(dest))} if dest.exists() else {}
    imported, skipped = 0, Counter()
    for t in tasks:
        d, a = t.get("data") or {}, _annotation(t)
        if a is None:
            skipped["not_annotated"] += 1
            continue
        if int(d.get("n_faces") or 1) > 1:  # labels are per image: one face cannot speak for the others
            skipped["multi_face_image"] += 1
            continue
        got = _values(a.get("result") or [])
        if ("valence" in got) != ("arousal" in got):  # a prior needs both
            got.pop("valence", None), got.pop("arousal", None)
            skipped["valence_without_arousal"] += 1
        if "expression" not in got and "valence" not in got and "aus" not in got:
            skipped["empty_annotation"] += 1
            continue
        row = {"path": d["path"], "face_id": d.get("face_id", ""), "label_origin": "review"}
        who = a.get("completed_by")
        row["reviewer"] = str(who.get("email", who.get("id", "")) if isinstance(who, dict) else who or "")
        if got.get("expression"):
            row["expression"] = k.expression(got["expression"][0])
            row["label_set"] = ",".join(k.expressions)
        for key in ("valence", "arousal"):
            if key in got:
                row[key] = max(-1.0, min(1.0, got[key]))
        if "aus" in got:
            on = set(got["aus"]) - {NONE_AU}
            row.update({a_: int(a_ in on) for a_ in k.aus})
        rows[d["path"]] = row  # the last task of a path wins
        imported += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns(k))
        w.writeheader()
        for path in sorted(rows):
            w.writerow(rows[path])
    return {"labels": len(rows), "imported": imported, "skipped": dict(skipped)}
