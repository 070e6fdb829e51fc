"""Training-step time of the two ViT-1D recipes: ``contrastive`` (Emergent) and ``mt2``.

One step = forward of all views (2 for contrastive, 3 for MT2) + loss + backward + Adam step, on
synthetic batches already on the device. The recipes are timed interleaved (one step of each per
round) so drift on a shared machine hits both alike; medians over the timed rounds are reported
as a markdown table. A "sample" is one training example (one track's views). On CUDA the step
runs under bf16 autocast (SDPA attention); on CPU in fp32.

    python bench/bench_vit1d_recipes.py --threads 1                       # CPU, vit1d-tiny, batch 4
    python bench/bench_vit1d_recipes.py --device cuda --batch 128 --steps 20
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from timing import train_step_seconds

from mirkit.models.base import count_parameters
from mirkit.params import resolve
from mirkit.recipes.contrastive import ContrastiveParams, ContrastiveRecipe
from mirkit.recipes.mt2 import MT2Params, MT2Recipe


def synthetic_batch(recipe, n_bins: int, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch drawn through ``recipe.sample`` from random in-memory tracks (60 s each)."""

    class Tracks:
        frame_rate, attrs = 31.25, {}

        def __init__(self):
            rng = np.random.default_rng(0)
            self.n_bins = n_bins
            self.data = [rng.random((1900, n_bins), dtype=np.float32) for _ in range(batch)]

        def __len__(self):
            return len(self.data)

        def n_frames(self, t):
            return len(self.data[t])

        def read(self, t, start=0, length=None):
            return self.data[t][start:None if length is None else start + length]

    from mirkit.recipes.base import Sources
    sources, rng = Sources(Tracks()), np.random.default_rng(0)
    samples = [recipe.sample(sources, t, rng) for t in range(batch)]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])).to(device) for k in samples[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="vit1d-tiny")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    ap.add_argument("--mt2-objectives", default="both", choices=["both", "cpsd", "ntxent"])
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    recipes = {
        "contrastive": (ContrastiveRecipe(resolve(ContrastiveParams, {"preset": args.preset})), 128, 2),
        "mt2": (MT2Recipe(resolve(MT2Params, {"preset": args.preset, "objectives": args.mt2_objectives})), 99,
                2 if args.mt2_objectives == "ntxent" else 3),
    }
    runs = {}
    for name, (recipe, bins, views) in recipes.items():
        model = recipe.build_model().to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        runs[name] = (model, opt, synthetic_batch(recipe, bins, args.batch, device), views, recipe)
    times = {name: [] for name in runs}
    for i in range(args.warmup + args.steps):
        for name, (model, opt, batch, _, _) in runs.items():
            t = train_step_seconds(model, opt, batch, device)
            if i >= args.warmup:
                times[name].append(t)

    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"\nViT-1D recipes, preset {args.preset}, batch {args.batch}, device {device} ({dtype}), "
          f"{torch.get_num_threads()} CPU thread(s), median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| recipe | encoder params | input per view | crops/step | step (ms) | samples/s | crops/s |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, _, batch, views, _recipe) in runs.items():
        med = statistics.median(times[name])
        shape = "x".join(str(s) for s in batch["view1"].shape[1:])
        print(f"| {name} | {count_parameters(model.encoder) / 1e6:.2f} M | {shape} | {views * args.batch} | "
              f"{med * 1e3:.0f} | {args.batch / med:.1f} | {views * args.batch / med:.1f} |")


if __name__ == "__main__":
    main()
