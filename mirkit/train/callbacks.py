"""Hooks of the training loop: how code outside :mod:`mirkit.train` takes part in a run.

The loop (:func:`mirkit.train.loop.train`) knows no evaluation beyond the recipe's own held-out
loss. Anything else that should happen during a run — online probes (:mod:`mirkit.eval.online_probe`),
a progress bar, a custom logger — is a :class:`Callback` that the caller passes in. The loop calls,
on every process:

* :meth:`Callback.on_start` once, after the model is built and any checkpoint is restored;
* :meth:`Callback.evaluate` at step 0 of a fresh run (the untrained baseline) and after every
  optimizer step; the callback decides whether it is due and returns dvclive-named values
  (``probe/<task>/<metric>``) that the loop logs with the step's other metrics. Its time is counted
  as evaluation, outside throughput, and reported per callback in ``TrainResult.callback_seconds``;
* :meth:`Callback.after_step` after each step's logging, with the latest logged row;
* :meth:`Callback.at_checkpoint` after a checkpoint is written (rank 0 only, which writes them).

Determinism contract: a callback must not change the training model, its RNG streams or anything
the next step reads (copy the encoder, fork the RNG), so a run with callbacks trains exactly as one
without, and a resumed run calls them at the same steps with the same weights. Under DDP only rank 0
logs, so :meth:`Callback.evaluate` may return ``{}`` elsewhere (it must not run collectives unless
every rank does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mirkit.models.config import ModelConfig


@dataclass
class RunInfo:
    """What a callback may read about the run (the loop owns all of it; read, do not modify)."""

    model: torch.nn.Module          # the recipe's model, unwrapped (no DDP/compile); ``.encoder`` is the encoder
    device: torch.device
    rank: int                       # DDP rank (0 without DDP); rank 0 logs and writes checkpoints
    world: int
    steps: int                      # the run's last step
    start: int                      # the step this process started from (> 0 after a resume)
    features: str                   # the feature store the run trains on
    feature_set: str                # the recipe's feature set in it
    out: str                        # the training run folder (checkpoints)
    config: Callable[[int], ModelConfig]   # the model folder's config at a step (as a checkpoint writes it)


class Callback:
    """A no-op base: subclass and override the hooks you need; ``name`` labels its time in the summary."""

    name = "callback"

    def on_start(self, run: RunInfo) -> None:
        """Once per process, before the first step (after resume)."""

    def evaluate(self, run: RunInfo, step: int) -> dict[str, float]:
        """Values to log at ``step`` (0 = before training), or ``{}`` when not due."""
        return {}

    def after_step(self, run: RunInfo, step: int, row: dict[str, float]) -> None:
        """After step ``step`` is done and logged; ``row`` holds the latest logged values."""

    def at_checkpoint(self, run: RunInfo, step: int) -> None:
        """After the checkpoint of ``step`` is written to ``run.out`` (rank 0)."""


class OnStep(Callback):
    """A plain function called after each logged step (progress bars): ``fn(step, row)``."""

    name = "on_step"

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def after_step(self, run: RunInfo, step: int, row: dict[str, float]) -> None:
        if row.get("step") == step:
            self.fn(step, row)
