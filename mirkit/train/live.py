"""Step metrics of a training run through dvclive, so DVC shows them natively.

Layout (dvclive's, under ``pretrain.log``)::

    metrics.json                 latest value of every metric + "step"   (dvc metrics / dvc exp show)
    plots/metrics/<name>.tsv     one curve per metric: "step<TAB><name>"  (dvc plots show / diff)

Names are grouped: ``train/loss`` (and the recipe's loss terms), ``train/lr``, ``train/grad_norm``,
``train/samples_per_s``, ``val/loss`` (held-out recipe loss), ``probe/<task>/<metric>`` (online probes).
``step`` counts optimizer steps done (0 = before the first update).

Resume: the curves are cut back to the resumed step, so a resumed run's files equal an
uninterrupted run's. No dvc.yaml is written and no experiment is saved by dvclive itself: the
pipeline's ``dvc.yaml`` declares these files, and ``dvc exp run`` commits them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

METRICS_FILE = "metrics.json"
CURVES_DIR = Path("plots") / "metrics"


def curve_files(directory: str | Path) -> list[Path]:
    """Every per-metric TSV of a dvclive directory (sorted)."""
    return sorted((Path(directory) / CURVES_DIR).rglob("*.tsv"))


def read_curves(directory: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{metric name: (steps, values)}`` read back from a dvclive directory."""
    root = Path(directory) / CURVES_DIR
    out = {}
    for path in curve_files(directory):
        name = path.relative_to(root).with_suffix("").as_posix()
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        col = Path(name).name
        out[name] = ([float(r["step"]) for r in rows], [float(r[col]) for r in rows])
    return out


def _truncate(directory: Path, step: int) -> None:
    """Keep only the rows logged at or before ``step`` in every curve."""
    for path in curve_files(directory):
        lines = path.read_text().splitlines()
        if not lines:
            continue
        kept = [lines[0]] + [ln for ln in lines[1:] if float(ln.split("\t")[0]) <= step]
        path.write_text("\n".join(kept) + "\n")


class TrainLog:
    """A dvclive ``Live`` in ``directory``; ``resume_step`` > 0 continues a run's curves from there."""

    def __init__(self, directory: str | Path, resume_step: int = 0) -> None:
        from dvclive import Live
        self.dir = Path(directory)
        resume = resume_step > 0 and (self.dir / METRICS_FILE).exists()
        if resume:
            _truncate(self.dir, resume_step)
        self.live = Live(str(self.dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """One row per metric at ``step``; refreshes ``metrics.json``."""
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, float(value))
        self.live.make_summary()

    def latest(self) -> dict:
        return json.loads((self.dir / METRICS_FILE).read_text())


def grouped(prefix: str, values: Mapping[str, float], skip: Iterable[str] = ()) -> dict[str, float]:
    """``{prefix/name: value}`` for every name not in ``skip``."""
    return {f"{prefix}/{k}": v for k, v in values.items() if k not in set(skip)}
