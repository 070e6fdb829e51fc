"""Run under torchrun: one DDP forward/backward of a recipe on this rank's share of a global batch.

Rank 0 writes the all-reduced loss and the (DDP-averaged) gradients to ``out`` for the test to
compare with a single process on the whole global batch.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from mirkit.params import resolve
from mirkit.train.loop import (
    ExampleStream,
    PretrainParams,
    batch_indices,
    init_distributed,
    make_recipe,
    open_sources,
    wrap_ddp,
)


def grads_on_global_batch(p: PretrainParams, rank: int, world: int):
    recipe = make_recipe(p)
    sources, tracks = open_sources(p, recipe)
    recipe.prepare(sources)
    torch.manual_seed(p.seed)
    model = recipe.build_model()
    module = model
    if world > 1:
        module = wrap_ddp(model, torch.device("cpu"))
    stream = ExampleStream(recipe, sources, tracks, p.seed)
    batch = default_collate([stream[k] for k in batch_indices(0, 1, p.batch_size, rank, world)[0]])
    out = module(batch)
    out["loss"].backward()
    loss = out["loss"].detach()
    if world > 1:
        dist.all_reduce(loss)
        loss /= world
    return float(loss), {n: prm.grad.clone() for n, prm in model.named_parameters() if prm.grad is not None}


if __name__ == "__main__":
    params, out = json.loads(sys.argv[1]), sys.argv[2]
    p = resolve(PretrainParams, params)
    info = init_distributed("cpu")
    loss, grads = grads_on_global_batch(p, info.rank, info.world)
    if info.rank == 0:
        torch.save({"loss": loss, "grads": grads}, out)
    dist.barrier()
    dist.destroy_process_group()
