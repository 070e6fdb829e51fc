"""Myna's crop length: a training step with the paper's 3 s crops vs Myna train.py's 6.25 s default.

``crop_samples: 50000`` (the paper's "two three-second segments", 96 frames) is mirkit's default;
Myna's ``train.py`` defaults to ``--n_samples 100000`` (192 frames, twice the patches and twice the
kept tokens at 90 % masking). This times one full training step (forward of both views + SogCLR,
backward, clipping, fused AdamW) of the demo's model (myna-small, batch 32) for both, interleaved
round by round so load on a shared machine hits both alike, and projects the demo's 600 steps.

    python bench/bench_myna_crop.py --threads 1 --rounds 15      # the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from bench_mfu import _Tracks, make_batch

from mirkit.params import resolve
from mirkit.recipes.base import Sources
from mirkit.recipes.myna import MynaParams, MynaRecipe


def build(samples: int, batch: int, preset: str):
    recipe = MynaRecipe(resolve(MynaParams, {"preset": preset, "crop_samples": samples, "n_items": batch}))
    torch.manual_seed(0)
    model = recipe.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    views = make_batch(recipe, Sources(_Tracks(batch, 128, 400)), batch)
    return recipe, model, opt, {**views, "index": torch.arange(batch)}   # the loader adds each track's index


def step(model, opt, batch) -> float:
    t = time.perf_counter()
    loss = model(batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="myna-small")
    ap.add_argument("--steps", type=int, default=600, help="steps of the run to project (the demo: 600)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {s: build(s, args.batch, args.preset) for s in (50_000, 100_000)}
    times: dict[int, list[float]] = {s: [] for s in runs}
    for r in range(args.rounds + 2):
        for s, (_, model, opt, batch) in runs.items():
            dt = step(model, opt, batch)
            if r >= 2:                       # two warm-up rounds
                times[s].append(dt)
    base = statistics.median(times[50_000])
    print(f"| crop_samples | frames | median step (s) | ratio | {args.steps} steps (min) |")
    print("|---|---|---|---|---|")
    for s, (recipe, *_rest) in runs.items():
        med = statistics.median(times[s])
        print(f"| {s} | {recipe.crop_frames} | {med:.3f} | {med / base:.2f} | {args.steps * med / 60:.1f} |")
    print(f"threads={args.threads}, batch={args.batch}, preset={args.preset}, rounds={args.rounds}, "
          f"spread (IQR/median) {np.subtract(*np.percentile(times[50_000], [75, 25])) / base:.2f} / "
          f"{np.subtract(*np.percentile(times[100_000], [75, 25])) / statistics.median(times[100_000]):.2f}")


if __name__ == "__main__":
    main()
