"""Shared rich/Typer conventions: one console, progress bars, summary tables, resolved params."""

from __future__ import annotations

import json
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


def progress(transient: bool = False) -> Progress:
    """The progress bar every long stage uses (disabled automatically when not a terminal)."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
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
