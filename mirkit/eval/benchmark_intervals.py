"""Bootstrap intervals of leaderboard scores: each model's test score and paired differences.

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): the scored units (test tracks, or songs
when the task ensembles clips per song) are resampled with replacement ``n`` times and the task's
primary metric is recomputed on each resample; the interval is the (2.5 %, 97.5 %) percentiles for
95 %. Resampling songs rather than clips keeps the clips of a song together, as the units the
score is computed on. A paired interval of the difference between two models resamples the units
both were scored on with the SAME indices, so what the two share (hard tracks) cancels: the
comparison MARBLE and the issue ask for ("beats the other with the interval clear of zero").

Seeds are fixed (``seed`` and the number of units), so a rerun gives the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Scorer = Callable[[np.ndarray], float]


@dataclass
class Interval:
    low: float
    high: float
    n_boot: int
    units: int


def _resamples(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, n_units])
    return rng.integers(0, n_units, size=(n_boot, n_units))


def _bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap(ids: Sequence[str], primary: Scorer, n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> Interval:
    """Percentile interval of ``primary`` over ``n_boot`` resamples of the units ``ids``.
    Resamples where the metric is undefined (NaN, e.g. ROC-AUC with no positive) are left out."""
    if not len(ids):
        return Interval(float("nan"), float("nan"), 0, 0)
    idx = _resamples(len(ids), n_boot, seed)
    values = np.array([primary(row) for row in idx], dtype=np.float64)
    return Interval(*_bounds(values, level), n_boot, len(ids))


@dataclass
class Difference:
    mean: float          # mean over resamples of score(a) - score(b)
    low: float
    high: float
    units: int           # units both models were scored on

    @property
    def clear(self) -> bool:
        """Whether the interval excludes zero (one model beats the other)."""
        return bool(self.low > 0 or self.high < 0)


def paired_difference(a: tuple[Sequence[str], Scorer], b: tuple[Sequence[str], Scorer], n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> Difference:
    """Interval of ``score(a) - score(b)`` resampling the units both were scored on, with shared indices."""
    ids_a, score_a = a
    ids_b, score_b = b
    pos_b = {u: i for i, u in enumerate(ids_b)}
    shared = [(i, pos_b[u]) for i, u in enumerate(ids_a) if u in pos_b]
    if not shared:
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    ia = np.array([s[0] for s in shared])
    ib = np.array([s[1] for s in shared])
    idx = _resamples(len(shared), n_boot, seed)
    diffs = np.array([score_a(ia[row]) - score_b(ib[row]) for row in idx], dtype=np.float64)
    finite = diffs[np.isfinite(diffs)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    return Difference(mean, *_bounds(diffs, level), len(shared))
