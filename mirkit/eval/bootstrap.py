"""Bootstrap confidence intervals of test scores, and of the difference between two runs.

A test score computed on ~100 tracks moves by about one point per track, so two runs a few points
apart may not differ at all. Following standard practice for MIR evaluation (resampling the evaluation
units with replacement; Efron & Tibshirani's percentile interval), every test score gets a 95 %
percentile interval from ``n_boot`` resamples of the test units (tracks, or songs when the score is
per song or a ``groups`` mapping says which song each track belongs to: all tracks of a drawn song come
together, so clips of one song never count as independent evidence). Two runs scored on the same test
units get a **paired** interval: each resample draws the same units for both, and the interval is
that of the difference of their scores; a difference is "clear of zero" when the whole interval lies
on one side of it. Resamples come from one generator seeded by ``seed`` (fixed: the same scores
always give the same interval).

The API (stable; ``mirkit.eval.benchmarks`` and the probe stage build on it)::

    scorer = UnitScores(ids, lambda idx: metric(outputs[idx], targets[idx]), groups=None)
    ci = interval(scorer)                       # Interval(estimate, low, high, level, n_boot, unit)
    diff = paired_difference(scorer_a, scorer_b)   # on the ids both share; diff.clear_of_zero
    mean, sd = seed_summary([0.71, 0.74, 0.73])

``score(idx)`` receives positions into ``ids`` (with repeats) and returns the metric of those units;
``interval(scorer)`` evaluates it once on every unit (the estimate) and once per resample. A resample
whose score is undefined (NaN, e.g. an ROC-AUC without positives) is left out of the percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL
    n_boot: int = N_BOOT
    unit: str = "track"       # what was resampled: track | song
    n_units: int = 0

    @property
    def half_width(self) -> float:
        """Half the interval's width (what the ``0.747 ± 0.04`` display shows)."""
        return (self.high - self.low) / 2

    @property
    def clear_of_zero(self) -> bool:
        """Whether the whole interval lies strictly above or strictly below zero."""
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def show(self, digits: int = 3) -> str:
        """``0.747 ± 0.040``."""
        if math.isnan(self.estimate):
            return "nan"
        return f"{self.estimate:.{digits}f} ± {self.half_width:.{digits}f}"


@dataclass
class UnitScores:
    """A metric over a set of evaluation units: ``score(idx)`` scores the units at positions ``idx``
    of ``ids`` (positions may repeat). ``groups`` (optional, one per id) names the song of each unit:
    resamples then draw songs and take all their units."""

    ids: Sequence[str]
    score: Callable[[np.ndarray], float]
    groups: Sequence[str] | None = None
    unit: str = "track"

    def __post_init__(self) -> None:
        if self.groups is not None and len(self.groups) != len(self.ids):
            raise ValueError(f"groups: {len(self.groups)} values for {len(self.ids)} units")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids: every evaluation unit needs a distinct id")


def resamples(n: int, groups: Sequence[str] | None = None, n_boot: int = N_BOOT,
              seed: int = SEED) -> list[np.ndarray]:
    """``n_boot`` resamples of positions ``0..n-1``: ``n`` drawn with replacement, or, with ``groups``,
    as many groups as there are drawn with replacement and each expanded to all its positions."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return list(rng.integers(0, n, size=(n_boot, n)))
    names = sorted(set(groups))
    members = [np.flatnonzero(np.asarray(groups, dtype=object) == g) for g in names]
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    return [np.concatenate([members[k] for k in row]) for row in draws]


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    ok = values[np.isfinite(values)]
    if not len(ok):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    return float(lo), float(hi)


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: give at least one resample")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: give a coverage between 0 and 1 (e.g. 0.95)")


def interval(scores: UnitScores, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of ``scores.score`` over its units."""
    _check(n_boot, level)
    n = len(scores.ids)
    if n == 0:
        raise ValueError("interval: no evaluation units")
    estimate = float(scores.score(np.arange(n)))
    values = np.array([scores.score(idx) for idx in resamples(n, scores.groups, n_boot, seed)], dtype=np.float64)
    lo, hi = _percentiles(values, level)
    unit = "song" if scores.groups is not None else scores.unit
    n_units = len(set(scores.groups)) if scores.groups is not None else n
    return Interval(estimate, lo, hi, level, n_boot, unit, n_units)


def paired_difference(a: UnitScores, b: UnitScores, n_boot: int = N_BOOT, level: float = LEVEL,
                      seed: int = SEED) -> Interval:
    """Interval of ``score_a - score_b`` on the units both share (matched by id), each resample
    drawing the same units for both. Groups, when given, come from ``a``."""
    _check(n_boot, level)
    pos_b = {u: i for i, u in enumerate(b.ids)}
    shared = [i for i, u in enumerate(a.ids) if u in pos_b]
    if not shared:
        raise ValueError("paired_difference: the two runs share no evaluation unit")
    ia = np.asarray(shared, dtype=np.int64)
    ib = np.asarray([pos_b[a.ids[i]] for i in shared], dtype=np.int64)
    groups = [a.groups[i] for i in shared] if a.groups is not None else None

    def diff(idx: np.ndarray) -> float:
        return float(a.score(ia[idx])) - float(b.score(ib[idx]))

    return interval(UnitScores([a.ids[i] for i in shared], diff, groups, a.unit), n_boot, level, seed)


def seed_summary(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of scores over seeds."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        raise ValueError("seed_summary: no values")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
