"""Which CQT input lets MT2's CPSD token leave the constant-profile plateau (docs/training.md, "MT2").

Two parts, both CPSD-only vit1d-micro, 16-frame segments, batch 8, AdamW (lr 1e-3, betas 0.9/0.98,
no weight decay, clipping 1.0), the recipe's own views and shifts:

* ``spectrum``: share of each standardised 84-bin frame's variance (DC removed) at 5/12 cycles per
  bin (what CPSD's c = 7 coefficient reads in crop coordinates) and at 1/12 (c = 1), for the sample
  clips and for CQT-like tonal tracks (``tests/test_mt2.py``'s generator) with adjacent-bin leakage;
* ``train``: held-out CPSD after ``--steps`` on one input condition.

    python bench/mt2_input_study.py spectrum
    python bench/mt2_input_study.py train --data tonal --floor 1e-4 --leak 0.1
    python bench/mt2_input_study.py train --data samples --c 1 --steps 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from memory_source import MemorySource  # noqa: E402
from test_chroma_key import leaky  # noqa: E402
from test_mt2 import _tonal_tracks  # noqa: E402

from mirkit.data import store  # noqa: E402
from mirkit.data.manifest import read_manifest  # noqa: E402
from mirkit.params import resolve  # noqa: E402
from mirkit.recipes.base import Sources  # noqa: E402
from mirkit.recipes.mt2 import MT2Params, MT2Recipe  # noqa: E402


def sample_clips(features: str, manifest: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    fs = store.open_set(features, "cqt22k")
    split = {t.track_id: t.split for t in read_manifest(manifest)}
    arrays = [(fs.read(i).astype(np.float32), split[t.track_id]) for i, t in enumerate(fs.tracks)]
    return [a for a, s in arrays if s == "train"], [a for a, s in arrays if s == "valid"]


def tonal(floor: float, leak: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    train, valid = _tonal_tracks(84, 48, seed=0, floor=floor), _tonal_tracks(18, 48, seed=1, floor=floor)
    return (leaky(train, leak), leaky(valid, leak)) if leak else (train, valid)


def spectrum(args) -> None:
    sets = {"sample clips": sample_clips(args.features, args.manifest)[0]}
    for leak in (0.0, 0.1, 0.25):
        sets[f"tonal, -40 dB floor, leak {leak:g}"] = tonal(1e-4, leak)[0]
    print("| input | variance share at 5/12 cycles/bin (c = 7) | at 1/12 (c = 1) |\n|---|---|---|")
    for name, tracks in sets.items():
        f = np.concatenate([t[:, :84] for t in tracks]).astype(np.float64)
        f = (f - f.mean(1, keepdims=True)) / (f.std(1, keepdims=True) + 1e-9)
        power = np.abs(np.fft.rfft(f, axis=1)) ** 2
        freqs = np.fft.rfftfreq(84)
        total = power[:, 1:].sum(1)
        share = {k: float(np.mean(power[:, np.argmin(np.abs(freqs - k / 12))] / total)) for k in (5, 1)}
        print(f"| {name} | {share[5]:.4f} | {share[1]:.4f} |")


def train(args) -> None:
    torch.manual_seed(args.seed)
    tr, va = sample_clips(args.features, args.manifest) if args.data == "samples" else tonal(args.floor, args.leak)
    recipe = MT2Recipe(resolve(MT2Params, {"preset": "vit1d-micro", "segment_frames": args.frames, "objectives": "cpsd",
                                           "c": args.c, "frame_norm": not args.no_frame_norm}))
    src, vsrc = Sources(MemorySource(tr)), Sources(MemorySource(va))
    recipe.prepare(src)
    model = recipe.build_model()

    def stack(samples):
        return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}

    held_out = stack([recipe.sample(vsrc, t % len(va), np.random.default_rng(1000 + t)) for t in range(64)])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                out = model.eval()(held_out)
            model.train()
            print(f"step {step:5d}  held-out CPSD {float(out['cpsd']):.3f}  (pos {float(out['cpsd_pos']):.3f}, "
                  f"equi {float(out['cpsd_equi1']):.3f} + {float(out['cpsd_equi2']):.3f})  "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        if step == args.steps:
            break
        batch = stack([recipe.sample(src, int(t), rng) for t in rng.integers(0, len(tr), args.batch)])
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["spectrum", "train"])
    ap.add_argument("--data", default="tonal", choices=["tonal", "samples"])
    ap.add_argument("--floor", type=float, default=1e-4, help="tonal: noise floor (power; a fundamental is 1)")
    ap.add_argument("--leak", type=float, default=0.0, help="tonal: power spread to each neighbouring bin")
    ap.add_argument("--c", type=int, default=7, choices=[1, 5, 7, 11])
    ap.add_argument("--no-frame-norm", action="store_true")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", default="data/features.zarr")
    ap.add_argument("--manifest", default="data/samples/manifest.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spectrum(args) if args.part == "spectrum" else train(args)


if __name__ == "__main__":
    main()
