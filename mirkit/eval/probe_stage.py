"""The probe stage: every task of ``probe.tasks`` on every run of ``probe.runs``, with intervals and a verdict.

For each run (an embeddings store, or a layered store from ``extract.layer: all``) and task, the probe
is fitted and chosen as the protocol says (``mirkit.eval.protocols``; the layer chosen on validation
too), and the test split is scored once. Every test score carries a 95 % percentile bootstrap interval
over the test tracks (songs for song-grouped tasks; ``mirkit.eval.bootstrap``, ``n_boot`` resamples,
seed 0), and each run is compared with ``baseline`` by a paired bootstrap interval of the difference on
the tracks both scored. Stochastic protocols repeat over ``seeds`` (mean ± sd).

Outputs: ``out`` = ``{run: {task: {metric: value}}}`` (DVC metrics; the primary metric's interval as
``<primary>_low``/``<primary>_high``, the comparison as ``delta_vs_<baseline>`` with ``_low``/``_high``,
and ``layer`` when a layer was chosen), ``<out stem>.details.json`` (chosen configuration, layer
curve, split sizes, the verdicts), a bar plot with the intervals (``plot``) and, for layered stores,
a score-per-layer plot (``<plot stem>_layers.png``). Tasks with ``fusion: both`` appear as
``<task>@mean`` and ``<task>@late``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirkit.device import pick as resolve_device
from mirkit.errors import MirkitError
from mirkit.eval.bootstrap import Interval, interval, paired_difference
from mirkit.eval.protocols import DEFAULT_FUSION, FUSION_CHOICES, PROTOCOLS, Setup, setup
from mirkit.eval.tasks import FrameTask, TaskSpec, check_columns, make_task, parse_tasks
from mirkit.params import ParamsError, param, to_dict


@dataclass
class ProbeParams:
    runs: dict = param({}, help="run name -> embeddings store path/URL (e.g. pretrained, random-init); a store "
                                "extracted with layer: all is probed at every layer")
    tasks: dict = param({}, help="task name -> {type, label, group?, options?}; types: multiclass, multilabel, "
                                 "regression, key, beats, chords; group (multiclass/key) = column naming each "
                                 "clip's song: clips are ensembled per song, JukeMIR's strategy chosen on valid")
    protocol: str = param("linear", choices=tuple(PROTOCOLS),
                          help="; ".join(f"{p.name}: {p.help}" for p in PROTOCOLS.values()))
    fusion: str = param(DEFAULT_FUSION, choices=FUSION_CHOICES,
                        help="track-level tasks: mean = mean-pool each track's chunk embeddings, then probe "
                             "(JukeMIR, MARBLE); late = probe chunks, average their outputs per track (Myna); "
                             "both = report both (<task>@mean, <task>@late)")
    layers: str | int = param("best", help="layered stores (extract layer: all): best = probe every layer, choose "
                                           "on valid; weighted = learned softmax weights over layers (SUPERB); "
                                           "a number = that layer only")
    seeds: int = param(1, ge=1, help="repeat stochastic protocols (quick, jukemir) with seed, seed+1, ...; "
                                     "mean ± sd over seeds (linear is deterministic: runs once)")
    baseline: str | None = param(None, help="run every other run is compared with (paired bootstrap interval "
                                            "of the difference); null = no comparison")
    n_boot: int = param(1000, ge=0, help="bootstrap resamples of the test tracks (songs) for the 95 % intervals "
                                         "(0 = no intervals)")
    out: str = param("results/probe.json", help="metrics JSON")
    plot: str = param("results/probe.png", help="bar plot PNG comparing the runs (layer curves beside it)")
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
        if self.baseline is not None and self.baseline not in self.runs:
            raise ParamsError(f"probe.baseline={self.baseline!r}: not a run (runs: {', '.join(self.runs)})")
        parse_tasks(self.tasks)
        self.setup()

    def setup(self) -> Setup:
        return setup(self.protocol, self.fusion, self.layers, self.seeds)


def open_stores(params: ProbeParams, specs: dict[str, TaskSpec]) -> dict[str, dict[int, Any]]:
    """Open every run's store (all its layers) and check the task label columns exist, before any training."""
    from mirkit.eval.layers import open_layers
    runs = {}
    for name, url in params.runs.items():
        try:
            runs[name] = open_layers(url)
        except (OSError, ValueError, KeyError) as exc:
            raise ParamsError(f"probe.runs.{name}={url!r}: cannot open embeddings store ({exc})") from None
        main = next(reversed(runs[name].values()))
        check_columns(specs, main.tracks, f"probe.runs.{name} ({url})")
        if isinstance(params.layers, int) and params.layers not in runs[name]:
            raise ParamsError(f"probe.layers={params.layers}: {url} holds layers "
                              f"{', '.join(map(str, runs[name]))}")
    return runs


def task_keys(name: str, spec: TaskSpec, fusions: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(result key, fusion)`` of a task: ``<task>@<fusion>`` when several fusions are asked for."""
    if spec.type in ("beats", "chords") or len(fusions) == 1:
        return [(name, fusions[0])]
    return [(f"{name}@{f}", f) for f in fusions]


#: (job name, total configurations) -> progress callback (done, step), and a close(outcome) call
ProgressFactory = Callable[[str, int], Any]


@dataclass
class ProbeReport:
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    primary: dict[str, str] = field(default_factory=dict)                 # result key -> primary metric
    verdicts: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)   # key -> run -> comparison
    failed: list[str] = field(default_factory=list)


def run(params: ProbeParams, stores: dict[str, dict[int, Any]] | None = None,
        progress: ProgressFactory | None = None, on_error: Callable[[str, str], None] | None = None) -> ProbeReport:
    """Probe every task on every run; a failing task is reported (``on_error``) and skipped, the others run."""
    from mirkit.eval.probe import TrainSettings, combine_seeds, evaluate_task
    specs = parse_tasks(params.tasks)
    conf = params.setup()
    stores = stores if stores is not None else open_stores(params, specs)
    device = resolve_device(params.device)
    if device.type == "cpu" and params.threads:
        import torch
        torch.set_num_threads(params.threads)
    stack = params.stack if params.stack is not None else (0 if device.type == "cuda" else 6)
    report = ProbeReport()
    units: dict[str, dict[str, Any]] = {}
    for run_name, layers in stores.items():
        report.metrics[run_name], report.details[run_name] = {}, {}
        for name, spec in specs.items():
            for key, fusion in task_keys(name, spec, conf.fusions):
                task = make_task(spec)
                report.primary[key] = task.primary
                n_layers = 1 if isinstance(params.layers, int) else len(layers)
                total = (1 if isinstance(task, FrameTask) else conf.protocol.n_configs()) * n_layers
                results = []
                job = progress(f"{run_name}/{key}", total * conf.runs_per_task) if progress else None
                try:
                    for k in range(conf.runs_per_task):
                        settings = TrainSettings(max_steps=params.max_steps, eval_every=params.eval_every,
                                                 patience=params.patience, seed=params.seed + k,
                                                 device=str(device), stack=stack)
                        tick = _offset(job, k * total)
                        results.append(evaluate_task(layers, task, conf.protocol, settings, tick, fusion=fusion,
                                                     layers=params.layers))
                except (MirkitError, ValueError, OSError, KeyError) as exc:   # TaskDataError is both
                    if job:
                        job.close("failed")
                    if on_error:
                        on_error(f"{run_name}/{key}", str(exc))
                    report.details[run_name][key] = {"error": str(exc)}
                    report.failed.append(f"{run_name}/{key}")
                    continue
                if job:
                    job.close("done")
                result = combine_seeds(results, task.primary)
                metrics = dict(result.metrics)
                if isinstance(result.details.get("layers", {}).get("chosen"), int):
                    metrics["layer"] = result.details["layers"]["chosen"]
                test = result.units.get("test")
                if test is not None and params.n_boot:
                    ci = interval(test, params.n_boot)
                    metrics[f"{task.primary}_low"], metrics[f"{task.primary}_high"] = ci.low, ci.high
                    result.details["interval"] = ci.to_dict()
                    units.setdefault(key, {})[run_name] = test
                report.metrics[run_name][key] = metrics
                report.details[run_name][key] = result.details
    if params.baseline is not None and params.n_boot:
        compare(report, units, params.baseline, params.n_boot)
    return report


def _offset(job: Any, offset: int) -> Callable[[int, int], None] | None:
    if job is None:
        return None
    return lambda done, step: job(offset + done, step)


def compare(report: ProbeReport, units: dict[str, dict[str, Any]], baseline: str, n_boot: int) -> None:
    """Paired bootstrap interval of (run - baseline) on each task's test units both runs scored."""
    for key, by_run in units.items():
        if baseline not in by_run:
            continue
        for run_name, scores in by_run.items():
            if run_name == baseline:
                continue
            diff = paired_difference(scores, by_run[baseline], n_boot)
            verdict = ("better" if diff.low > 0 else "worse" if diff.high < 0 else "no clear difference")
            entry = {"baseline": baseline, "verdict": verdict, **diff.to_dict()}
            report.verdicts.setdefault(key, {})[run_name] = entry
            m = report.metrics[run_name][key]
            m[f"delta_vs_{baseline}"], m[f"delta_vs_{baseline}_low"], m[f"delta_vs_{baseline}_high"] = \
                diff.estimate, diff.low, diff.high
            report.details[run_name][key]["comparison"] = entry


def verdict_line(key: str, run_name: str, entry: dict[str, Any], primary: str) -> str:
    """``key: pretrained beats random-init by +0.139 [+0.071, +0.205] weighted_score (interval clear of zero)``."""
    d = Interval(entry["estimate"], entry["low"], entry["high"], entry["level"], entry["n_boot"], entry["unit"],
                 entry["n_units"])
    word = {"better": "beats", "worse": "is worse than", "no clear difference": "vs"}[entry["verdict"]]
    clear = "interval clear of zero" if d.clear_of_zero else "interval includes zero: no clear difference"
    return (f"{key}: {run_name} {word} {entry['baseline']} by {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}] "
            f"{primary}, {int(d.level * 100)} % paired bootstrap over {d.n_units} {d.unit}s ({clear})")


def write_outputs(report: ProbeReport, params: ProbeParams) -> list[Path]:
    out = Path(params.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.metrics, indent=2) + "\n")
    out.with_name(out.stem + ".details.json").write_text(
        json.dumps({"params": to_dict(params), "runs": report.details, "comparisons": report.verdicts},
                   indent=2) + "\n")
    written = [out, out.with_name(out.stem + ".details.json"), Path(params.plot)]
    plot_runs(report.metrics, report.primary, Path(params.plot))
    if plot_layers(report.details, report.primary, layers_plot(params)):
        written.append(layers_plot(params))
    return written


def layers_plot(params: ProbeParams) -> Path:
    plot = Path(params.plot)
    return plot.with_name(plot.stem + "_layers.png")


def plot_runs(metrics: dict, primary: dict[str, str], path: Path) -> None:
    """Grouped bars: one group per task (its primary test metric), one bar per run, 95 % intervals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs, tasks = list(metrics), list(primary)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(tasks) * max(1, len(runs)) ** 0.5), 3.5))
    width = 0.8 / max(1, len(runs))
    for k, run_name in enumerate(runs):
        values = [metrics[run_name].get(t, {}).get(primary[t], float("nan")) for t in tasks]
        err = [[max(0.0, v - metrics[run_name].get(t, {}).get(f"{primary[t]}_low", v)) for t, v in zip(tasks, values, strict=True)],
               [max(0.0, metrics[run_name].get(t, {}).get(f"{primary[t]}_high", v) - v) for t, v in zip(tasks, values, strict=True)]]
        bars = ax.bar([i + (k - (len(runs) - 1) / 2) * width for i in range(len(tasks))], values, width, label=run_name,
                      yerr=err, capsize=2)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(tasks)), [f"{t}\n({primary[t]})" for t in tasks])
    ax.set_ylabel("test score (95 % bootstrap interval)")
    ax.legend(fontsize=8)
    ax.set_title("probe results")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layers(details: dict, primary: dict[str, str], path: Path) -> bool:
    """Score per layer, one panel per task: validation (what chooses the layer) dashed, test solid, one
    colour per run, the chosen layer marked. Nothing is drawn (False) when no run has several layers."""
    curves = {(r, t): d["layers"] for r, tasks in details.items() for t, d in tasks.items()
              if isinstance(d, dict) and "curve" in d.get("layers", {})}
    if not curves:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = [t for t in primary if any(t == k for _, k in curves)]
    runs = sorted({r for r, _ in curves}, key=list(details).index)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for k, run_name in enumerate(runs):
            info = curves.get((run_name, task))
            if info is None:
                continue
            names = list(info["curve"])
            xs = range(len(names))
            colour = f"C{k}"
            ax.plot(xs, [info["curve"][n]["valid"] for n in names], "--", color=colour, alpha=0.6)
            test = [info["curve"][n]["test"] for n in names]
            if any(v is not None for v in test):
                ax.plot(xs, [float("nan") if v is None else v for v in test], "-o", color=colour, ms=3, label=run_name)
            chosen = names.index(str(info["chosen"]))
            ax.axvline(chosen, color=colour, lw=0.8, ls=":")
            ax.set_xticks(list(xs), names, fontsize=7)
        ax.set_title(f"{task} ({primary[task]})", fontsize=9)
        ax.set_xlabel("layer (-1 = last, normed)", fontsize=8)
    axes[0][0].set_ylabel("score: test (solid), valid (dashed)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
