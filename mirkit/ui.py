"""Shared rich/Typer conventions: one console, progress bars, summary tables, resolved params."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mirkit.params import parse_override

console = Console(stderr=True)   # logs and tables go to stderr; stdout stays clean for piping
out_console = Console()


class _Progress(Progress):
    """A rich progress bar that, when stderr is not a terminal (a log file, a CI job, ``dvc repro`` piped), also
    prints a plain line per task at every tenth of the way and at least once a minute, so a long run into a log
    file shows where it is instead of printing nothing until the end."""

    PLAIN_EVERY_S = 60.0

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._plain = not self.console.is_terminal
        self._last: dict[Any, tuple[int, float]] = {}

    def update(self, task_id: Any, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        if self._plain:
            self._plain_line(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self._plain:
            self._plain_line(task_id)

    def _plain_line(self, task_id: Any) -> None:
        task = self._tasks[task_id]
        if not task.total:
            return
        tenth = int(10 * min(task.completed, task.total) / task.total)
        now = time.monotonic()
        last_tenth, last_time = self._last.get(task_id, (-1, now))
        if tenth > last_tenth or now - last_time >= self.PLAIN_EVERY_S:
            self._last[task_id] = (tenth, now)
            info = str(task.fields.get("info", "") or "")
            elapsed = task.elapsed or 0.0
            self.console.print(f"{task.description}: {task.completed:g}/{task.total:g} "
                               f"({100 * task.completed / task.total:.0f} %, {elapsed:.0f} s){' ' + info if info else ''}",
                               markup=False, highlight=False, soft_wrap=True)


def progress(transient: bool = False) -> Progress:
    """The progress bar every long stage uses; when not a terminal it prints plain progress lines instead."""
    return _Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                     TimeRemainingColumn(), console=console, transient=transient)


def table(title: str, columns: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> Table:
    """A summary table; ``columns=None`` gives a two-column key/value table without a header."""
    t = Table(title=title, title_justify="left", show_header=columns is not None)
    for c in columns if columns is not None else ("", ""):
        t.add_column(str(c))
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    return t


def print_params(stage: str, params: Any) -> None:
    """Show the resolved parameters of a stage (they are also written beside its outputs)."""
    import dataclasses
    is_instance = dataclasses.is_dataclass(params) and not isinstance(params, type)
    data = dataclasses.asdict(params) if is_instance else dict(params)
    console.print(f"[dim]{stage} parameters: {json.dumps(data, default=str)}[/dim]")


def overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` options into a dict (values parsed as YAML; see :func:`mirkit.params.apply_overrides`)."""
    return dict(parse_override(p) for p in pairs or [])
