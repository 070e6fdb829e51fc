"""Crop loader throughput vs what a training step consumes, side by side on one feature store.

Usage: python bench/bench_loader.py [--store data/features.zarr] [--recipe myna] [--preset myna-small]
       [--batch 32] [--workers 0 2] [--steps 20] [--device cpu]
Builds the same loader the engine uses (ExampleStream + DataLoader over global example counters) and
reports crops/s from the Zarr store (a call per crop, or through the per-process LRU track cache the
engine uses when `in_memory` is false) and from RAM (`in_memory`), next to the
training step's samples/s for the same recipe and batch. A ratio > 1 means the loader keeps up.
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import train_step_seconds
from torch.utils.data import DataLoader

from mirkit.train.loop import ExampleStream, PretrainParams, batch_indices, make_recipe, open_sources


def loader_rate(p: PretrainParams, workers: int, steps: int, track_cache: bool = True) -> float:
    recipe = make_recipe(p)
    sources, tracks = open_sources(p, recipe)
    if not p.in_memory and not track_cache:
        sources.features.cache_tracks(0)
    loader = DataLoader(ExampleStream(recipe, sources, tracks, 0), num_workers=workers,
                        batch_sampler=batch_indices(0, steps + 2, p.batch_size, 0, 1))
    it = iter(loader)
    next(it), next(it)                        # warm-up (worker start)
    t0 = time.perf_counter()
    n = sum(crops(b) for b in it)
    return n / (time.perf_counter() - t0)


def crops(batch: dict[str, torch.Tensor]) -> int:
    """Spectrogram crops in a batch: every (batch, bins, frames) float tensor counts."""
    return sum(v.shape[0] for v in batch.values() if v.is_floating_point() and v.dim() == 3)


def step_rate(p: PretrainParams, steps: int, device: str) -> float:
    recipe = make_recipe(p)
    sources, tracks = open_sources(p, recipe)
    recipe.prepare(sources)
    model = recipe.build_model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stream = ExampleStream(recipe, sources, tracks, 0)
    batches = [torch.utils.data.default_collate([stream[k] for k in ks]) for ks in batch_indices(0, 3, p.batch_size, 0, 1)]
    times = [train_step_seconds(model, opt, {k: v.to(device) for k, v in batches[i % len(batches)].items()},
                                torch.device(device)) for i in range(steps + 2)]
    times = sorted(times[2:])
    return crops(batches[0]) / times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", default="data/features.zarr")
    ap.add_argument("--recipe", default="myna")
    ap.add_argument("--preset", default="myna-small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = dict(recipe=args.recipe, preset=args.preset, features=args.store, manifest=None, batch_size=args.batch,
                tokens=args.store.replace("features", "tokens"))
    step = step_rate(PretrainParams(**base), args.steps, args.device)
    print("| source | workers | crops/s | crops/s per training-step crop/s |\n|---|---|---|---|")
    for name, in_memory, cache in (("Zarr, a call per crop", False, False), ("Zarr + LRU track cache", False, True),
                                   ("RAM (in_memory)", True, True)):
        for w in args.workers:
            rate = loader_rate(PretrainParams(**base, in_memory=in_memory), w, args.steps, cache)
            print(f"| {name} | {w} | {rate:.0f} | {rate / step:.1f}x |")
    print(f"\ntraining step ({args.recipe} {args.preset}, batch {args.batch}, {args.device}): {step:.0f} crops/s")


if __name__ == "__main__":
    main()
