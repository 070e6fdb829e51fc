"""Run under torchrun (or call ``run_steps`` directly for one process): two SogCLR steps on a fixed
global batch of 6 items, each rank holding its share; saves loss, gradients and the state per rank."""

import sys

import torch
import torch.distributed as dist

from mirkit.objectives.sogclr import SogCLR

N, DIM = 6, 5
INDEX = [[4, 0, 7, 2, 9, 5], [5, 1, 4, 8, 2, 3]]       # items 2, 4, 5 come back at step 2


def run_steps(rank: int, world: int) -> dict:
    loss_fn = SogCLR(10, 0.1, 0.9)
    local = slice(rank * N // world, (rank + 1) * N // world)
    out = {"loss": [], "grads": []}
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        z = torch.randn(2, N, DIM, generator=g)
        z1, z2 = (z[v, local].clone().requires_grad_() for v in range(2))
        loss = loss_fn(z1, z2, torch.tensor(INDEX[step])[local])
        loss.backward()
        out["loss"].append(float(loss.detach()))
        out["grads"].append([z1.grad.clone(), z2.grad.clone()])
    out["u"] = loss_fn.u.clone()
    return out


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.save(run_steps(rank, world), f"{sys.argv[1]}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
