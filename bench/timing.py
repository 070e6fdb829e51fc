"""Shared timing for the benches: one optimiser step, synchronised on CUDA (bf16 autocast there)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch


def train_step_seconds(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                       device: torch.device) -> float:
    """Wall time of forward (``model(batch)["loss"]``) + backward + ``opt.step()``."""
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast:
        loss = model(batch)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start
