"""Streaming loader supply vs a GPU's demand, per loader process, from a cold store.

Usage: python bench/bench_stream.py [--gib 2] [--memory-gib 0.5] [--seconds 20] [--latency-ms 20]
       [--repeat 1 4] [--dir /tmp/mirkit-bench-stream]

1. Writes a synthetic ``mel16k``-shaped store (128 bins, float16, 31.25 frames/s, tracks of 2-5 min
   of random values: incompressible, so bytes on disk = bytes decoded) of ``--gib``, several times
   the loader's ``--memory-gib`` (current window + read-ahead of one lane).
2. Measures Myna examples/s of one loader process (the main process: ``num_workers: 0``, one read-ahead
   thread pool) in three ways: from RAM (``in_memory: true``, the set loaded first), streamed from the
   local store with the page cache dropped (``echo 3 > /proc/sys/vm/drop_caches``; the table says when
   the machine refused), and streamed through an fsspec filesystem that sleeps ``--latency-ms`` per
   request (a stand-in for object storage), each for ``--repeat`` examples per read track.
3. Counts forward+backward FLOPs per example of every recipe at its paper preset
   (``torch.utils.flop_counter``, bench/bench_mfu.py's counter) and converts them to the examples/s
   one GPU consumes at 40 % of an H100's dense bf16 peak (989 TFLOP/s). Supply of the other recipes
   is the measured bytes/s divided by the bytes their feature set stores per track (derived, not
   measured: the crop itself costs far less than the read).

Prints one table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from torch.utils.data import DataLoader

from mirkit.data import store, stream
from mirkit.data.features import PRESETS
from mirkit.params import resolve
from mirkit.recipes.base import Sources

H100_BF16 = 989e12
TARGET_MFU = 0.40
FPS = 16000 / 512


class LatencyFS(LocalFileSystem):
    """Local files behind a fixed delay per request (open / ranged read), like an object store."""

    protocol = "slowfile"
    delay = 0.02
    requests = 0

    def _open(self, path, *args, **kwargs):
        LatencyFS.requests += 1
        time.sleep(self.delay)
        return super()._open(path, *args, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        LatencyFS.requests += 1
        time.sleep(self.delay)
        return super().cat_file(path, start, end, **kwargs)


def write_store(url: str, gib: float) -> tuple[int, int]:
    rng = np.random.default_rng(0)
    spec = PRESETS["mel16k"]
    fs, _ = store.create_or_open(url, "mel16k", spec.to_dict(), 128, FPS, dtype="float16")
    total, n = 0, 0
    while total < gib * (1 << 30):
        batch = []
        for _ in range(16):
            frames = int(rng.integers(int(120 * FPS), int(300 * FPS)))
            batch.append((f"t{n:06d}", "synthetic", "fp", rng.random((frames, 128), np.float32).astype(np.float16)))
            total += frames * 256
            n += 1
        fs.append(batch)
    return n, total


def drop_page_cache() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def myna(**extra):
    from mirkit.recipes.myna import MynaParams, MynaRecipe
    return MynaRecipe(resolve(MynaParams, {"preset": "myna-22m", "mask_ratio": 0.9, **extra}))


def timed(batches, seconds: float) -> float:
    it = iter(batches)
    next(it)                                    # first window read / set load is start-up
    t0, n = time.perf_counter(), 0
    for b in it:
        n += len(b["index"])
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def ram_rate(url: str, seconds: float) -> float:
    from mirkit.train.loop import ExampleStream, batch_indices
    feats = store.open_set(url, "mel16k").load_into_memory()
    recipe = myna()
    loader = DataLoader(ExampleStream(recipe, Sources(feats), list(range(len(feats))), 0),
                        batch_sampler=batch_indices(0, 10 ** 6, 32, 0, 1), num_workers=0)
    return timed(loader, seconds)


def stream_rate(url: str, seconds: float, memory_gib: float, repeat: int) -> tuple[float, float]:
    """Examples/s and decoded MB/s of one streaming loader process (one lane, its window + read-ahead)."""
    feats = store.open_set(url, "mel16k")
    block_mib = memory_gib * 1024 / 32   # 4 blocks + 4 read ahead, with room for the reads' rounding to shards
    settings = stream.StreamSettings(block_mib=block_mib, buffer=4, lanes=1, memory_gib=memory_gib,
                                     read_threads=2, repeat=repeat)
    batches = stream.make_loader(myna(), Sources(feats), list(range(len(feats))), settings, batch=32, seed=0,
                                 start=0, steps=10 ** 6, rank=0, world=1, workers=0)
    rate = timed(batches, seconds)
    mean_track = feats.total_frames / len(feats) * 256
    return rate, rate / repeat * mean_track / 1e6


def demand() -> list[tuple[str, str, float, float]]:
    """``(recipe, preset, FLOPs per example, bytes stored per track of its feature set per second of audio)``."""
    from bench_mfu import _Tracks, count_flops, make_batch

    from mirkit.recipes.contrastive import ContrastiveParams, ContrastiveRecipe
    from mirkit.recipes.mt2 import MT2Params, MT2Recipe
    from mirkit.recipes.muse_lq import MuseLQParams, MuseLQRecipe
    rows = []
    configs = [
        ("myna", "myna-22m, 90 % masked", myna(loss="ntxent"), Sources(_Tracks(2, 128)), 128 * 2 * FPS),
        ("contrastive", "vit1d-tiny", ContrastiveRecipe(resolve(ContrastiveParams, {"preset": "vit1d-tiny"})),
         Sources(_Tracks(2, 128)), 128 * 2 * FPS),
        ("mt2", "vit1d-tiny", MT2Recipe(resolve(MT2Params, {"preset": "vit1d-tiny"})), Sources(_Tracks(2, 99)),
         99 * 2 * 22050 / 512),
        ("muse-lq", "brn-att-60m, 30 s", MuseLQRecipe(resolve(MuseLQParams, {"preset": "brn-att-60m",
                                                                              "crop_frames": 3000})),
         Sources(_Tracks(2, 128, 6000), _Tracks(2, 1, 1500, high=8192)), 128 * 2 * 100 + 4 * 25),
    ]
    for name, preset, recipe, sources, bps in configs:
        if name == "muse-lq":
            recipe.params.mean, recipe.params.std = 0.5, 0.3
            recipe.params.codebook_size, recipe.params.num_codebooks = 8192, 1
            sources.tokens.data = [d[:, 0] for d in sources.tokens.data]
        torch.manual_seed(0)
        model = recipe.build_model().train()
        flops, _ = count_flops(model, make_batch(recipe, sources, 2))
        rows.append((name, preset, flops / 2, bps))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=2.0, help="store size")
    ap.add_argument("--memory-gib", type=float, default=0.5, help="loader memory bound (window + read-ahead)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per mode")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--procs", type=int, default=8, help="loader processes per GPU for the supply column")
    ap.add_argument("--dir", default="/tmp/mirkit-bench-stream")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fsspec.register_implementation("slowfile", LatencyFS, clobber=True)
    LatencyFS.delay = args.latency_ms / 1000

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    url = str(root / "features.zarr")
    t = time.perf_counter()
    n, size = write_store(url, args.gib)
    print(f"store: {n} tracks, {size / (1 << 30):.2f} GiB ({size / (args.memory_gib * (1 << 30)):.1f}x the loader's "
          f"{args.memory_gib} GiB), written in {time.perf_counter() - t:.0f} s")

    rates: dict[str, tuple[float, float]] = {}
    dropped = drop_page_cache()
    for r in args.repeat:
        dropped = drop_page_cache() and dropped
        rates[f"cold local, repeat {r}"] = stream_rate(url, args.seconds, args.memory_gib, r)
        LatencyFS.requests = 0
        rates[f"{args.latency_ms:.0f} ms/request, repeat {r}"] = stream_rate(
            f"slowfile://{url}", args.seconds, args.memory_gib, r)
    ram = ram_rate(url, args.seconds)
    print(f"\npage cache dropped before each cold run: {'yes' if dropped else 'NO (not permitted here)'}")
    print(f"{'Myna loader, one process':<34} {'examples/s':>11} {'MB/s read':>10}")
    print(f"{'RAM (in_memory: true)':<34} {ram:>11.0f} {'-':>10}")
    for mode, (ex, mbs) in rates.items():
        print(f"{'stream, ' + mode:<34} {ex:>11.0f} {mbs:>10.0f}")

    print(f"\nGPU demand at {TARGET_MFU:.0%} of an H100's bf16 dense peak vs {args.procs} loader processes "
          f"(supply scaled by each recipe's stored bytes per track of {size / n / 256 / FPS:.0f} s)")
    header = f"{'recipe':<12} {'preset':<22} {'GFLOP/ex':>9} {'demand ex/s':>12}"
    modes = list(rates)
    print(header + "".join(f" {m:>30}" for m in modes))
    mean_seconds = size / n / 256 / FPS
    for name, preset, flops, bps in demand():
        need = TARGET_MFU * H100_BF16 / flops
        cells = []
        for m in modes:
            repeat = int(m.rsplit(" ", 1)[1])
            supply = rates[m][1] * 1e6 / (bps * mean_seconds) * repeat * args.procs
            cells.append(f"{supply:>9.0f} ({supply / need:>5.2f}x)")
        print(f"{name:<12} {preset:<22} {flops / 1e9:>9.1f} {need:>12.0f}" + "".join(f" {c:>30}" for c in cells))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
