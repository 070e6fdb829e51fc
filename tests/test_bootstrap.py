"""Bootstrap intervals of test scores and paired differences (mirkit.eval.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from mirkit.eval.bootstrap import UnitScores, interval, paired_difference, resamples, seed_summary


def _accuracy(correct: np.ndarray, ids=None, groups=None) -> UnitScores:
    ids = ids or [f"t{i}" for i in range(len(correct))]
    return UnitScores(ids, lambda idx: float(correct[idx].mean()), groups)


def test_interval_covers_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    correct = (rng.random(100) < 0.7).astype(float)
    ci = interval(_accuracy(correct), n_boot=500, seed=3)
    assert ci.estimate == pytest.approx(correct.mean())
    assert ci.low < ci.estimate < ci.high
    # binomial standard error at n=100, p~0.7 is ~0.046: the 95 % half width is about 1.96 of it
    assert 0.06 < ci.half_width < 0.12
    assert interval(_accuracy(correct), n_boot=500, seed=3) == ci
    assert ci.show() == f"{ci.estimate:.3f} ± {ci.half_width:.3f}"


def test_groups_resample_whole_songs():
    groups = ["a", "a", "b", "b", "b", "c"]
    for idx in resamples(6, groups, n_boot=50, seed=0):
        drawn = [groups[i] for i in idx]
        for g in set(drawn):   # a drawn song comes with all its tracks, as many times as it was drawn
            assert drawn.count(g) % groups.count(g) == 0
    # songs whose tracks all agree: per-song resampling gives a wider interval than per-track
    correct = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0], float)
    songs = [str(i // 4) for i in range(12)]
    wide = interval(_accuracy(correct, groups=songs), n_boot=400)
    narrow = interval(_accuracy(correct), n_boot=400)
    assert wide.unit == "song" and wide.n_units == 3
    assert wide.half_width > narrow.half_width


def test_paired_difference_uses_the_same_units():
    rng = np.random.default_rng(0)
    base = (rng.random(120) < 0.5).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:20]] = 1.0   # 20 more tracks right, none lost
    ids = [f"t{i}" for i in range(120)]
    diff = paired_difference(_accuracy(better, ids), _accuracy(base, ids), n_boot=400)
    assert diff.estimate == pytest.approx(20 / 120)
    assert diff.clear_of_zero and diff.low > 0   # every resample can only gain
    # two unpaired intervals of the same runs overlap: pairing is what makes the verdict
    a, b = interval(_accuracy(better, ids), n_boot=400), interval(_accuracy(base, ids), n_boot=400)
    assert a.low < b.high
    # identical runs: a zero-width interval that is not clear of zero
    same = paired_difference(_accuracy(base, ids), _accuracy(base, ids), n_boot=50)
    assert same.low == same.high == 0 and not same.clear_of_zero
    # units matched by id, not position
    shuffled = np.arange(120)[::-1]
    rev = paired_difference(_accuracy(better, ids), _accuracy(base[shuffled], [ids[i] for i in shuffled]), n_boot=400)
    assert rev == diff


def test_bad_arguments():
    with pytest.raises(ValueError, match="no evaluation unit"):
        paired_difference(_accuracy(np.ones(3), ["a", "b", "c"]), _accuracy(np.ones(2), ["x", "y"]))
    with pytest.raises(ValueError, match="level"):
        interval(_accuracy(np.ones(3)), level=95)
    assert seed_summary([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert seed_summary([0.5]) == (0.5, 0.0)
