"""``mirkit benchmark check|run``: a standard benchmark (GTZAN, GiantSteps, MTT, EmoMusic) in one command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from mirkit import ui
from mirkit.errors import InputError, MirkitError
from mirkit.eval.benchmarks import BENCHMARKS

RUN_HELP = """Run a standard probe benchmark on your copy of the dataset with several models; write one leaderboard.

1. checks the copy in --audio against the shipped JukeMIR split lists (missing / extra / unreadable files,
durations; a partial copy runs on what is there and every output says so);
2. writes <out>/manifest.csv;
3. extracts every model, every layer (cached under <cache>/<benchmark>/<model>-<hash>: a rerun, or a run with
other models, reuses them; a changed audio file is re-embedded);
4. probes each layer with the benchmark's standard task (gtzan: genre accuracy; giantsteps: key weighted score
per song; mtt: tag ROC-AUC; emomusic: arousal/valence R²) and picks the layer on the validation split;
5. writes <out>/leaderboard.{md,json,png}: test scores with 95 % bootstrap intervals and the paired difference
of each model to the leader.

--models: comma-separated model folders (trained with mirkit or imported), each as PATH, NAME=PATH, or
random:PATH (the same architecture, randomly initialised: the baseline).

Example: mirkit benchmark run gtzan --audio ~/data/gtzan --models mine=models/pretrain,random:models/pretrain
"""

CHECK_HELP = """Check your copy of a benchmark dataset against the shipped split lists, without running anything.

Counts per split what was found and what is missing, the extra audio files no entry names, undecodable
files and files whose duration does not fit the metadata. Exit code 2 when nothing usable is found.

Example: mirkit benchmark check giantsteps --audio ~/data/giantsteps
"""


def _name(name: str) -> str:
    if name not in BENCHMARKS:
        raise InputError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHMARKS)})")
    return name


def _check_table(check):
    rows = [(s, check.expected[s], check.found[s], len(check.missing[s]), check.usable[s]) for s in check.expected]
    return ui.table(f"benchmark check {check.name} <- {check.audio_dir}",
                    ["split", "expected", "found", "missing", "usable"], rows)


def _print_problems(check) -> None:
    notes = [("extra files (named by no entry)", len(check.extra), ", ".join(check.extra[:3])),
             ("unused (entries outside the splits)", len(check.unused), ""),
             ("unreadable (dropped)", len(check.unreadable),
              "; ".join(f"{f}: {r}" for f, r in check.unreadable[:3])),
             ("clip past the end of its file (dropped)", len(check.beyond_end),
              ", ".join(f"{u} at {o:g} s of {d:g} s" for u, o, d in check.beyond_end[:3])),
             ("shorter than the metadata (kept)", len(check.short),
              ", ".join(f"{u}: {d:g} s < {n:g} s" for u, d, n in check.short[:3])),
             ("longer than the metadata (kept)", len(check.long),
              ", ".join(f"{u}: {d:g} s > {n:g} s" for u, d, n in check.long[:3]))]
    shown = [(what, n, ex) for what, n, ex in notes if n]
    if shown:
        ui.console.print(ui.table("copy: files to look at", ["what", "count", "first"], shown))
    style = "green" if check.complete else "yellow"
    ui.console.print(f"[{style}]{check.summary()}[/{style}]", highlight=False)


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Standard probe benchmarks (GTZAN, GiantSteps, MTT, EmoMusic): check a copy, run "
                             "models, write a leaderboard.", no_args_is_help=True)

    @bench.command("check", help=CHECK_HELP)
    def check_cmd(name: str = typer.Argument(..., help=f"benchmark: {', '.join(BENCHMARKS)}"),
                  audio: Path = typer.Option(..., "--audio", help="folder holding your copy of the audio")) -> None:
        from mirkit.eval.benchmark_check import check_copy
        _name(name)
        if not audio.is_dir():
            raise InputError(f"--audio {audio}: not a folder")
        check = check_copy(name, audio)
        ui.console.print(_check_table(check))
        _print_problems(check)
        if not check.rows:
            raise InputError(f"--audio {audio}: no usable {name} audio found there")

    @bench.command("run", help=RUN_HELP)
    def run_cmd(name: str = typer.Argument(..., help=f"benchmark: {', '.join(BENCHMARKS)}"),
                audio: Path = typer.Option(..., "--audio", help="folder holding your copy of the audio"),
                models: str = typer.Option(..., "--models", help="comma-separated model folders: PATH, NAME=PATH "
                                                                 "or random:PATH"),
                out: str = typer.Option("", "--out", help="output folder (default results/benchmarks/NAME)"),
                cache: str = typer.Option("", "--cache", help="embeddings cache, shareable between outputs "
                                                              "(default OUT/embeddings)"),
                protocol: str = typer.Option("jukemir", "--protocol", help="jukemir: the 216-configuration "
                                             "JukeMIR grid (the published protocol); linear: seconds; quick"),
                layers: str = typer.Option("all", "--layers", help="all: every layer, chosen on valid; last"),
                n_boot: int = typer.Option(1000, "--bootstrap", help="bootstrap resamples of the test set"),
                seed: int = typer.Option(0, "--seed", help="seed of probes, random-init baselines and resamples"),
                device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
                batch_size: int = typer.Option(32, "--batch-size", help="windows per forward pass"),
                threads: int = typer.Option(1, "--threads", help="torch CPU threads (0 = torch's default)")) -> None:
        from mirkit.eval import leaderboard
        from mirkit.eval.benchmark_run import BenchmarkParams, parse_models, run_benchmark
        p = BenchmarkParams(_name(name), str(audio), parse_models(models), out, cache, protocol, layers, n_boot,
                            seed, device, batch_size, threads)
        with ui.progress() as bar:
            jobs: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int, info: str) -> None:
                if phase not in jobs:
                    jobs[phase] = bar.add_task(phase, total=total, info="")
                bar.update(jobs[phase], completed=done, total=total, info=info[-40:])

            result = run_benchmark(p, progress)
        ui.console.print(_check_table(result.check))
        _print_problems(result.check)
        board = leaderboard.build(result)
        command = "mirkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        paths = leaderboard.write(board, p.out, command)
        rows = []
        for r in board["models"]:
            vs = r.get("vs_leader")
            rows.append((r["rank"], r["name"], r["layer"], f"{r['test']:.4f}" if r["test"] is not None else "-",
                         f"[{r['low']:.3f}, {r['high']:.3f}]" if r["low"] is not None else "-",
                         "leader" if vs is None else
                         f"{vs['difference']:+.3f} [{vs['low']:+.3f}, {vs['high']:+.3f}]"
                         + (" clear" if vs["clear"] else "")))
        rows += [("-", f["name"], "-", "failed", f["error"][:60], "") for f in board["failed"]]
        ui.out_console.print(ui.table(f"{board['title']}: {board['metric']} ({p.protocol}) -> {paths['md']}",
                                      ["rank", "model", "layer", "test", "95 % CI", "vs leader"], rows))
        if not board["complete"]:
            ui.console.print(f"[yellow]{board['note']}[/yellow]", highlight=False)
        if board["failed"]:
            raise MirkitError(f"{len(board['failed'])} model(s) failed: "
                              + "; ".join(f"{f['name']}: {f['error']}" for f in board["failed"]))

    app.add_typer(bench, name="benchmark")
