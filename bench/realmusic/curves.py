"""Learning curves of real-music bench runs: online probes (valid clips) and held-out loss against CPU time.

Reads what ``bench_realmusic.py`` left in ``<work>/runs/<name>``: the pretrain stage's dvclive curves
(``live/plots/metrics``: ``probe/<task>/<metric>`` at step 0 = the random init, every ``--probe-every``
steps and the last step; ``val/loss``) and ``result.json`` (the run's pretrain CPU seconds). The x axis
is CPU minutes, ``step / steps * pretrain CPU`` (steps cost about the same throughout a run), so runs of
different recipes share one 15-minute axis.

    python bench/realmusic/curves.py myna-cpu15 contrastive-cpu15 --png docs/img/cpu15_curves.png

prints two markdown tables (a row per run: its test gains over the random-init twin with paired
intervals; a row per run and task: the online-probe score at each logged step and its change from
step 0) and draws the figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_checkset import default_out  # noqa: E402

TASK_ORDER = ("key", "family", "instrument", "tempo")


def run_curves(rd: Path) -> dict:
    """``{"cpu_s", "steps", "probe": {task: (metric, steps, values)}, "val": (steps, values)}`` of one run."""
    import yaml

    from mirkit.train.live import read_curves

    result = json.loads((rd / "result.json").read_text())
    section = yaml.safe_load((rd / "params.yaml").read_text())["pretrain"] if (rd / "params.yaml").exists() else {}
    for key in ("lr", "batch_size"):       # the run's params.yaml holds what a run did not override
        result[key] = result.get(key) or section.get(key)
    curves = read_curves(rd / "live")
    probe = {}
    for name, (steps, values) in curves.items():
        parts = name.split("/")
        if parts[0] == "probe" and len(parts) == 3:
            probe[parts[1]] = (parts[2], steps, values)
    return {"name": result["name"], "recipe": result["recipe"], "cpu_s": result["pretrain_cpu_s"],
            "steps": result["steps"] or max(s for _, s, _ in probe.values())[-1],
            "probe": probe, "val": curves.get("val/loss"), "result": result}


def accuracy_gain(result: dict) -> float:
    """The selection score of docs/training.md: the mean test gain over the accuracy tasks (key, family,
    instrument); tempo's R^2 is reported beside it, not averaged in (another scale, and negative for
    most random-init twins)."""
    gains = [v["gain"] for t, v in result["probe"].items() if t != "tempo"]
    return sum(gains) / len(gains)


def gains_markdown(runs: list[dict]) -> str:
    """One row per run: its setting, pretrain CPU and each task's test gain with its paired interval."""
    tasks = [t for t in TASK_ORDER if t in runs[0]["result"]["probe"]]
    lines = ["| run | steps | batch | lr | settings | pretrain CPU | " + " | ".join(tasks) + " | mean accuracy gain |",
             "|---|---|---|---|---|---|" + "---|" * len(tasks) + "---|"]
    for r in runs:
        res = r["result"]
        cells = [f"{res['probe'][t]['pretrained']:.3f} / {res['probe'][t]['random']:.3f}, "
                 f"{res['probe'][t]['gain']:+.3f} [{res['probe'][t]['lo']:+.3f}, {res['probe'][t]['hi']:+.3f}]"
                 for t in tasks]
        settings = " ".join(([f"preset={res['preset']}"] if res.get("preset") else [])
                            + [x.split(".", 2)[-1] for x in res.get("set") or []]) or "-"
        lines.append(f"| {r['name']} | {res['steps']} | {res['batch_size']} | {res['lr']:g} | "
                     f"{settings} | {res['pretrain_cpu_s'] / 60:.1f} min | " + " | ".join(cells)
                     + f" | {accuracy_gain(res):+.3f} |")
    return "\n".join(lines)


def markdown(runs: list[dict]) -> str:
    lines = ["| run | task (metric) | online probe at step: score | change from step 0 |", "|---|---|---|---|"]
    for r in runs:
        for task in [t for t in TASK_ORDER if t in r["probe"]] + sorted(set(r["probe"]) - set(TASK_ORDER)):
            metric, steps, values = r["probe"][task]
            points = ", ".join(f"{int(s)}: {v:.3f}" for s, v in zip(steps, values, strict=True))
            lines.append(f"| {r['name']} | {task} ({metric}) | {points} | {values[-1] - values[0]:+.3f} |")
    return "\n".join(lines)


def draw(runs: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASK_ORDER if any(t in r["probe"] for r in runs)]
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4 * (len(tasks) + 1), 3.4))
    for r in runs:
        scale = r["cpu_s"] / 60 / r["steps"]
        for ax, task in zip(axes, tasks, strict=False):
            if task in r["probe"]:
                metric, steps, values = r["probe"][task]
                ax.plot([s * scale for s in steps], values, marker="o", label=r["name"])
                ax.set_title(f"online {task} ({metric}, valid)")
        if r["val"]:
            steps, values = r["val"]
            first = values[0] if values[0] else 1.0
            axes[-1].plot([s * scale for s in steps], [v / first for v in values], label=r["name"])
    axes[-1].set_title("held-out loss / its value at step 0")
    for ax in axes:
        ax.set_xlabel("pretrain CPU minutes (1 thread)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run names under <work>/runs")
    ap.add_argument("--work", type=Path, default=default_out().parent / "bench-realmusic")
    ap.add_argument("--png", type=Path, default=None, help="draw the curves here")
    a = ap.parse_args(argv)
    missing = [n for n in a.runs if not (a.work / "runs" / n / "result.json").exists()]
    if missing:
        sys.exit(f"no finished run named {', '.join(missing)} under {a.work / 'runs'}")
    runs = [run_curves(a.work / "runs" / n) for n in a.runs]
    print(gains_markdown(runs) + "\n")
    print(markdown(runs))
    if a.png:
        draw(runs, a.png)
        print(f"\n{a.png}")


if __name__ == "__main__":
    main()
