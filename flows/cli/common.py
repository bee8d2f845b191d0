"""What every `seke` command shares: the Typer app, consoles, params with `-S` overrides,
errors, progress bars and running DVC."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from flows import env
from tasks.core import backends


def _metavar(self, ctx) -> str | None:
    """Help's type column in Click's own forms: nothing for a flag, TEXT / INTEGER / FLOAT /
    PATH or [a|b] for a value, `...` for several. (Typer 0.29 prints `<bool>` for every flag,
    `--help` too, and `<list[str]>` for repeatable options.)"""
    if self.metavar is not None:
        return self.metavar
    if getattr(self, "is_flag", False):
        return None
    label = self.display_type(ctx).strip("<>")
    label = label[5:-1] if label.startswith("list[") else label
    if "|" in label:
        name = f"[{label}]"
    else:
        name = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH"}.get(label, label.upper())
    return name + ("..." if self.nargs != 1 else "")


typer.core.TyperOption.display_type_rich = _metavar
typer.core.TyperArgument.display_type_rich = _metavar

app = typer.Typer(
    name="seke",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    help="Build, benchmark, compare and export FEID, the facial-emotion instruction dataset.\n\n"
    "Run from the project root. Every command takes [bold]--params[/] (default params.yaml).",
)
console = Console(stderr=True)
out = Console()


Backend = Enum("Backend", {n: n for n in backends.names()}, type=str)  # the annotator backends (tasks/core/backends.py)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("seke")
        except PackageNotFoundError:  # a checkout that was not pip-installed
            v = "unknown (not installed)"
        out.print(f"seke {v}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: bool = typer.Option(
        False, "--version", help="print the version and exit", callback=_version, is_eager=True
    ),
) -> None:
    """Build, benchmark, compare and export FEID, the facial-emotion instruction dataset."""


PARAMS = typer.Option("params.yaml", "--params", "-p", help="params file", show_default=True)
SET = typer.Option(None, "--set", "-S", help="override a param for this command: -S section.key=value (repeatable)")


# ---------------------------------------------------------------- helpers
class Fail(typer.Exit):
    def __init__(self, msg: str, code: int = 1):
        console.print(f"[bold red]error:[/] {msg}")
        super().__init__(code)


def load_params(path: str, overrides: Optional[List[str]] = None):
    """params.yaml with `-S a.b=c` overrides applied, validated (`tasks.core.params.load`)."""
    from tasks.core.params import ParamsError, load

    try:
        return load(path, overrides)
    except ParamsError as ex:
        raise Fail(str(ex)) from None


@contextmanager
def progress(description: str, total: int | None = None, every_s: float = 10.0) -> Iterator:
    """Progress on stderr (`tasks.infra.progress`, the stages' mechanism), yielding
    update(done, total, desc): a live bar on a terminal, else a plain line at most every
    `every_s` seconds (logs, CI)."""
    from tasks.infra.progress import Progress

    with Progress(description, total, unit="", every_s=every_s, live=console.is_terminal) as pr:

        def update(done: int, tot: int | None = None, desc: str | None = None):
            if desc:
                pr.rename(desc)
            pr.update(done, total=tot)

        yield update


def _tool_env() -> dict:
    """DVC stage commands call `python`: put this interpreter's bin first; DVC/Prefect quiet and local."""
    from flows import env

    env.apply()
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("DVC_NO_ANALYTICS", "1")
    return e


def _dvc_exe() -> str:
    return env.tool("dvc")


def _table(title: str, rows: list[tuple], headers: tuple[str, ...]) -> Table:
    t = Table(title=title, title_justify="left")
    for h in headers:
        t.add_column(h)
    for r in rows:
        t.add_row(*[("" if x is None else str(x)) for x in r])
    return t


def _fmt(v: dict | None) -> str:
    if not v or v.get("value") is None:
        return "n/a"
    return f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" if v.get("lo") is not None else f"{v['value']:.3f}"
