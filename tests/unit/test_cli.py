"""`seke` smoke tests: --help for every command (found from the app, so new commands are
covered without editing this file), examples in every help, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from flows.cli.common import load_params
from flows.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def flat(text: str) -> str:
    """Output with rich's line wrapping undone: tests must not depend on the terminal's width."""
    return " ".join(text.split())


def _commands(group=None, prefix=()):
    group = group or get_command(app)
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))


COMMANDS = sorted(_commands())


def test_expected_commands_exist():
    names = {c[0] for c in COMMANDS}
    assert {"run", "bench", "split", "quality", "compare", "export"} <= names


def test_top_level_help():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "FEID" in flat(r.output)


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_of_every_command_has_examples(cmd):
    r = runner.invoke(app, [*cmd, "--help"], terminal_width=120)
    assert r.exit_code == 0, r.output
    assert "Usage" in flat(r.output) and "Examples" in flat(r.output) and f"seke {' '.join(cmd)}" in flat(r.output)
    assert "<bool>" not in r.output and "<list[" not in r.output and "<int>" not in r.output  # Click's forms


def test_console_script_runs():
    exe = Path(sys.executable).with_name("seke")
    if not exe.exists():
        pytest.skip("seke console script not installed (pip install -e .)")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compare" in r.stdout


def test_run_builds_the_dvc_command():
    # a narrow terminal must not wrap the printed command, wherever the checkout (and dvc) lives
    r = runner.invoke(app, ["run", "--dry", "-S", "verify.min_vote_share=0.7", "-n", "strict"], terminal_width=40)
    assert r.exit_code == 0, r.output
    line = next(x for x in flat(r.output).splitlines() if x.startswith("$ "))
    assert line.endswith(" exp run -S verify.min_vote_share=0.7 -n strict") and len(line) > 40
    r = runner.invoke(app, ["run", "--dry", "export", "--force"], terminal_width=40)
    assert any(x.startswith("$ ") and x.endswith(" repro --force export") for x in flat(r.output).splitlines())


def test_param_overrides_and_clear_errors(tmp_path):
    p = load_params(str(ROOT / "params.yaml"), ["verify.min_vote_share=0.9", "bench.limit=3"])
    assert p.verify.min_vote_share == 0.9 and p.bench.limit == 3
    r = runner.invoke(app, ["split", "--params", str(ROOT / "params.yaml"), "-S", "verify.min_vote_share=7"])
    assert r.exit_code == 1 and "verify.min_vote_share" in flat(r.output)
    r = runner.invoke(app, ["split", "--params", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 1 and "not found" in flat(r.output)
    r = runner.invoke(app, ["compare", "no-such-version-xyz", "HEAD", "--repo", str(ROOT)])
    assert r.exit_code == 1 and "not a git revision" in flat(r.output)
    r = runner.invoke(app, ["bench", "--params", str(ROOT / "params.yaml"), "-S", f"bench.split={tmp_path}/x.csv"])
    assert r.exit_code == 1 and "seke split" in flat(r.output)


def test_version_and_real_choices():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and flat(r.output).startswith("seke ")
    r = runner.invoke(app, ["export", "--format", "parquet"])
    assert r.exit_code != 0 and "parquet" in flat(r.output) and "hf" in flat(r.output)
    r = runner.invoke(app, ["bench", "--backend", "gemini"])
    assert r.exit_code != 0 and "local" in flat(r.output) and "openai" in flat(r.output)
    from flows.cli.common import Backend
    from flows.cli.publish import Format
    from tasks.core import backends
    from tasks.tools.publish import FORMATS

    assert [f.value for f in Format] == list(FORMATS)  # the choices are the formats that exist
    assert [b.value for b in Backend] == backends.names()  # ... and the backends of the one table
