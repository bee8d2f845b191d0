"""The dependency check itself: a stage that reads a file its deps omit is reported."""

from depcheck import uncovered


def test_a_removed_dep_is_reported_and_a_folder_dep_covers_its_files():
    stages = {"verify": {"deps": ["flows/stages.py", "tasks/method/evidence.py", "tasks/knowledge", "${paths.crop}/x"]}}
    read = {"verify": ["flows/stages.py", "tasks/method/evidence.py", "tasks/knowledge/va.yaml"]}
    assert uncovered(stages, read) == {}
    stages["verify"]["deps"].remove("tasks/method/evidence.py")
    assert uncovered(stages, read) == {"verify": ["tasks/method/evidence.py"]}


def test_a_dep_on_the_code_stamp_covers_the_code_stage_lists_and_nothing_else():
    stages = {
        "code": {"deps": ["flows/run.py", "tasks/core"], "outs": [{"data/code.json": {"cache": False}}]},
        "crop": {"deps": ["tasks/stages/crop.py", "data/code.json"]},
    }
    read = {"crop": ["tasks/stages/crop.py", "flows/run.py", "tasks/core/params.py"]}
    assert uncovered(stages, read) == {}
    read["crop"].append("tasks/infra/dask.py")
    assert uncovered(stages, read) == {"crop": ["tasks/infra/dask.py"]}
    stages["crop"]["deps"].remove("data/code.json")
    assert uncovered(stages, read) == {"crop": ["flows/run.py", "tasks/core/params.py", "tasks/infra/dask.py"]}


def test_the_code_stamp_changes_with_any_file_the_code_stage_lists(tmp_path):
    """Stage `code`'s command hashes every file of its deps (folders walked, __pycache__ left
    out, as .dvcignore does for DVC), so the stamp changes exactly when one of them does."""
    import json

    import yaml

    from tasks.core.dvcfile import STAMP, code_files, stage_names, write_stamp

    (tmp_path / "lib" / "__pycache__").mkdir(parents=True)
    (tmp_path / "lib" / "a.py").write_text("a = 1\n")
    (tmp_path / "b.py").write_text("b = 1\n")
    (tmp_path / "c.py").write_text("not listed\n")
    stages = {"code": {"cmd": "python -m flows.stamp", "deps": ["lib", "b.py"]}, "x": {"cmd": "python -m flows.run x"}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    assert stage_names(tmp_path / "dvc.yaml") == ["x"]
    assert code_files(tmp_path) == ["lib/a.py", "b.py"]
    write_stamp(tmp_path)
    first = (tmp_path / STAMP).read_text()
    assert set(json.loads(first)) == {"lib/a.py", "b.py"}
    (tmp_path / "lib" / "__pycache__" / "a.pyc").write_bytes(b"x")
    (tmp_path / "c.py").write_text("changed, but not listed\n")
    write_stamp(tmp_path)
    assert (tmp_path / STAMP).read_text() == first
    (tmp_path / "lib" / "a.py").write_text("a = 2\n")
    write_stamp(tmp_path)
    assert (tmp_path / STAMP).read_text() != first
