"""Shared helpers for training tests: interrupt a run after a step, then resume it (test_train, test_sogclr,
test_online_probe compare the resumed run with an uninterrupted one)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mirkit.train.loop import PretrainParams, TrainResult
from mirkit.train.loop import train as train_loop


class Interrupted(Exception):
    """Raised from inside the loop to stand for a killed run."""


def train_until(p: PretrainParams, stop_after: int, train: Callable[..., TrainResult] = train_loop) -> None:
    """Run ``train(p)`` and stop it right after step ``stop_after`` (its checkpoint, when due, is written)."""
    def on_step(step: int, row: dict[str, float]) -> None:
        if step == stop_after:
            raise Interrupted
    with pytest.raises(Interrupted):
        train(p, on_step=on_step)


def interrupted_then_resumed(p: PretrainParams, stop_after: int,
                             train: Callable[..., TrainResult] = train_loop) -> TrainResult:
    """:func:`train_until` then ``train(p, resume=True)``; returns the resumed run's result."""
    train_until(p, stop_after, train)
    return train(p, resume=True)


def timeless(curves: dict) -> dict:
    """Training curves without the wall-clock throughput one (never equal between two runs)."""
    return {k: v for k, v in curves.items() if "samples_per_s" not in k}
