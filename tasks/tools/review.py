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
import math
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
    anns = task.get("annotations") or []
    if not isinstance(anns, list):
        raise Rejected(f"annotations: expected a list, got {short(anns)}")
    anns = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
    return max(anns, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0), default=None)


class Rejected(ValueError):
    """A task whose labels cannot be taken as they are: it is rejected whole, with this reason."""


def short(x, n: int = 60) -> str:
    """A value as an error message shows it: its repr, cut short."""
    r = repr(x)
    return r if len(r) <= n else r[: n - 3] + "..."


def _number(name: str, x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise Rejected(f"{name}: {short(x)} is not a number") from None
    if not math.isfinite(v) or not -1.0 <= v <= 1.0:
        raise Rejected(f"{name}: {short(x)} is not a finite number in [-1, 1]")
    return v


def _values(result: list[dict], k: knowledge.Knowledge) -> dict:
    """The labels of one annotation, checked: one known expression, finite VA in [-1, 1], known
    AU names. Anything else rejects the task (never clamped or dropped silently)."""
    out: dict = {}
    if not isinstance(result, list):
        raise Rejected(f"result: expected a list of regions, got {short(result)}")
    for r in result:
        if not isinstance(r, dict):
            raise Rejected(f"result: expected objects, got {short(r)}")
        name, val = r.get("from_name"), r.get("value") or {}
        if name in ("expression", "aus") and "choices" in val:
            if not isinstance(val["choices"], list):
                raise Rejected(f"{name}: expected a list of choices, got {short(val['choices'])}")
            out[name] = [str(c) for c in val["choices"]]
        elif name in ("valence", "arousal") and "number" in val:
            out[name] = _number(name, val["number"])
    if "expression" in out:
        if len(out["expression"]) != 1:
            raise Rejected(f"expression: {len(out['expression'])} choices {short(out['expression'])}, expected one")
        try:
            out["expression"] = k.expression(out["expression"][0])
        except knowledge.UnknownLabel:
            raise Rejected(f"expression: {short(out['expression'][0])} is not a known label") from None
        if out["expression"] not in k.expressions:
            raise Rejected(f"expression: {short(out['expression'])} is not one of the {len(k.expressions)} labels")
    if "aus" in out:
        unknown = [a for a in out["aus"] if a != NONE_AU and a not in k.aus]
        if unknown:
            raise Rejected(f"aus: unknown AU name(s) {short(unknown)}")
    return out


def _tasks(export: Path) -> list[dict]:
    """The tasks of a Label Studio JSON export, or one line saying what was expected."""
    try:
        tasks = json.loads(Path(export).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON ({short(str(e), 80)})") from None
    want = 'expected a Label Studio JSON export: a list of tasks [{"data": {"path": ...}, "annotations": [...]}]'
    if not isinstance(tasks, list):
        keys = list(tasks)[:5] if isinstance(tasks, dict) else []
        raise ValueError(f"{want}, got {type(tasks).__name__}" + (f" with keys {short(keys)}" if keys else ""))
    for n, t in enumerate(tasks, 1):
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict) or not isinstance(t["data"].get("path"), str):
            raise ValueError(f"{want}; task {n} is {short(t)}")
    return tasks


def columns(k: knowledge.Knowledge | None = None) -> list[str]:
    k = k or knowledge.load()
    return ["path", "expression", "label_set", "valence", "arousal", *k.aus, "face_id", "reviewer", "label_origin"]


def write_empty(dest: Path) -> None:
    """A labels file with no labels yet (`paths.review` is a DVC dependency, so it must exist)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(",".join(columns()) + "\n")


def _row(t: dict, a: dict, got: dict, k: knowledge.Knowledge) -> dict:
    d = t["data"]
    row = {"path": d["path"], "face_id": d.get("face_id", ""), "label_origin": "review"}
    who = a.get("completed_by")
    row["reviewer"] = str(who.get("email", who.get("id", "")) if isinstance(who, dict) else who or "")
    if got.get("expression"):
        row["expression"] = got["expression"]
        row["label_set"] = ",".join(k.expressions)
    for key in ("valence", "arousal"):
        if key in got:
            row[key] = got[key]
    if "aus" in got:
        on = set(got["aus"]) - {NONE_AU}
        row.update({a_: int(a_ in on) for a_ in k.aus})
    return row


def _judge(t: dict, k: knowledge.Knowledge) -> tuple[str, str, dict | None, str]:
    """(status, reason, row, updated_at) of one task: imported, rejected or skipped."""
    try:
        a = _annotation(t)
    except Rejected as e:
        return "rejected", str(e), None, ""
    if a is None:
        return "skipped", "not_annotated", None, ""
    if int(t["data"].get("n_faces") or 1) > 1:  # labels are per image: one face cannot speak for the others
        return "skipped", "multi_face_image", None, ""
    try:
        got = _values(a.get("result") or [], k)
    except Rejected as e:
        return "rejected", str(e), None, ""
    if ("valence" in got) != ("arousal" in got):  # a prior needs both
        return "rejected", "valence_without_arousal: a valence needs an arousal, and the reverse", None, ""
    if "expression" not in got and "valence" not in got and "aus" not in got:
        return "skipped", "empty_annotation", None, ""
    return "imported", "", _row(t, a, got, k), str(a.get("updated_at") or a.get("created_at") or "")


def import_labels(export: Path, dest: Path) -> dict:
    """Label Studio's JSON export -> the labels CSV that `paths.review` reads, merged with the
    labels already there (this import's labels win over older ones). Every task ends imported,
    rejected with a reason, or skipped, in a report beside `dest` (`import_report.csv`). A path
    exported twice keeps its newest annotation (`updated_at`), and each conflict is reported.
    A file that is not a Label Studio export raises ValueError with one line."""
    k = knowledge.load()
    tasks = _tasks(export)
    rows = {r["path"]: r for r in csv.DictReader(open(dest))} if dest.exists() else {}
    report, fresh, counts = [], {}, Counter()
    for n, t in enumerate(tasks, 1):
        status, reason, row, when = _judge(t, k)
        counts[status] += 1
        report.append({"task": n, "path": t["data"]["path"], "status": status, "reason": reason})
        if row is None:
            continue
        old, new = fresh.get(row["path"]), (row, when)
        if old is not None:
            keep, drop = (new, old) if when >= old[1] else (old, new)
            differ = {c: (keep[0].get(c), drop[0].get(c)) for c in row if keep[0].get(c) != drop[0].get(c)}
            if differ:
                report[-1]["reason"] = f"conflict with another task of this path: kept the one updated {keep[1]}"
            fresh[row["path"]] = keep
        else:
            fresh[row["path"]] = (row, when)
    rows.update({p: r for p, (r, _) in fresh.items()})
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns(k))
        w.writeheader()
        for path in sorted(rows):
            w.writerow(rows[path])
    rep_path = dest.parent / "import_report.csv"
    with open(rep_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["task", "path", "status", "reason"])
        w.writeheader()
        w.writerows(report)
    skipped = Counter(r["reason"] for r in report if r["status"] == "skipped")
    rejected = Counter(r["reason"].split(":")[0] for r in report if r["status"] == "rejected")
    conflicts = sum(1 for r in report if r["reason"].startswith("conflict"))
    return {
        "labels": len(rows),
        "imported": counts["imported"],
        "rejected": dict(rejected),
        "skipped": dict(skipped),
        "conflicts": conflicts,
        "report": str(rep_path),
    }
