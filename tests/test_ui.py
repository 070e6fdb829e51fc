"""Progress when the output is not a terminal: plain lines, so a long stage piped into a log file shows where it is."""

from __future__ import annotations

import io
import subprocess
import sys

from rich.console import Console

from mirkit.ui import _Progress


def _bar(terminal: bool) -> tuple[_Progress, io.StringIO]:
    buf = io.StringIO()
    return _Progress(console=Console(file=buf, force_terminal=terminal, width=120)), buf


def test_plain_lines_at_each_tenth_when_not_a_terminal():
    bar, buf = _bar(terminal=False)
    with bar:
        task = bar.add_task("mels", total=40, info="")
        for i in range(40):
            bar.update(task, completed=i + 1, info=f"track {i}")
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("mels: ")]
    assert [ln.split()[1] for ln in lines] == ["1/40"] + [f"{4 * k}/40" for k in range(1, 11)]   # a line at the start
    assert "(50 %" in lines[5] and lines[5].endswith("track 19")


def test_plain_line_at_least_once_a_minute_between_tenths(monkeypatch):
    bar, buf = _bar(terminal=False)
    clock = iter([0.0, 1.0, 61.5, 62.0])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    with bar:
        task = bar.add_task("extract", total=1000, info="")
        for step in (1, 2, 3, 4):     # all within the first tenth: only the clock can trigger a line
            bar.update(task, completed=step)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("extract: ")]
    assert [ln.split()[1] for ln in lines] == ["1/1000", "3/1000"]


def test_no_plain_lines_on_a_terminal():
    bar, buf = _bar(terminal=True)
    with bar:
        task = bar.add_task("mels", total=10, info="")
        for i in range(10):
            bar.update(task, completed=i + 1)
    assert "mels: 5/10 (50 %" not in buf.getvalue()


def test_a_stage_run_into_a_pipe_prints_progress_lines(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mirkit", "synth", "--params", "none", "--set", "n_clips=24",
                          "--set", "min_seconds=2", "--set", "max_seconds=2", "--set", f"out={tmp_path / 'clips'}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "24/24 (100 %" in out.stderr, out.stderr
