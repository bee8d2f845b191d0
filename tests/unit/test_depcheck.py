"""The dependency check itself: a stage that reads a file its deps omit is reported."""

from depcheck import uncovered


def test_a_removed_dep_is_reported_and_a_folder_dep_covers_its_files():
    stages = {"verify": {"deps": ["flows/stages.py", "tasks/method/evidence.py", "tasks/knowledge", "${paths.crop}/x"]}}
    read = {"verify": ["flows/stages.py", "tasks/method/evidence.py", "tasks/knowledge/va.yaml"]}
    assert uncovered(stages, read) == {}
    stages["verify"]["deps"].remove("tasks/method/evidence.py")
    assert uncovered(stages, read) == {"verify": ["tasks/method/evidence.py"]}
