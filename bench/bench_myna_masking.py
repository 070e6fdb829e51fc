"""Training-step time of Myna with 90 % token dropping vs none (same preset, batch and crop).

One step = forward of both views + NT-Xent + backward + Adam step (in a per-parameter Python loop,
torch's CPU default, and/or fused, as ``mirkit pretrain`` steps). The settings are timed
interleaved (one step of each per round) so drift on a shared machine hits both alike; the
median over the timed rounds is reported. On CUDA the step runs under bf16 autocast.

    python bench/bench_myna_masking.py --preset myna-small --batch 16 --crop 96 --device cpu
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import train_step_seconds

from mirkit.params import resolve
from mirkit.recipes.myna import MynaParams, MynaRecipe


def build(preset: str, patch: str, crop: int, mask_ratio: float, device: torch.device, fused: bool):
    torch.manual_seed(0)
    params = resolve(MynaParams, {"preset": preset, "patch": patch, "crop_frames": crop, "mask_ratio": mask_ratio})
    model = MynaRecipe(params).build_model().to(device)
    return model, torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-5, fused=fused, foreach=None if fused else False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="myna-small")
    ap.add_argument("--patch", default="square", choices=["square", "vertical", "hybrid"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--optimizer", default="both", choices=["loop", "fused", "both"],
                    help="Adam per parameter in a Python loop (torch's CPU default) or fused (what `mirkit pretrain` "
                         "uses); both: the four settings interleaved")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(args.batch, 128, args.crop, generator=gen).to(device) for k in ("view1", "view2")}
    optimizers = ["loop", "fused"] if args.optimizer == "both" else [args.optimizer]
    settings = {f"{name} ({opt} Adam)": (ratio, opt) for opt in optimizers
                for name, ratio in (("none", 0.0), (f"{args.mask_ratio:.0%}", args.mask_ratio))}
    runs = {name: build(args.preset, args.patch, args.crop, ratio, device, opt == "fused")
            for name, (ratio, opt) in settings.items()}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for i in range(args.warmup + args.steps):
        for name, (model, opt) in runs.items():
            elapsed = train_step_seconds(model, opt, batch, device)
            if i >= args.warmup:
                times[name].append(elapsed)

    n_tokens = next(iter(runs.values()))[0].encoder.encode(batch["view1"][:1]).hidden[-1].shape[1]
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"preset {args.preset}, patch {args.patch}, batch {args.batch}, crop {args.crop}, device {device}"
          f"{' (bf16 autocast)' if device.type == 'cuda' else ''}, torch threads {torch.get_num_threads()}, "
          f"{args.warmup} warm-up + {args.steps} timed steps (median)\n")
    print("| masking | tokens kept per view | step time (ms) |")
    print("|---|---|---|")
    for name, (ratio, _) in settings.items():
        kept = n_tokens - int(ratio * n_tokens)
        print(f"| {name} | {kept} / {n_tokens} | {medians[name]:.1f} |")
    print()
    for opt in optimizers:
        none, masked = (n for n in settings if n.endswith(f"({opt} Adam)"))
        print(f"speed-up with {args.mask_ratio:.0%} masking, {opt} Adam: {medians[none] / medians[masked]:.2f}x")


if __name__ == "__main__":
    main()
