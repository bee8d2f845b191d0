"""Progress: the one mechanism every stage and CLI command uses to say how far it is.

`Progress(name, total)` shows done/total, rate and ETA, plus any numbers the caller adds (the
sample stage adds the cost so far, cache hits and errors):

- on a terminal (stderr is a TTY), one live rich bar;
- elsewhere (logs, CI, `dvc repro` into a file), a plain line at most every `every_s`
  seconds, and one at the end;
- inside a Prefect flow run, the same numbers as a progress artifact (`<name>-progress`),
  updated at the same pace, and the plain lines go to the run's logger.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

EVERY_S = 5.0


def _fmt(extra: dict[str, Any]) -> str:
    parts = []
    for k, v in extra.items():
        if k == "cost_usd":
            parts.append(f"cost ${v:.4f}")
        else:
            parts.append(f"{k.replace('_', ' ')} {v}")
    return ", ".join(parts)


def _run_logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # not in a flow run (or Prefect not imported): plain stderr lines
        return None


class Progress:
    def __init__(self, name: str, total: int | None, unit: str = "faces", every_s: float = EVERY_S, live=None):
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.done, self.extra = 0, {}
        self.t0 = self.last = time.monotonic()
        self.logger = _run_logger()
        self.artifact = self._artifact()
        self.bar = self.task = None
        if live if live is not None else sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(name, total=total, rate="", extra="")

    # -- the numbers ---------------------------------------------------------------
    def rate(self) -> float:
        el = time.monotonic() - self.t0
        return self.done / el if el > 0 else 0.0

    def eta(self) -> float | None:
        r = self.rate()
        return (self.total - self.done) / r if self.total is not None and r > 0 else None

    def line(self, final: bool = False) -> str:
        if final and not self.done and not self.total and not self.extra:  # a phase with nothing to count
            return f"{self.name}: done in {time.monotonic() - self.t0:.1f} s"
        tot = f"/{self.total}" if self.total is not None else ""
        eta = self.eta()
        unit = f" {self.unit}" if self.unit else ""
        s = f"{self.name}: {'done, ' if final else ''}{self.done}{tot}{unit}, {self.rate():.1f}/s"
        if eta is not None and not final:
            s += f", ETA {eta:.0f} s"
        return s + (f", {_fmt(self.extra)}" if self.extra else "")

    # -- updates ---------------------------------------------------------------------
    def rename(self, name: str) -> None:
        self.name = name
        if self.bar is not None:
            self.bar.update(self.task, description=name)

    def update(self, done: int | None = None, advance: int = 0, total: int | None = None, **extra: Any) -> None:
        """Set `done` (or add `advance`), optionally a new `total`, and any extra numbers."""
        self.done = done if done is not None else self.done + advance
        if total is not None:
            self.total = total
        self.extra.update(extra)
        if self.bar is not None:
            self.bar.update(
                self.task,
                completed=self.done,
                total=self.total,
                rate=f"{self.rate():.1f}{' ' + self.unit if self.unit else ''}/s",
                extra=_fmt(self.extra),
            )
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._emit()

    def _emit(self, final: bool = False) -> None:
        # a live bar says it all on the terminal; a flow run's log still gets the last line
        if self.bar is None or (final and self.logger is not None):
            if self.logger is not None:
                self.logger.info(self.line(final))
            else:
                print(self.line(final), file=sys.stderr, flush=True)
        if self.artifact is not None:
            self._update_artifact()

    def _artifact(self):
        if self.logger is None:
            return None
        try:
            from prefect.artifacts import create_progress_artifact

            key = re.sub(r"[^a-z0-9-]+", "-", f"{self.name}-progress".lower()).strip("-")
            return create_progress_artifact(progress=0.0, key=key, description=self.line())
        except Exception:  # the artifact is a view; never let it stop a stage
            return None

    def _update_artifact(self) -> None:
        try:
            from prefect.artifacts import update_progress_artifact

            pct = 100.0 * self.done / self.total if self.total else 0.0
            update_progress_artifact(self.artifact, progress=min(pct, 100.0), description=self.line())
        except Exception:
            self.artifact = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, total=self.total)
            self.bar.stop()
        if self.total is None:
            self.total = self.done
        self._emit(final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    items: Iterable[T], name: str, total: int | None, unit: str = "faces", every_s: float = EVERY_S
) -> Iterator[T]:
    """`items`, one by one, with a `Progress` that counts them."""
    with Progress(name, total, unit, every_s) as pr:
        for x in items:
            yield x
            pr.update(advance=1)
