"""``mirkit benchmark-manifest``: a manifest for GTZAN, GiantSteps, MTT or EmoMusic from a local copy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from mirkit import ui
from mirkit.errors import InputError
from mirkit.eval.benchmarks import BENCHMARKS, LABEL_COLUMNS, build_manifest, write_manifest


def register(app: typer.Typer) -> None:
    @app.command("benchmark-manifest")
    def benchmark_manifest(
        name: str = typer.Argument(..., help=f"benchmark: {', '.join(BENCHMARKS)}"),
        audio_dir: Path = typer.Option(..., "--audio-dir", help="folder holding your copy of the dataset's audio"),
        out: Path = typer.Option(Path("manifest.csv"), "--out", help="manifest CSV to write"),
    ) -> None:
        """Build a manifest (path, split, labels, clip offset/duration) from the shipped JukeMIR splits."""
        if name not in BENCHMARKS:
            raise InputError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHMARKS)})")
        if not audio_dir.is_dir():
            raise InputError(f"--audio-dir {audio_dir}: not a folder")
        build = build_manifest(name, audio_dir)
        if build.missing:
            first = ", ".join(build.missing[:5])
            ui.console.print(f"[yellow]{len(build.missing)} of {build.total} {name} entries have no audio "
                             f"under {audio_dir}[/yellow] (first: {first})")
        if not build.rows:
            raise InputError(f"--audio-dir {audio_dir}: no {name} audio found there")
        write_manifest(build.rows, out)
        splits = Counter(r["split"] for r in build.rows)
        ui.console.print(ui.table(f"benchmark-manifest {name} -> {out}", ["split", "tracks"],
                                  [(s, splits[s]) for s in ("train", "valid", "test")] +
                                  [("labels", ", ".join(LABEL_COLUMNS[name])), ("missing", len(build.missing))]))
