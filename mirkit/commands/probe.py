"""``mirkit probe``: train probes on one or more embeddings stores and compare them.

Writes ``out`` = ``{run: {task: {metric: value}}}`` (what ``dvc metrics show`` reads; each run's
section is that run's metrics), ``<out stem>.details.json`` (chosen configuration, steps, split
sizes) and a bar plot of each task's primary test metric per run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from mirkit import ui
from mirkit.device import pick as resolve_device
from mirkit.errors import InputError, MirkitError
from mirkit.eval.probe import PROTOCOLS, TrainSettings, evaluate_task, protocol_configs
from mirkit.eval.tasks import FrameTask, TaskDataError, TaskSpec, check_columns, make_task, parse_tasks
from mirkit.params import ParamsError, load, param, to_dict


@dataclass
class ProbeParams:
    runs: dict = param({}, help="run name -> embeddings store path/URL (e.g. pretrained, random-init)")
    tasks: dict = param({}, help="task name -> {type, label, group?, options?}; types: multiclass, multilabel, "
                                 "regression, key, beats, chords; group (multiclass/key) = column naming each "
                                 "clip's song: clips are ensembled per song, JukeMIR's strategy chosen on valid")
    protocol: str = param("linear", choices=PROTOCOLS,
                          help="linear: L2-regularised softmax/logistic/ridge solved full-batch, strength chosen on "
                               "valid (seconds); quick: one JukeMIR configuration (Adam, early stopping); "
                               "jukemir: the 216-configuration JukeMIR grid, chosen on valid")
    out: str = param("results/probe.json", help="metrics JSON")
    plot: str = param("results/probe.png", help="bar plot PNG comparing the runs")
    seed: int = param(0, ge=0)
    device: str = param("auto", choices=("auto", "cpu", "cuda"))
    max_steps: int = param(1_000_000, ge=1, help="safety cap on steps per configuration (JukeMIR has none; "
                                                  "early stopping ends training long before; a hit is reported)")
    eval_every: int = param(8, ge=1, help="steps between validation evaluations (JukeMIR: 8)")
    patience: int = param(256, ge=1, help="evaluations without improvement before stopping (JukeMIR: 256)")
    threads: int = param(1, ge=0, help="torch CPU threads (0 = torch's default); probes are small, and several "
                                        "threads on tiny products cost far more than they save on a shared machine")
    stack: int | None = param(None, ge=0, help="grid configurations trained together; null = all of a "
                              "(batch, hidden) group on CUDA, 6 on CPU (cache-sized; see docs/benchmarks.md)")

    def check(self) -> None:
        if not self.runs:
            raise ParamsError("probe.runs: give at least one run (name -> embeddings store)")
        for name, url in self.runs.items():
            if not isinstance(url, str) or not url:
                raise ParamsError(f"probe.runs.{name}={url!r}: expected an embeddings store path or URL")
        parse_tasks(self.tasks)


def open_stores(params: ProbeParams, specs: dict[str, TaskSpec]) -> dict[str, Any]:
    """Open every store and check the task label columns exist, before any training."""
    from mirkit.eval.embeddings import Embeddings
    stores = {}
    for name, url in params.runs.items():
        stores[name] = Embeddings(url)   # an EmbeddingsError names the store and what is wrong with it
        check_columns(specs, stores[name].tracks, f"probe.runs.{name} ({url})")
    return stores


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


def run_probes(params: ProbeParams, stores: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """Metrics ``{run: {task: {metric}}}`` and details; a failing task is reported and skipped
    (its details hold ``error``), the other tasks still run."""
    specs = parse_tasks(params.tasks)
    stores = stores if stores is not None else open_stores(params, specs)
    device = resolve_device(params.device)
    if device.type == "cpu" and params.threads:
        import torch
        torch.set_num_threads(params.threads)
    stack = params.stack if params.stack is not None else (0 if device.type == "cuda" else 6)
    settings = TrainSettings(max_steps=params.max_steps, eval_every=params.eval_every,
                             patience=params.patience, seed=params.seed, device=str(device), stack=stack)
    metrics: dict[str, dict] = {}
    details: dict[str, dict] = {}
    plain = not ui.console.is_terminal
    with ui.progress() as bar:
        for run, store in stores.items():
            metrics[run], details[run] = {}, {}
            for name, spec in specs.items():
                task = make_task(spec)
                total = 1 if params.protocol == "linear" or isinstance(task, FrameTask) else \
                    len(protocol_configs(params.protocol))
                report = Reporter(bar, f"{run}/{name}", total, plain)
                try:
                    result = evaluate_task(store, task, params.protocol, settings, on_progress=report)
                except TaskDataError as exc:   # this task's labels cannot be used: the others still run
                    report.close("failed")
                    ui.console.print(f"[red]{run}/{name} failed:[/red] {exc}")
                    details[run][name] = {"error": str(exc)}
                    continue
                report.close("done")
                metrics[run][name] = result.metrics
                details[run][name] = result.details
                capped = result.details.get("capped")
                if capped:
                    ui.console.print(f"[yellow]{run}/{name}: {len(capped['configs'])} configuration(s) reached "
                                     f"max_steps={capped['max_steps']} before early stopping[/yellow]")
    return metrics, details


def write_outputs(metrics: dict, details: dict, params: ProbeParams, specs: dict[str, TaskSpec]) -> None:
    out = Path(params.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    out.with_name(out.stem + ".details.json").write_text(
        json.dumps({"params": to_dict(params), "runs": details}, indent=2) + "\n")
    plot_runs(metrics, {n: make_task(s).primary for n, s in specs.items()}, Path(params.plot))


def plot_runs(metrics: dict, primary: dict[str, str], path: Path) -> None:
    """Grouped bars: one group per task (its primary test metric), one bar per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs, tasks = list(metrics), list(primary)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(tasks) * max(1, len(runs)) ** 0.5), 3.5))
    width = 0.8 / max(1, len(runs))
    for k, run in enumerate(runs):
        values = [metrics[run].get(t, {}).get(primary[t], float("nan")) for t in tasks]
        bars = ax.bar([i + (k - (len(runs) - 1) / 2) * width for i in range(len(tasks))], values, width, label=run)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(tasks)), [f"{t}\n({primary[t]})" for t in tasks])
    ax.set_ylabel("test score")
    ax.legend(fontsize=8)
    ax.set_title("probe results")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_table(metrics: dict, specs: dict[str, TaskSpec], params: ProbeParams):
    """One row per task, one column per run: the primary test metric, best run in bold."""
    runs = list(metrics)
    rows = []
    for name, spec in specs.items():
        primary = make_task(spec).primary
        values = {r: metrics[r].get(name, {}).get(primary) for r in runs}
        best = max((v for v in values.values() if v is not None), default=None)
        shown = f"{primary} per {spec.group}" if spec.group else primary
        rows.append([name, shown] + [("-" if v is None else (f"[bold]{v:.4f}[/bold]" if v == best and len(runs) > 1
                                                              else f"{v:.4f}")) for v in values.values()])
    return ui.table(f"probe results ({params.protocol} protocol, test split) -> {params.out}",
                    ["task", "metric"] + runs, rows)


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
        if show:
            if not Path(params.out).is_file():
                raise InputError(f"{params.out}: no probe results yet (run `mirkit probe`)")
            ui.out_console.print(comparison_table(json.loads(Path(params.out).read_text()), specs, params))
            return
        stores = open_stores(params, specs)   # a bad store or label column fails before any work
        ui.print_params("probe", params)
        metrics, details = run_probes(params, stores)
        write_outputs(metrics, details, params, specs)
        rows = []
        for run, tasks in metrics.items():
            for task, values in tasks.items():
                d = details[run][task]
                rows.append((run, task, ", ".join(f"{k}={v:.4f}" for k, v in values.items()),
                             d.get("config", {}).get("hidden", ""), d.get("ensemble", {}).get("strategy", "")))
        ui.console.print(ui.table(f"probe ({params.protocol}): all test metrics",
                                  ["run", "task", "test metrics", "hidden", "ensemble"], rows))
        ui.out_console.print(comparison_table(metrics, specs, params))
        failed = [f"{r}/{t}" for r, d in details.items() for t, v in d.items() if "error" in v]
        if failed:   # the other tasks' results are written above; the stage itself did not succeed
            raise MirkitError(f"{len(failed)} probe task(s) failed: {', '.join(failed)} "
                              f"(reasons above and in {Path(params.out).stem}.details.json)")
