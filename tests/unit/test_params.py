"""params.yaml is read once into typed, frozen sections."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tasks.core.params import Params, ParamsError, load

ROOT = Path(__file__).resolve().parents[2]


def test_the_projects_params_load():
    p = load(ROOT / "params.yaml")
    assert p.sample.k0 <= p.sample.kmax and p.annotator.backend in ("local", "openai")


def test_unknown_keys_are_errors(tmp_path):
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["verify"]["min_vote_shar"] = 0.5
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(ParamsError, match="min_vote_shar"):
        load(f)


def test_kmax_below_k0_is_an_error():
    with pytest.raises(ValidationError, match="kmax"):
        Params.model_validate({"paths": {"input": "x"}, "sample": {"k0": 5, "kmax": 3}})


def test_runtime_never_changes_the_data_hash():
    a = Params.model_validate({"paths": {"input": "x"}})
    b = Params.model_validate({"paths": {"input": "y"}, "runtime": {"concurrency": 64, "timeout_s": 5}})
    c = Params.model_validate({"paths": {"input": "x"}, "verify": {"min_vote_share": 0.9}})
    assert a.data_digest() == b.data_digest() != c.data_digest()


def test_dvc_stages_never_list_runtime_as_a_param():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, st in dvc["stages"].items():
        for p in st.get("params", []):
            assert not str(p).startswith("runtime"), f"stage {name} depends on throughput settings"


def test_no_secret_shaped_keys_in_params():
    text = (ROOT / "params.yaml").read_text().lower()
    for word in ("api_key", "secret", "password", "aws_access"):
        assert word not in text


def test_overrides_are_applied_and_checked_by_the_one_loader():
    p = load(ROOT / "params.yaml", ["sample.kmax=9", "verify.per_granularity=false"])
    assert p.sample.kmax == 9 and p.verify.per_granularity is False
    with pytest.raises(ParamsError, match="expected section.key=value"):
        load(ROOT / "params.yaml", ["sample.kmax"])
    with pytest.raises(ParamsError, match="kmax"):
        load(ROOT / "params.yaml", ["sample.kmax=banana"])


def test_a_checkout_too_deep_for_sqlite_gets_a_short_prefect_database(tmp_path, monkeypatch):
    """SQLite cannot open a file whose path passes 512 bytes; Prefect's database then moves
    to a short per-project folder (a fresh clone nested ten levels deep failed here)."""
    from flows import env

    deep = tmp_path.joinpath(*[f"level{i:02d}_" + "x" * 45 for i in range(10)], ".seke", "prefect")
    url = env._short_database_url(str(deep))
    assert url is not None and url.startswith("sqlite+aiosqlite:///") and len(url) < 450
    assert url == env._short_database_url(str(deep))  # the same project keeps its database
    assert env._short_database_url(str(tmp_path / ".seke" / "prefect")) is None
    assert env._short_home(str(deep.parent / "dvc-site"), "dvc-site") is not None
