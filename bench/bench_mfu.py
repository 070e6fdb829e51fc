"""Model FLOPs utilisation (MFU) of a training step, and where the rest of the step goes.

For each model, one step is what ``mirkit pretrain`` does: forward of all views + loss, backward,
gradient clipping, AdamW step. FLOPs of forward + backward are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; elementwise work,
norms and the optimizer count as zero, as in the usual MFU definition). The peak is the best
fp32 matmul throughput of this machine measured in the same run (square ``--peak-size`` matmuls,
same threads). MFU = counted FLOPs / median step time / peak.

The step is timed in phases (forward, backward, clip, optimizer) with the models interleaved (one
step of each per round) so load on a shared machine hits all alike. The optimizer is timed in both
implementations torch offers on CPU: the per-parameter loop (torch's CPU default) and ``fused``.
A profile of one forward + backward per model splits self time into matmul / attention /
convolution / the rest (norms, activations, copies, gathers: memory-bound work that counts zero
FLOPs), and the FLOP counter's module breakdown says what still scales with all patches when Myna
drops 90 % of its tokens.

    python bench/bench_mfu.py --threads 1            # CPU, the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from mirkit.params import resolve
from mirkit.recipes.base import Sources


class _Tracks:
    """Random in-memory tracks for ``recipe.sample`` (60 s each)."""

    attrs: dict = {}

    def __init__(self, n: int, n_bins: int, n_frames: int = 1900, dtype=np.float32, high: int | None = None):
        rng = np.random.default_rng(0)
        self.n_bins = n_bins
        self.data = [rng.integers(0, high, (n_frames, n_bins)) if high else rng.random((n_frames, n_bins), dtype=dtype)
                     for _ in range(n)]

    def __len__(self) -> int:
        return len(self.data)

    def n_frames(self, t: int) -> int:
        return len(self.data[t])

    def read(self, t: int, start: int = 0, length: int | None = None) -> np.ndarray:
        return self.data[t][start:None if length is None else start + length]


def make_batch(recipe, sources: Sources, batch: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    samples = [recipe.sample(sources, t % len(sources.features), rng) for t in range(batch)]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def build(name: str, batch: int):
    """``(recipe, model, batch)`` of one benchmarked configuration."""
    from mirkit.recipes.contrastive import ContrastiveParams, ContrastiveRecipe
    from mirkit.recipes.mt2 import MT2Params, MT2Recipe
    from mirkit.recipes.muse_lq import MuseLQParams, MuseLQRecipe
    from mirkit.recipes.myna import MynaParams, MynaRecipe
    torch.manual_seed(0)
    if name.startswith("myna"):
        ratio = 0.9 if "masked" in name else 0.0
        recipe = MynaRecipe(resolve(MynaParams, {"preset": "myna-22m", "mask_ratio": ratio}))
        sources = Sources(_Tracks(batch, 128))
    elif name.startswith("contrastive"):
        recipe = ContrastiveRecipe(resolve(ContrastiveParams, {"preset": "vit1d-tiny"}))
        sources = Sources(_Tracks(batch, 128))
    elif name.startswith("mt2"):
        recipe = MT2Recipe(resolve(MT2Params, {"preset": "vit1d-tiny"}))
        sources = Sources(_Tracks(batch, 99))
    else:
        recipe = MuseLQRecipe(resolve(MuseLQParams, {"preset": "brn-sum-tiny"}))
        sources = Sources(_Tracks(batch, 128, 6000), _Tracks(batch, 1, 1500, high=8192))
        recipe.params.mean, recipe.params.std, recipe.params.codebook_size, recipe.params.num_codebooks = 0.5, 0.3, 8192, 1
        sources.tokens.data = [d[:, 0] for d in sources.tokens.data]
    model = recipe.build_model().train()
    return recipe, model, make_batch(recipe, sources, batch)


CONFIGS = ("myna-22m", "myna-22m masked 90%", "contrastive vit1d-tiny", "mt2 vit1d-tiny", "muse-lq brn-sum-tiny")


def count_flops(model, batch) -> tuple[float, dict[str, float]]:
    """Forward + backward FLOPs, and forward FLOPs per top-level module path (two levels deep)."""
    counter = FlopCounterMode(display=False, depth=3)
    torch.manual_seed(1)
    with counter:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    per_module = {k: float(sum(v.values())) for k, v in counter.get_flop_counts().items() if k != "Global"}
    return float(counter.get_total_flops()), per_module


@torch.no_grad()
def patch_embed_share(model, batch) -> tuple[float, float]:
    """Forward FLOPs of Myna's patch embedding of both views (all patches) and of the whole model."""
    kind = model.encoder.patch_kinds[0]
    with FlopCounterMode(display=False) as embed:
        for view in ("view1", "view2"):
            model.encoder.tokens(batch[view], kind)
    torch.manual_seed(1)
    with FlopCounterMode(display=False) as whole:
        model(batch)
    return float(embed.get_total_flops()), float(whole.get_total_flops())


def matmul_peak(size: int, repeats: int) -> float:
    """Best fp32 FLOP/s of a square matmul on this machine (the MFU denominator)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def timed_step(model, opts, batch, clip: float = 1.0) -> dict[str, float]:
    """Phases of one training step; each optimizer implementation is stepped on a copy of the state."""
    t = {}
    start = time.perf_counter()
    loss = model(batch)["loss"]
    t["forward"] = time.perf_counter() - start
    start = time.perf_counter()
    loss.backward()
    t["backward"] = time.perf_counter() - start
    for label, foreach in (("clip loop", False), ("clip foreach", True)):
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=foreach)
        t[label] = time.perf_counter() - start
    for label, opt in opts.items():
        start = time.perf_counter()
        opt.step()
        t[f"opt {label}"] = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return t


CATEGORIES = (("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
              ("attention", ("scaled_dot_product", "flash_attention")),
              ("convolution", ("convolution", "conv1d", "conv2d", "mkldnn_conv")))


def profile_categories(model, batch) -> dict[str, float]:
    """Share of self CPU time of one forward + backward per op category."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    shares: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        cat = next((c for c, keys in CATEGORIES if any(k in ev.key for k in keys)), "other (norms, activations, copies)")
        shares[cat] += ev.self_cpu_time_total
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    runs = {}
    for name in args.configs:
        recipe, model, batch = build(name, args.batch)
        flops, per_module = count_flops(model, batch)
        opts = {"loop": torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False),
                "fused": torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)}
        runs[name] = dict(model=model, batch=batch, flops=flops, per_module=per_module, opts=opts,
                          n_params=sum(p.numel() for p in model.parameters()), times=defaultdict(list))
    peaks = [matmul_peak(args.peak_size, 3)]
    for i in range(args.warmup + args.steps):
        for run in runs.values():
            torch.manual_seed(100 + i)
            t = timed_step(run["model"], run["opts"], run["batch"])
            if i >= args.warmup:
                for k, v in t.items():
                    run["times"][k].append(v)
        peaks.append(matmul_peak(args.peak_size, 1))
    peak = max(peaks)
    for run in runs.values():
        run["profile"] = profile_categories(run["model"], run["batch"])

    print(f"CPU, fp32, torch threads {torch.get_num_threads()}, batch {args.batch}, {args.warmup} warm-up + "
          f"{args.steps} timed rounds (median); matmul peak {peak / 1e9:.1f} GFLOP/s "
          f"({args.peak_size}^3 fp32, best of {len(peaks) + 2} in this run; median {statistics.median(peaks) / 1e9:.1f})\n")
    print("| model | params | GFLOP/step (fwd+bwd) | fwd | bwd | clip loop | clip foreach | AdamW loop | AdamW fused | "
          "step (loop / fused, ms) | MFU (loop / fused) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    steps = {}
    for name, run in runs.items():
        med = {k: statistics.median(v) for k, v in run["times"].items()}
        base = med["forward"] + med["backward"]
        loop, fused = base + med["clip loop"] + med["opt loop"], base + med["clip loop"] + med["opt fused"]
        steps[name] = (loop, fused)
        share = lambda k, med=med, loop=loop: f"{100 * med[k] / loop:.0f} %"
        print(f"| {name} | {run['n_params'] / 1e6:.1f} M | {run['flops'] / 1e9:.2f} | {share('forward')} | "
              f"{share('backward')} | {share('clip loop')} | {share('clip foreach')} | {share('opt loop')} | {share('opt fused')} | "
              f"{loop * 1e3:.0f} / {fused * 1e3:.0f} | {run['flops'] / loop / peak:.1%} / {run['flops'] / fused / peak:.1%} |")
    print("\nshares of the per-parameter-loop step (torch's CPU defaults: clip and AdamW loop over parameters); "
          "'fused' = the same with fused AdamW (what mirkit pretrain runs); MFU = counted FLOPs / step time / matmul peak\n")

    print("| model | " + " | ".join(c for c, _ in CATEGORIES) + " | other (norms, activations, copies) |")
    print("|---|" + "---|" * (len(CATEGORIES) + 1))
    for name, run in runs.items():
        prof = run["profile"]
        cols = [c for c, _ in CATEGORIES] + ["other (norms, activations, copies)"]
        print(f"| {name} | " + " | ".join(f"{100 * prof.get(c, 0):.0f} %" for c in cols) + " |")
    print("\nshare of profiled self CPU time of one forward + backward\n")

    if {"myna-22m", "myna-22m masked 90%"} <= set(runs):
        full, masked = runs["myna-22m"], runs["myna-22m masked 90%"]
        embed_fwd, model_fwd = patch_embed_share(masked["model"], masked["batch"])
        print("Myna token dropping (myna-22m, 48 tokens per view, 90 % dropped -> 5 kept):")
        print(f"- counted FLOPs: {full['flops'] / 1e9:.2f} -> {masked['flops'] / 1e9:.2f} GFLOP per step: "
              f"FLOP bound on the speed-up {full['flops'] / masked['flops']:.2f}x")
        print(f"- what still runs on ALL patches: the patch embedding (LayerNorm -> Linear -> LayerNorm, before "
              f"dropping): {embed_fwd / 1e9:.2f} of the masked model's {model_fwd / 1e9:.2f} forward GFLOP "
              f"({embed_fwd / model_fwd:.1%}), and its LayerNorms (memory-bound, zero counted FLOPs); the rest "
              f"scales with kept tokens")
        (lf, ff), (lm, fm) = steps["myna-22m"], steps["myna-22m masked 90%"]
        print(f"- measured speed-up: {lf / lm:.2f}x with torch's CPU defaults, {ff / fm:.2f}x with fused AdamW")
        med = {k: statistics.median(v) for k, v in masked["times"].items()}
        print(f"- masked step without the optimizer and clipping (forward + backward only): "
              f"{statistics.median(full['times']['forward']) + statistics.median(full['times']['backward']):.3f} s -> "
              f"{med['forward'] + med['backward']:.3f} s")


if __name__ == "__main__":
    main()
