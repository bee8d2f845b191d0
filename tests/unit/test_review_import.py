"""`seke review import` refuses rather than guesses: hostile Label Studio exports each end as
report rows with a reason, and nothing non-finite or out of range reaches the labels file."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tasks.tools import review as R


def _va(v, a) -> list[dict]:
    return [
        R._choice("expression", ["happy"]),
        {"from_name": "valence", "type": "number", "value": {"number": v}},
        {"from_name": "arousal", "type": "number", "value": {"number": a}},
    ]


def _task(path: str, result, updated: str = "2026-12-01T10:00:00Z") -> dict:
    return {
        "data": {"path": path},
        "annotations": [{"id": 1, "completed_by": 3, "updated_at": updated, "result": result}],
    }


HOSTILE = [
    ("nan.jpg", _va("NaN", 0.1), "valence: 'NaN' is not a finite number in [-1, 1]"),
    ("inf.jpg", _va(0.1, "inf"), "arousal: 'inf' is not a finite number in [-1, 1]"),
    ("big.jpg", _va(1e9, 0.1), "valence: 1000000000.0 is not a finite number in [-1, 1]"),
    ("neg.jpg", _va(0.1, -1e9), "arousal: -1000000000.0 is not a finite number in [-1, 1]"),
    ("word.jpg", _va("high", 0.1), "valence: 'high' is not a number"),
    ("label.jpg", [R._choice("expression", ["bored"])], "expression: 'bored' is not a known label"),
    ("two.jpg", [R._choice("expression", ["happy", "sad"])], "expression: 2 choices"),
    ("au.jpg", [R._choice("aus", ["AU12", "AU99x"])], "aus: unknown AU name(s) ['AU99x']"),
    ("huge.jpg", [R._choice("expression", ["x" * 20_000_000])], "expression: 'xxxxx"),
]


def test_hostile_tasks_are_rejected_one_by_one_and_the_rest_imported(tmp_path):
    tasks = [_task(p, r) for p, r, _ in HOSTILE] + [_task("ok.jpg", _va(0.5, -0.25))]
    export, dest = tmp_path / "export.json", tmp_path / "review" / "labels.csv"
    export.write_text(json.dumps(tasks))
    n = R.import_labels(export, dest)
    assert n["imported"] == 1 and sum(n["rejected"].values()) == len(HOSTILE)
    report = {r["path"]: r for r in csv.DictReader(open(n["report"]))}
    assert n["report"] == str(dest.parent / "import_report.csv") and len(report) == len(tasks)
    for path, _, reason in HOSTILE:
        assert report[path]["status"] == "rejected" and reason in report[path]["reason"], report[path]
        assert len(report[path]["reason"]) < 200  # echoed values are cut short (the 20 MB label too)
    rows = list(csv.DictReader(open(dest)))
    assert [r["path"] for r in rows] == ["ok.jpg"]
    for r in rows:
        for c in ("valence", "arousal"):
            assert math.isfinite(float(r[c])) and -1 <= float(r[c]) <= 1


def test_a_path_exported_twice_keeps_the_newest_and_reports_the_conflict(tmp_path):
    tasks = [
        _task("a.jpg", [R._choice("expression", ["sad"])], updated="2026-12-03T09:00:00Z"),
        _task("a.jpg", [R._choice("expression", ["happy"])], updated="2026-12-01T09:00:00Z"),  # older, later in file
    ]
    export, dest = tmp_path / "export.json", tmp_path / "labels.csv"
    export.write_text(json.dumps(tasks))
    n = R.import_labels(export, dest)
    assert n["conflicts"] == 1
    assert [r["expression"] for r in csv.DictReader(open(dest))] == ["sad"]


@pytest.mark.parametrize(
    "content,needle",
    [
        ({}, "got dict"),
        ({"tasks": [1]}, "got dict with keys ['tasks']"),
        (["hello"], "task 1 is 'hello'"),
        ([{"data": {}}], "task 1 is"),
        ("just a string", "got str"),
    ],
)
def test_wrong_shapes_get_one_line(tmp_path, content, needle):
    export = tmp_path / "export.json"
    export.write_text(json.dumps(content))
    with pytest.raises(ValueError) as e:
        R.import_labels(export, tmp_path / "labels.csv")
    msg = str(e.value)
    assert needle in msg and "expected a Label Studio JSON export" in msg and "\n" not in msg
    assert not (tmp_path / "labels.csv").exists()
