"""Run the real ``mirkit`` Typer app in-process, with output rewrapped to one line for matching."""

from __future__ import annotations

from typer.testing import CliRunner

from mirkit.cli import app


def invoke(*args: str):
    """``mirkit ARGS``; ``.text`` is the output on one line (rich wraps long messages)."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})
    result.text = " ".join(result.output.split())
    return result
