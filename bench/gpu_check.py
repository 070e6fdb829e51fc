"""One GPU check, ready for the moment a CUDA device is available (`make gpu-check`, <= 10 minutes).

On a machine without CUDA it prints "no CUDA device" and exits 0. On a GPU, for each recipe at its
paper preset (the presets of bench/bench_stream.py's demand table):

* one bf16 training step (autocast, SDPA attention as the models use it on CUDA): eager and
  ``torch.compile``-d, median step time, samples/s, peak memory, MFU against the device's bf16 dense
  peak (FLOPs counted once with ``torch.utils.flop_counter``, bench/bench_mfu.py's counter);
* DDP over NCCL with one process (a one-rank process group on localhost): samples/s;
* the streaming loader (mirkit.data.stream, 8 worker processes) feeding the eager step from a
  synthetic store on local disk: GPU idle share = 1 - (time in steps / wall time);
* extract throughput: forward-only encoder windows/s in bf16.

Prints one table at the end (for docs/benchmarks.md).

    python bench/gpu_check.py [--steps 10] [--batch 0 (= per-recipe default)] [--skip-compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

#: dense bf16 peaks (FLOP/s) by device name fragment; unknown devices report MFU as n/a
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}
#: (recipe, params, per-GPU batch): the paper presets
CONFIGS = [
    ("myna", {"preset": "myna-22m", "mask_ratio": 0.9, "loss": "ntxent"}, 256),
    ("contrastive", {"preset": "vit1d-tiny"}, 256),
    ("mt2", {"preset": "vit1d-tiny"}, 256),
    ("muse-lq", {"preset": "brn-att-60m", "crop_frames": 3000}, 16),
]


def peak_of(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def build(recipe_name: str, params: dict, batch: int, device: torch.device):
    """(model, batch on device) of one recipe with random in-memory tracks (bench_mfu's _Tracks)."""
    from bench_mfu import _Tracks, make_batch

    from mirkit import recipes
    from mirkit.params import resolve
    from mirkit.recipes.base import Sources
    cls = recipes.get(recipe_name)
    recipe = cls(resolve(cls.Params, params))
    if recipe_name == "muse-lq":
        sources = Sources(_Tracks(8, 128, 6000), _Tracks(8, 1, 1500, high=8192))
        sources.tokens.data = [d[:, 0] for d in sources.tokens.data]
        recipe.params.mean, recipe.params.std, recipe.params.codebook_size, recipe.params.num_codebooks = 0.5, 0.3, 8192, 1
    else:
        sources = Sources(_Tracks(8, 99 if recipe_name == "mt2" else 128))
    torch.manual_seed(0)
    model = recipe.build_model().to(device).train()
    cpu_batch = make_batch(recipe, sources, batch)
    return recipe, sources, model, {k: v.to(device) for k, v in cpu_batch.items()}


def step_fn(module, model, opt):
    def step(batch):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def time_steps(step, batch, steps: int) -> float:
    for _ in range(2):
        step(batch)
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def loader_idle_share(recipe, model, batch_size: int, steps: int, device: torch.device) -> float:
    """Share of wall time the GPU waits for the streaming loader (8 workers, synthetic local store)."""
    import numpy as np

    from mirkit.data import store, stream
    from mirkit.recipes.base import Sources
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        sets = [("f", recipe.feature_set, 99 if recipe.name == "mt2" else 128, 6000)]
        srcs = []
        for folder, name, bins, frames in sets:
            fs, _ = store.create_or_open(f"{tmp}/{folder}.zarr", name, {"synthetic": True}, bins, 31.25)
            fs.append([(f"t{i}", "s", "fp", rng.random((frames, bins), np.float32)) for i in range(256)])
            srcs.append(store.open_set(f"{tmp}/{folder}.zarr", name))
        tokens = None
        if recipe.needs_tokens:
            tfs, _ = store.create_or_open(f"{tmp}/t.zarr", recipe.feature_set, {"synthetic": True}, 1, 25.0,
                                          dtype="int32")
            tfs.append([(f"t{i}", "s", "fp", rng.integers(0, 8192, (1500, 1)).astype(np.int32)) for i in range(256)])
            tokens = store.open_set(f"{tmp}/t.zarr", recipe.feature_set)
        sources = Sources(srcs[0], tokens)
        settings = stream.StreamSettings(block_mib=16, buffer=2, lanes=8, memory_gib=8, read_threads=2, repeat=8)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        step = step_fn(model, model, opt)
        loader = stream.make_loader(recipe, sources, list(range(256)), settings, batch=batch_size, seed=0, start=0,
                                    steps=steps + 2, rank=0, world=1, workers=8, pin_memory=True)
        it = iter(loader)
        step({k: v.to(device, non_blocking=True) for k, v in next(it).items()})   # warm-up, workers started
        torch.cuda.synchronize()
        busy, t0 = 0.0, time.perf_counter()
        for b in it:
            t = time.perf_counter()
            step({k: v.to(device, non_blocking=True) for k, v in b.items()})
            torch.cuda.synchronize()
            busy += time.perf_counter() - t
        return 1 - busy / (time.perf_counter() - t0)


def ddp_rate(model, batch, steps: int) -> float:
    import torch.distributed as dist
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    if not dist.is_initialized():
        dist.init_process_group("nccl", rank=0, world_size=1)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return time_steps(step_fn(ddp, model, opt), batch, steps)


@torch.no_grad()
def extract_rate(model, batch, steps: int) -> float:
    enc = model.encoder.eval()
    view = next(v for k, v in batch.items() if v.is_floating_point() and v.dim() == 3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(2):
            enc(view)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            enc(view)
        torch.cuda.synchronize()
    model.train()
    return steps * len(view) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="per-GPU batch; 0 = each recipe's default")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device; nothing to measure (exit 0). Run `make gpu-check` on a GPU machine.")
        return 0
    from bench_mfu import count_flops
    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    peak = peak_of(name)
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for recipe_name, params, default_batch in CONFIGS:
        bs = args.batch or default_batch
        row = {"recipe": f"{recipe_name} {params['preset']}", "batch": bs}
        try:
            recipe, _, model, batch = build(recipe_name, params, bs, device)
            flops, _ = count_flops(model, batch)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            torch.cuda.reset_peak_memory_stats()
            eager = time_steps(step_fn(model, model, opt), batch, args.steps)
            row.update(eager_sps=bs / eager, peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30,
                       mfu=flops / eager / peak if peak else float("nan"))
            if not args.skip_compile:
                compiled = torch.compile(model)
                t = time_steps(step_fn(compiled, model, opt), batch, args.steps)
                row.update(compiled_sps=bs / t, compiled_mfu=flops / t / peak if peak else float("nan"))
            row["ddp_sps"] = bs / ddp_rate(model, batch, args.steps)
            row["idle"] = loader_idle_share(recipe, model, bs, args.steps, device)
            row["extract_wps"] = extract_rate(model, batch, args.steps)
        except Exception as exc:  # noqa: BLE001 - one failing recipe must not hide the others' numbers
            row["error"] = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        rows.append(row)
        del model
        torch.cuda.empty_cache()
    print(f"\n{name}, bf16 autocast, SDPA, bf16 dense peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s, "
          f"torch {torch.__version__}")
    cols = [("batch", "{:d}"), ("eager_sps", "{:.0f}"), ("mfu", "{:.1%}"), ("compiled_sps", "{:.0f}"),
            ("compiled_mfu", "{:.1%}"), ("peak_gib", "{:.1f}"), ("ddp_sps", "{:.0f}"), ("idle", "{:.0%}"),
            ("extract_wps", "{:.0f}")]
    print(f"{'recipe':<24}" + "".join(f"{c:>14}" for c, _ in cols))
    for r in rows:
        print(f"{r['recipe']:<24}" + "".join(f"{fmt.format(r[c]) if c in r else '-':>14}" for c, fmt in cols)
              + (f"  {r['error']}" if "error" in r else ""))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
