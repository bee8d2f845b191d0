"""FEAB metrics against scikit-learn / scipy, the split's guarantees, and `seke bench` end to end
on the labelled sets in ../shared/data (a small fixed subset, local annotator)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, mean_squared_error, recall_score

from tasks.core.knowledge import AUS, EXPRESSIONS
from tasks.core.knowledge import load as load_knowledge
from tasks.core.params import BenchSource
from tasks.tools import feab

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def _synthetic(n=300, seed=0):
    """Items with known answers: expression for all, VA for some, AUs annotated by one source only."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = EXPRESSIONS[rng.integers(0, 5)]
        p = t if rng.random() < 0.6 else (None if rng.random() < 0.1 else EXPRESSIONS[rng.integers(0, 8)])
        src = "a" if i % 2 else "b"
        row = {"id": f"i{i}", "source": src, "subject": f"s{i // 2}", "truth_expression": t, "pred_expression": p}
        if i % 3:
            tv, ta = rng.uniform(-1, 1, 2)
            row.update(
                truth_valence=tv,
                truth_arousal=ta,
                pred_valence=float(np.clip(tv + rng.normal(0, 0.3), -1, 1)),
                pred_arousal=float(np.clip(0.5 * ta + rng.normal(0, 0.3), -1, 1)),
            )
        if src == "a":  # source a annotates AU04, AU06, AU12; b annotates none
            truth = [a for a in ("AU04", "AU06", "AU12") if rng.random() < 0.4]
            row.update(au_set=["AU04", "AU06", "AU12"], truth_aus=truth)
        pred = [a for a in AUS if (a in (row.get("truth_aus") or []) and rng.random() < 0.7) or rng.random() < 0.1]
        row["pred_aus"] = pred
        rows.append(row)
    return rows


def test_expression_metrics_match_sklearn():
    rows = _synthetic()
    m = feab.evaluate(rows, n_boot=0)
    t = [r["truth_expression"] for r in rows]
    p = [r["pred_expression"] or "none" for r in rows]
    present = sorted(set(t))
    assert m["expression"]["accuracy"]["value"] == pytest.approx(accuracy_score(t, p), abs=1e-4)
    assert m["expression"]["macro_f1"]["value"] == pytest.approx(
        f1_score(t, p, labels=present, average="macro", zero_division=0), abs=1e-4
    )
    assert m["expression"]["uar"]["value"] == pytest.approx(
        recall_score(t, p, labels=present, average="macro", zero_division=0), abs=1e-4
    )
    cm = confusion_matrix(t, p, labels=list(EXPRESSIONS) + ["none"])[: len(EXPRESSIONS)]
    assert m["confusion"]["matrix"] == cm.tolist()
    assert m["expression"]["unanswered"] == sum(r["pred_expression"] is None for r in rows)


def test_au_metrics_only_count_annotated_items():
    rows = _synthetic()
    m = feab.evaluate(rows, n_boot=0)
    assert m["au"]["annotated"] == ["AU04", "AU06", "AU12"]
    ann = [r for r in rows if r.get("au_set")]
    f1s = []
    for a in ("AU04", "AU06", "AU12"):
        ref = f1_score([a in r["truth_aus"] for r in ann], [a in r["pred_aus"] for r in ann])
        assert m["au"]["f1"][a]["value"] == pytest.approx(ref, abs=1e-4)
        f1s.append(ref)
    assert m["au"]["mean_f1"]["value"] == pytest.approx(np.mean(f1s), abs=1e-4)
    # AUs nobody annotates get no F1 at all: source b's predicted AUs are not "false positives"
    assert set(m["au"]["f1"]) == {"AU04", "AU06", "AU12"}
    assert m["per_source"]["a"]["au"]["source_mean_f1"] == pytest.approx(np.mean(f1s), abs=1e-4)
    assert "f1" not in m["per_source"]["b"].get("au", {})


def _ccc_ref(t, p):
    t, p = np.asarray(t), np.asarray(p)
    cov = np.cov(t, p, bias=True)[0, 1]
    return 2 * cov / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)


def test_va_metrics_match_reference():
    rows = _synthetic()
    m = feab.evaluate(rows, n_boot=0)
    for d in ("valence", "arousal"):
        xs = [(r[f"truth_{d}"], r[f"pred_{d}"]) for r in rows if f"truth_{d}" in r]
        t, p = zip(*xs)
        assert m["va"][d]["rmse"]["value"] == pytest.approx(math.sqrt(mean_squared_error(t, p)), abs=1e-4)
        assert m["va"][d]["pearson_r"]["value"] == pytest.approx(pearsonr(t, p)[0], abs=1e-4)
        assert m["va"][d]["ccc"]["value"] == pytest.approx(_ccc_ref(t, p), abs=1e-4)
    assert feab.ccc(np.array([0.1, 0.5, 0.9]), np.array([0.1, 0.5, 0.9])) == pytest.approx(1.0)


def test_bootstrap_interval_is_deterministic_and_brackets_the_estimate():
    rows = _synthetic()
    a = feab.evaluate(rows, n_boot=200, seed=3)
    b = feab.evaluate(rows, n_boot=200, seed=3)
    assert a == b
    for key in ("accuracy", "macro_f1", "uar"):
        v = a["expression"][key]
        assert v["lo"] <= v["value"] <= v["hi"] and v["hi"] - v["lo"] < 0.3
    v = a["va"]["valence"]["ccc"]
    assert v["lo"] <= v["value"] <= v["hi"]
    assert a["bootstrap"]["unit"] == "subject"


def test_split_is_subject_disjoint_and_excludes_feid(tmp_path):
    k = load_knowledge()
    imgs = tmp_path / "src"
    imgs.mkdir()
    rows = []
    for person in range(12):
        for j, lab in enumerate(("neutral", "happy")):
            f = imgs / f"p{person}_{j}.jpg"
            f.write_bytes(f"fake image {person} {j}".encode())  # the split hashes bytes, never decodes
            rows.append({"path": f.name, "who": str(person), "label": lab})
    rows.append({"path": "p0_0.jpg", "who": "0", "label": "neutral"})  # duplicate bytes
    rows.append({"path": "missing.jpg", "who": "99", "label": "neutral"})
    rows.append({"path": "p1_0.jpg", "who": "1", "label": "elated"})  # unknown label
    with (imgs / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "who", "label"])
        w.writeheader()
        w.writerows(rows)
    import hashlib

    in_feid = hashlib.sha256(b"fake image 3 0").hexdigest()
    src = BenchSource(name="toy", labels=str(imgs / "labels.csv"), subject_column="who", label_set=["neutral", "happy"])
    out, summary = feab.build_split([src], k, {in_feid}, {"toy_5"}, dev_fraction=0.3, seed=1)
    feab.check_disjoint(out, {in_feid}, {"toy_5"})
    subjects = {r["subject"] for r in out}
    assert "toy_5" not in subjects and "toy_3" in subjects  # person 3 keeps their other image
    assert in_feid not in {r["image_id"] for r in out}
    assert summary["excluded"] == {
        "toy:bad_label": 1,
        "toy:duplicate": 1,
        "toy:image_in_feid": 1,
        "toy:missing_file": 1,
        "toy:subject_in_feid": 2,
    }
    assert {r["split"] for r in out} == {"dev", "test"}
    again, _ = feab.build_split([src], k, {in_feid}, {"toy_5"}, dev_fraction=0.3, seed=1)
    assert again == out
    feab.write_split(tmp_path / "split.csv", out)
    back = feab.read_split(tmp_path / "split.csv", "all")
    assert [r["id"] for r in back] == [r["image_id"] for r in out]
    assert back[0]["truth_aus"] is None and back[0]["label_set"] == ["neutral", "happy"]


def test_quality_rows_use_only_labels_the_annotator_was_not_shown():
    truth = {
        "img1": {"truth_expression": "happy", "truth_valence": 0.5, "truth_arousal": 0.2, "source": "t"},
        "img2": {"truth_expression": "sad", "source": "t"},
        "img3": {"truth_expression": "sad", "source": "t"},
    }
    verdicts = [
        {
            "face_id": "img1_0",
            "accepted": True,
            "expression": "happy",
            "expression_source": "annotator",
            "valence": 0.4,
            "arousal": 0.1,
            "va_source": "annotator",
            "aus": ["AU12"],
            "au_source": "annotator",
        },
        {
            "face_id": "img2_0",
            "accepted": False,
            "expression": "sad",
            "expression_source": "prior",
            "valence": 0.0,
            "arousal": 0.0,
            "va_source": "annotator",
            "aus": [],
            "au_source": "annotator",
        },
        {"face_id": "img3_0", "accepted": True, "expression": "sad", "expression_source": "annotator"},
        {"face_id": "img3_1", "accepted": True, "expression": "sad", "expression_source": "annotator"},
    ]
    rows = feab.quality_rows(verdicts, truth)
    assert [r["id"] for r in rows] == ["img1_0", "img2_0"]  # img3 has two faces: skipped
    assert rows[1]["truth_expression"] is None  # its label was the prior it was shown
    m = feab.evaluate(rows, n_boot=0)
    assert m["expression"]["n"] == 1 and m["expression"]["accuracy"]["value"] == 1.0


@pytest.mark.e2e
@pytest.mark.skipif(not (SHARED / "london" / "labels.csv").exists(), reason="../shared/data not present")
def test_seke_bench_on_shared_data_matches_sklearn(tmp_path):
    """`seke split` + `seke bench` (local annotator) on a small subset of ../shared/data: the
    metrics, plots and report are written and the numbers match scikit-learn on the
    written predictions."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for s in params["bench"]["sources"]:
        s["labels"] = str((ROOT / s["labels"]).resolve())
    b = params["bench"]
    b.update(
        split=str(tmp_path / "split.csv"),
        metrics=str(tmp_path / "feab.json"),
        plots=str(tmp_path / "plots"),
        report=str(tmp_path / "feab.md"),
        work=str(tmp_path / "work"),
        limit=6,
        bootstrap=100,
    )
    params["runtime"]["cache"] = str(tmp_path / "cache")
    for key in ("ingest", "feid"):
        params["paths"][key] = str(ROOT / params["paths"][key])
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "flows.cli"]
    r = subprocess.run(cli + ["split", "--params", str(pfile)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        cli + ["bench", "--params", str(pfile)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((tmp_path / "feab.json").read_text())
    assert (tmp_path / "feab.md").read_text().startswith("# FEAB")
    for f in ("confusion.csv", "au_f1.csv", "va.csv"):
        assert (tmp_path / "plots" / f).exists()
    with (tmp_path / "plots" / "confusion.csv").open() as fh:
        pairs = [(x["actual"], x["predicted"]) for x in csv.DictReader(fh)]
    t, p = zip(*pairs)
    assert len(pairs) == m["expression"]["n"] == m["n"] > 0
    assert m["expression"]["accuracy"]["value"] == pytest.approx(accuracy_score(t, p), abs=1e-4)
    assert m["expression"]["macro_f1"]["value"] == pytest.approx(
        f1_score(t, p, labels=sorted(set(t)), average="macro", zero_division=0), abs=1e-4
    )
    assert set(m["per_source"]) == {"london", "muxspace", "namba"}
    assert m["meta"]["annotator"] == "local"
