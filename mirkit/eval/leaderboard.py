"""The leaderboard of one benchmark run: JSON (``dvc metrics``-readable), Markdown and a plot.

Models are ranked by their test score at the layer chosen on validation. Each score carries a
95 % percentile-bootstrap interval over test tracks (songs for GiantSteps), and every model but the
leader a paired interval of its difference to the leader (:mod:`mirkit.eval.bootstrap`);
"clear" means that interval excludes zero. A partial copy of the dataset is stated at the top of
every output: its scores are not comparable with published ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mirkit.eval.benchmark_run import BenchmarkResult, layer_name
from mirkit.eval.bootstrap import interval, paired_difference

TITLES = {"gtzan": "GTZAN (fault-filtered split)", "giantsteps": "GiantSteps key",
          "mtt": "MagnaTagATune (top-50 tags)", "emomusic": "EmoMusic"}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def build(result: BenchmarkResult) -> dict[str, Any]:
    """The leaderboard as a JSON-able dict, intervals computed here (fixed seed)."""
    p = result.params
    ok = [m for m in result.models if m.chosen is not None and m.test_units is not None]
    ok.sort(key=lambda m: -m.chosen.test if m.chosen and math.isfinite(m.chosen.test) else math.inf)
    leader = ok[0] if ok else None
    unit = "song" if result.params.name == "giantsteps" else "track"
    rows = []
    for rank, m in enumerate(ok, start=1):
        assert m.chosen is not None
        ci = interval(m.test_units, p.n_boot, seed=p.seed)
        row: dict[str, Any] = {
            "rank": rank, "name": m.spec.name, "path": m.spec.path, "random_init": m.spec.random_init,
            "layer": layer_name(m.chosen.layer), "valid": _num(m.chosen.valid), "test": _num(m.chosen.test),
            "low": _num(ci.low), "high": _num(ci.high), "units": ci.n_units,
            "metrics": {k: _num(v) for k, v in m.chosen.metrics.items()},
            "per_layer": [{"layer": layer_name(s.layer), "valid": _num(s.valid), "test": _num(s.test)}
                          for s in m.layers],
            "extract": {k: v for k, v in m.extract.items() if k != "model"}, "store": m.store_dir,
            "weights": m.extract.get("model", {}).get("weights_sha1", "random init" if m.spec.random_init else ""),
        }
        if leader is not None and m is not leader:
            d = paired_difference(m.test_units, leader.test_units, p.n_boot, seed=p.seed)
            row["vs_leader"] = {"leader": leader.spec.name, "difference": _num(d.estimate), "low": _num(d.low),
                                "high": _num(d.high), "units": d.n_units, "clear": d.clear_of_zero}
        rows.append(row)
    failed = [{"name": m.spec.name, "path": m.spec.path, "error": m.error or "no result"}
              for m in result.models if m not in ok]
    return {"benchmark": p.name, "title": TITLES[p.name], "task": result.task, "metric": result.metric,
            "split": "test", "protocol": p.protocol, "layers": p.layers, "layer_choice": "valid",
            "bootstrap": {"resamples": p.n_boot, "level": 0.95, "seed": p.seed, "unit": unit},
            "complete": result.check.complete, "note": result.check.summary(), "copy": result.check.to_json(),
            "manifest": result.manifest, "models": rows, "failed": failed}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(board: dict[str, Any], command: str = "") -> str:
    metric, unit = board["metric"], board["bootstrap"]["unit"]
    lines = [f"# {board['title']}: {board['task']} ({metric}, test split)", ""]
    if not board["complete"]:
        lines += [f"> **{board['note']}**", ""]
    lines += [f"| rank | model | layer (chosen on valid) | test {metric} | 95 % CI | valid {metric} | "
              f"difference to the leader (paired 95 % CI) |", "|---|---|---|---|---|---|---|"]
    for r in board["models"]:
        half = (r["high"] - r["low"]) / 2 if r["low"] is not None and r["high"] is not None else None
        score = f"{_fmt(r['test'])} ± {_fmt(half)}" if half is not None else _fmt(r["test"])
        vs = r.get("vs_leader")
        if vs is None:
            versus = "leader"
        else:
            verdict = "behind (clear)" if vs["clear"] else "not separable"
            versus = f"{_fmt(vs['difference'])} [{_fmt(vs['low'])}, {_fmt(vs['high'])}] {verdict}"
        name = r["name"] + (" (random init)" if r["random_init"] else "")
        lines.append(f"| {r['rank']} | {name} | {r['layer']} | {score} | [{_fmt(r['low'])}, {_fmt(r['high'])}] | "
                     f"{_fmt(r['valid'])} | {versus} |")
    for f in board["failed"]:
        lines.append(f"| - | {f['name']} | - | failed: {f['error']} | - | - | - |")
    copy = board["copy"]
    lines += ["", f"Protocol `{board['protocol']}`, layers `{board['layers']}` (the layer is chosen on the validation "
                  f"score only; test is scored once per layer). Intervals: percentile bootstrap over test {unit}s, "
                  f"{board['bootstrap']['resamples']} resamples, seed {board['bootstrap']['seed']}.", "",
              "Dataset copy: " + ", ".join(f"{s} {copy['usable'][s]}/{copy['expected'][s]}" for s in copy["expected"])
              + f" usable; {sum(copy['missing'].values())} missing, {copy['extra']} extra file(s), "
                f"{copy['n_unreadable']} unreadable, {copy['n_short']} short, {copy['n_long']} long, "
                f"{copy['n_beyond_end']} clip(s) past the end of their file."]
    if command:
        lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def plot(board: dict[str, Any], path: Path) -> None:
    """Left: test score per model with its interval. Right: valid (solid) and test (dashed) score per
    layer, the chosen layer marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = board["models"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, max(3.0, 0.5 * len(rows) + 2)))
    names = [r["name"] for r in rows][::-1]
    tests = [r["test"] if r["test"] is not None else float("nan") for r in rows][::-1]
    err = [[max(0.0, (r["test"] or 0) - (r["low"] if r["low"] is not None else r["test"] or 0)) for r in rows][::-1],
           [max(0.0, (r["high"] if r["high"] is not None else r["test"] or 0) - (r["test"] or 0)) for r in rows][::-1]]
    ax.barh(range(len(rows)), tests, xerr=err, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_yticks(range(len(rows)), names)
    ax.set_xlabel(f"test {board['metric']} (95 % CI)")
    ax.set_title(board["title"] + ("" if board["complete"] else " (PARTIAL copy)"), fontsize=10)
    for k, r in enumerate(rows):
        xs = list(range(len(r["per_layer"])))
        labels = [s["layer"] for s in r["per_layer"]]
        line, = bx.plot(xs, [s["valid"] if s["valid"] is not None else float("nan") for s in r["per_layer"]],
                        "-o", ms=3, label=f"{r['name']} valid")
        bx.plot(xs, [s["test"] if s["test"] is not None else float("nan") for s in r["per_layer"]], "--",
                color=line.get_color(), alpha=0.6, label=f"{r['name']} test")
        chosen = labels.index(r["layer"])
        bx.plot([chosen], [r["per_layer"][chosen]["valid"]], "*", ms=12, color=line.get_color())
        if k == 0:
            bx.set_xticks(xs, labels)
    bx.set_xlabel("layer (last = after the final norm; * = chosen on valid)")
    bx.set_ylabel(board["metric"])
    bx.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(board: dict[str, Any], out: str | Path, command: str = "") -> dict[str, Path]:
    """``leaderboard.json``, ``leaderboard.md`` and ``leaderboard.png`` under ``out``, each written whole."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "leaderboard.json", "md": out / "leaderboard.md", "png": out / "leaderboard.png"}
    for kind, text in (("json", json.dumps(board, indent=2) + "\n"), ("md", markdown(board, command))):
        tmp = paths[kind].with_name(paths[kind].name + ".tmp")
        tmp.write_text(text)
        tmp.replace(paths[kind])
    plot(board, paths["png"])
    return paths
