"""The review loop (`seke review export | import`, `tasks.tools.review`): unit tests of the
selection and the export parser, and an end-to-end round trip through a real Label Studio
server, back into `dvc repro`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.core import knowledge
from tasks.tools import review as R

ROOT = Path(__file__).resolve().parents[2]


def _verdict(fid: str, accepted: bool, conf: float | None, source: str = "annotator") -> dict:
    return {"face_id": fid, "accepted": accepted, "expression_confidence": conf, "expression_source": source}


def test_calibration_is_a_seeded_sample_of_unlabelled_faces_and_review_never_repeats_it():
    faces = {f"f{i:02d}": {"prior_expression": "happy" if i < 5 else None} for i in range(30)}
    verdicts = [_verdict(f, accepted=i % 4 != 0, conf=i / 30) for i, f in enumerate(faces)]
    cal, rev = R.select(verdicts, faces, 10, 8, seed=3)
    assert len(cal) == 10 and all(faces[f]["prior_expression"] is None for f in cal)
    assert R.select(verdicts, faces, 10, 8, seed=3)[0] == cal != R.select(verdicts, faces, 10, 8, seed=4)[0]
    assert not set(cal) & set(rev) and len(rev) == 8
    rejected = [v["face_id"] for v in verdicts if not v["accepted"] and v["face_id"] not in cal]
    assert rev[: len(rejected)] == sorted(rejected)[: len(rev)]  # rejected first, then the least confident
    confs = [next(v["expression_confidence"] for v in verdicts if v["face_id"] == f) for f in rev[len(rejected) :]]
    assert confs == sorted(confs)


def test_label_config_names_every_expression_and_au():
    k = knowledge.load()
    cfg = R.label_config(k)
    assert all(f'value="{e}"' in cfg for e in k.expressions) and all(f'value="{a}"' in cfg for a in k.aus)
    assert '<Number name="valence"' in cfg and '<Number name="arousal"' in cfg


def _task(path: str, result: list[dict], n_faces: int = 1, cancelled: bool = False, ann_id: int = 1) -> dict:
    return {
        "data": {"path": path, "face_id": f"{path}_0", "n_faces": n_faces},
        "annotations": [{"id": ann_id, "completed_by": 7, "was_cancelled": cancelled, "result": result}],
    }


def test_import_reads_labels_and_says_what_it_left_out(tmp_path):
    full = [
        R._choice("expression", ["Happy"]),
        {"from_name": "valence", "type": "number", "value": {"number": 0.7}},
        {"from_name": "arousal", "type": "number", "value": {"number": 1.4}},
        R._choice("aus", ["AU06", "AU12"]),
    ]
    tasks = [
        _task("a.jpg", full),
        _task("b.jpg", [R._choice("aus", [R.NONE_AU])]),
        _task("c.jpg", full, n_faces=2),
        _task("d.jpg", full, cancelled=True),
        _task("e.jpg", [{"from_name": "valence", "type": "number", "value": {"number": 0.1}}]),
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    dest = tmp_path / "labels.csv"
    n = R.import_labels(export, dest)
    assert n["skipped"] == {"multi_face_image": 1, "not_annotated": 1}
    # an arousal out of [-1, 1] rejects its task (never clamped); a lone valence too
    assert n["rejected"] == {"arousal": 1, "valence_without_arousal": 1}
    rows = {r["path"]: r for r in csv.DictReader(open(dest))}
    assert set(rows) == {"b.jpg"}
    export.write_text(
        json.dumps([_task("a.jpg", full[:1] + [{**full[2], "value": {"number": 0.4}}, full[1], full[3]])])
    )
    R.import_labels(export, dest)
    rows = {r["path"]: r for r in csv.DictReader(open(dest))}
    a = rows["a.jpg"]
    assert (a["expression"], a["valence"], a["arousal"], a["label_origin"]) == ("happy", "0.7", "0.4", "review")
    assert a["AU06"] == a["AU12"] == "1" and a["AU04"] == "0" and a["reviewer"] == "7"
    assert rows["b.jpg"]["expression"] == "" and all(rows["b.jpg"][x] == "0" for x in knowledge.load().aus)
    # a second import merges by path: a newer label wins, the others stay
    export.write_text(json.dumps([_task("a.jpg", [R._choice("expression", ["sad"])], ann_id=2)]))
    R.import_labels(export, dest)
    rows = {r["path"]: r for r in csv.DictReader(open(dest))}
    assert set(rows) == {"a.jpg", "b.jpg"} and rows["a.jpg"]["expression"] == "sad"


# ------------------------------------------------------------------ end to end
EXTRA = tuple(
    f"images/demo_single_face_{n}.{x}"
    for n, x in (("astronaut_skimage_PD", "png"), *((f"lisa_CC0_lisa{i}", "jpg") for i in range(1, 5)))
) + ("images/demo_multi_face_london_collage_CCBY.jpg",)


def _answer(i: int, k: knowledge.Knowledge) -> dict:
    """What the person labels task i as: varied, and different from the model's usual answer."""
    return {
        "expression": k.expressions[(3 * i + 2) % len(k.expressions)],
        "valence": round(-0.8 + 0.3 * i, 2),
        "arousal": round(0.5 - 0.2 * i, 2),
        "aus": [k.aus[i % len(k.aus)], k.aus[(i + 5) % len(k.aus)]],
    }


@pytest.mark.e2e
def test_round_trip_through_a_real_label_studio_and_back_into_dvc_repro(tmp_path, request):
    from browser import screenshot_logged_in
    from labelstudio import server
    from project import BIN, make_project, project_env, run

    k = knowledge.load()
    proj = make_project(tmp_path, london=2, extra=EXTRA)
    env = project_env(proj)
    ls_dir = tmp_path / "label-studio"
    ls_dir.mkdir()
    # the project is built while Label Studio starts (its first start migrates its database)
    build = subprocess.Popen(
        [str(BIN / "dvc"), "repro"], cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    request.addfinalizer(build.kill)  # not left running when Label Studio fails to start (a no-op once reaped)
    with server(ls_dir) as ls:
        out = build.communicate(timeout=1200)[0].decode(errors="replace")
        assert build.returncode == 0, out[-3000:]
        run(proj, "seke", "review", "export", "--calibration", "4", "--review", "3", env=env)
        config = (proj / "review" / "label_config.xml").read_text()
        tasks = json.loads((proj / "review" / "tasks.json").read_text())
        assert [t["data"]["purpose"] for t in tasks].count("calibration") == 4
        assert all("predictions" not in t for t in tasks if t["data"]["purpose"] == "calibration")
        assert all(t["predictions"][0]["result"] for t in tasks if t["data"]["purpose"] == "review")

        project = ls.api("POST", "/api/projects", json={"title": "SEKE review", "label_config": config})
        ls.api("POST", f"/api/projects/{project['id']}/import", json=tasks)
        listed = ls.api("GET", "/api/tasks", params={"project": project["id"], "page_size": 100})
        listed = listed["tasks"] if isinstance(listed, dict) else listed
        assert len(listed) == len(tasks)
        given = {}
        for i, t in enumerate(sorted(listed, key=lambda t: t["id"])):
            a = _answer(i, k)
            result = [
                {**R._choice("expression", [a["expression"]]), "origin": "manual"},
                {"from_name": "valence", "to_name": "face", "type": "number", "value": {"number": a["valence"]}},
                {"from_name": "arousal", "to_name": "face", "type": "number", "value": {"number": a["arousal"]}},
                R._choice("aus", a["aus"]),
            ]
            ls.api("POST", f"/api/tasks/{t['id']}/annotations", json={"result": result})
            given[t["data"]["face_id"]] = (t["data"], a)
        exported = ls.api("GET", f"/api/projects/{project['id']}/export", params={"exportType": "JSON"})
        shot = tmp_path / "label_studio.png"
        first = min(t["id"] for t in listed)
        page = f"{ls.url}/projects/{project['id']}/data?task={first}"
        n_bytes = screenshot_logged_in(page, ls.cookies(), shot, shows=k.expressions[-1])  # its labelling interface
        assert n_bytes > 20_000  # a rendered page, not a blank one
        if os.environ.get("SEKE_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["SEKE_SCREENSHOTS"]) / "label_studio.png")

    (tmp_path / "export.json").write_text(json.dumps(exported))
    out = run(proj, "seke", "review", "import", str(tmp_path / "export.json"), env=env).stdout
    n_multi = sum(d["n_faces"] > 1 for d, _ in given.values())
    assert (f"{n_multi} multi_face_image" if n_multi else "skipped: none") in " ".join(out.split())
    rows = {r["face_id"]: r for r in csv.DictReader(open(proj / "data" / "review" / "labels.csv"))}
    single = {f: (d, a) for f, (d, a) in given.items() if d["n_faces"] == 1}
    assert set(rows) == set(single) and single
    for fid, (d, a) in single.items():
        r = rows[fid]
        assert r["path"] == d["path"] and r["expression"] == a["expression"] and r["label_origin"] == "review"
        assert (float(r["valence"]), float(r["arousal"])) == (a["valence"], a["arousal"])
        assert {x for x in k.aus if r[x] == "1"} == set(a["aus"])

    # the next dvc repro takes them as priors and calibration labels, and says they came from people
    out = run(proj, "dvc", "repro", env=env).stdout
    assert "Running stage 'ingest'" in out
    imgs = {r["path"]: r for r in pq.read_table(proj / "data" / "ingest" / "images.parquet").to_pylist()}
    for d, a in single.values():
        img = imgs[d["path"]]
        assert (img["label_origin"], img["prior_expression"]) == ("review", a["expression"])
        assert sorted(img["prior_aus"]) == sorted(a["aus"]) and img["prior_valence"] == a["valence"]
    ingest_m = json.loads((proj / "metrics" / "ingest.json").read_text())
    assert ingest_m["labels_from_review"] == len(single) and ingest_m["review_labels_unmatched"] == []
    verify_m = json.loads((proj / "metrics" / "verify.json").read_text())
    assert verify_m["calibration"]["calibration_label_origin"].get("review") == len(single)
    feid = pq.read_table(proj / "data" / "feid").to_pylist()
    reviewed = {r["id"] for r in feid if r["label_origin"] == "review"}
    assert reviewed and reviewed <= set(single)
    assert all(
        r["label_origin"] == "source" for r in feid if r["id"] not in single and r["expression_status"] == "prior"
    )
