"""``mirkit probe``: parse params, run the probe stage (``mirkit.eval.probe_stage``), print its tables."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from mirkit import ui
from mirkit.errors import InputError, MirkitError
from mirkit.eval.bootstrap import Interval
from mirkit.eval.probe_stage import ProbeParams, ProbeReport, open_stores, run, task_keys, verdict_line, write_outputs
from mirkit.eval.tasks import TaskSpec, make_task, parse_tasks
from mirkit.params import load

__all__ = ["ProbeParams", "register"]


class Reporter:
    """Progress of one probe job: a rich bar on a terminal, else a plain line at most every
    ``every`` seconds (what a DVC log shows): configurations done / total and the current step."""

    def __init__(self, bar: Any, name: str, total: int, plain: bool, every: float = 5.0) -> None:
        self.bar, self.name, self.total, self.plain, self.every = bar, name, total, plain, every
        self.start = self.last = time.monotonic()
        self.job = None if plain else bar.add_task(name, total=total, info="")
        if plain:
            ui.console.print(f"{name}: started ({total} configuration{'s' * (total != 1)})", highlight=False)

    def __call__(self, done: int, step: int) -> None:
        if not self.plain:
            self.bar.update(self.job, completed=done, info=f"step {step}")
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            ui.console.print(f"{self.name}: {done}/{self.total} configurations done, step {step}, "
                             f"{now - self.start:.0f} s", highlight=False)

    def close(self, outcome: str) -> None:
        if self.plain:
            ui.console.print(f"{self.name}: {outcome} in {time.monotonic() - self.start:.1f} s", highlight=False)
        else:
            self.bar.update(self.job, completed=self.total, info=outcome)


def _cell(metrics: dict[str, Any], primary: str, details: dict[str, Any] | None) -> str:
    """``0.747 ± 0.040 (L4)``: the test score, half the 95 % interval, the chosen layer."""
    v = metrics.get(primary)
    if v is None:
        return "-"
    lo, hi = metrics.get(f"{primary}_low"), metrics.get(f"{primary}_high")
    text = Interval(v, lo, hi).show() if lo is not None and hi is not None else f"{v:.3f}"
    if f"{primary}_sd" in metrics:
        text += f" (sd {metrics[f'{primary}_sd']:.3f})"
    layers = (details or {}).get("layers", {})
    if layers.get("mode") == "weighted":
        text += " (weighted)"
    elif "layer" in metrics:
        text += f" (L{metrics['layer']})"
    return text


def comparison_table(metrics: dict, specs: dict[str, TaskSpec], params: ProbeParams, details: dict | None = None):
    """One row per task, one column per run: the primary test score ± half its 95 % interval, the chosen
    layer; the best run in bold."""
    runs = list(metrics)
    setup = params.setup()
    rows = []
    for name, spec in specs.items():
        primary = make_task(spec).primary
        for key, _ in task_keys(name, spec, setup.fusions):
            values = {r: metrics[r].get(key, {}) for r in runs}
            best = max((v[primary] for v in values.values() if primary in v), default=None)
            shown = f"{primary} per {spec.group}" if spec.group else primary
            cells = []
            for r, v in values.items():
                cell = _cell(v, primary, ((details or {}).get(r) or {}).get(key))
                cells.append(f"[bold]{cell}[/bold]" if len(runs) > 1 and v.get(primary) == best else cell)
            rows.append([key, shown] + cells)
    fusion = "" if params.fusion == "both" else f", {params.fusion} fusion"
    return ui.table(f"probe results ({params.protocol} protocol{fusion}, test split, ± half the 95 % bootstrap "
                    f"interval, (L) chosen layer) -> {params.out}", ["task", "metric"] + runs, rows)


def print_verdicts(verdicts: dict, primary: dict[str, str]) -> None:
    for key, by_run in verdicts.items():
        for run_name, entry in by_run.items():
            colour = "green" if entry["verdict"] == "better" else "red" if entry["verdict"] == "worse" else "yellow"
            ui.out_console.print(f"[{colour}]{verdict_line(key, run_name, entry, primary.get(key, ''))}[/{colour}]",
                                 highlight=False)


HELP = """Train probes on frozen embeddings and score them on the test split.

Each run in `probe.runs` is an embeddings store (from `mirkit extract`); each task in `probe.tasks` names a
type (multiclass, multilabel, regression, key, beats, chords) and a manifest label column. Protocol `linear`
(default) fits standardised L2-regularised softmax / logistic / ridge probes full-batch for a grid of strengths
and keeps the one best on the validation split (seconds); `quick` trains one JukeMIR configuration with Adam and
early stopping; `jukemir` trains the 216-configuration JukeMIR grid batched and picks the best on validation.
The test split is scored once, with the chosen probe. See docs/probes.md. Chunk outputs are averaged per track. A multiclass or
key task with `group: <column>` (e.g. GiantSteps: `{type: key, label: key, group: song}`) also ensembles the
clips of each song (vote, max, gmean, mean; JukeMIR) and reports the strategy best on validation.
Beat and chord annotations are text/.lab files or JAMS.
Writes metrics JSON (`dvc metrics show`), details JSON and a bar plot comparing runs.

Example: mirkit probe --set protocol=jukemir --set 'runs:={mine: data/embeddings/mine.zarr}'
"""


def register(app: typer.Typer) -> None:
    @app.command("probe", help=HELP)
    def probe(params_file: Path | None = typer.Option(None, "--params", help="params file (default params.yaml)"),
              set_: list[str] | None = typer.Option(None, "--set", help="override one value: KEY=VALUE, KEY.SUB=VALUE or SECTION.KEY=VALUE; mappings merge (KEY:=VALUE replaces)"),
              show: bool = typer.Option(False, "--show", help="only print the table of the last results (`out`)")) -> None:
        params = load(ProbeParams, "probe", params_file, ui.overrides(set_))
        specs = parse_tasks(params.tasks)
        out = Path(params.out)
        if show:
            if not out.is_file():
                raise InputError(f"{params.out}: no probe results yet (run `mirkit probe`)")
            details_file = out.with_name(out.stem + ".details.json")
            saved = json.loads(details_file.read_text()) if details_file.is_file() else {}
            ui.out_console.print(comparison_table(json.loads(out.read_text()), specs, params, saved.get("runs")))
            primary = {k: p for n, s in specs.items() for k, _ in task_keys(n, s, params.setup().fusions)
                       for p in [make_task(s).primary]}
            print_verdicts(saved.get("comparisons", {}), primary)
            return
        stores = open_stores(params, specs)   # a bad store or label column fails before any work
        ui.print_params("probe", params)
        plain = not ui.console.is_terminal
        with ui.progress() as bar:
            report = run(params, stores, lambda name, total: Reporter(bar, name, total, plain),
                         lambda job, why: ui.console.print(f"[red]{job} failed:[/red] {why}"))
        write_outputs(report, params)
        print_summary(report, params, specs)
        if report.failed:   # the other tasks' results are written above; the stage itself did not succeed
            raise MirkitError(f"{len(report.failed)} probe task(s) failed: {', '.join(report.failed)} "
                              f"(reasons above and in {out.stem}.details.json)")


def print_summary(report: ProbeReport, params: ProbeParams, specs: dict[str, TaskSpec]) -> None:
    rows = []
    for run_name, tasks in report.metrics.items():
        for key, values in tasks.items():
            d = report.details[run_name][key]
            shown = {k: v for k, v in values.items() if not k.endswith(("_low", "_high")) and "delta_vs" not in k}
            rows.append((run_name, key, ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in shown.items()),
                         d.get("config", {}).get("hidden", ""), d.get("ensemble", {}).get("strategy", "")))
    ui.console.print(ui.table(f"probe ({params.protocol}): all test metrics",
                              ["run", "task", "test metrics", "hidden", "ensemble"], rows))
    ui.out_console.print(comparison_table(report.metrics, specs, params, report.details))
    print_verdicts(report.verdicts, report.primary)
