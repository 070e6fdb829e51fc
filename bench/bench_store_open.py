"""What the reliability checks cost: opening a frame set with and without its open-time checks (index
vs arrays, chunk files listed), and appending with and without the writer lock + commit re-read,
side by side on one local store.

Usage: python bench/bench_store_open.py [--tracks 2000] [--frames 200] [--bins 128] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mirkit.data import store


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracks", type=int, default=2000)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--bins", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "s.zarr")
        fs, _ = store.create_or_open(url, "mel", {"bench": 1}, a.bins, 31.25)
        block = [(f"t{i}", f"t{i}.wav", "fp", rng.random((a.frames, a.bins), np.float32)) for i in range(100)]
        timed: dict[str, list[float]] = {"locked": [], "raw": []}
        for k in range(2 * a.repeat):   # interleaved, so both see the same store sizes
            kind = "locked" if k % 2 == 0 else "raw"
            items = [(f"{t}-{k}", *rest) for t, *rest in block]
            start = time.perf_counter()
            fs.append(items) if kind == "locked" else fs._append(items)
            timed[kind].append(time.perf_counter() - start)
        locked, raw = statistics.median(timed["locked"]), statistics.median(timed["raw"])
        rest = a.tracks - len(fs)
        for lo in range(0, max(rest, 0), 100):
            fs.append([(f"u{lo + i}", "s", "fp", rng.random((a.frames, a.bins), np.float32))
                       for i in range(min(100, rest - lo))])

        checked = best(lambda: store.open_set(url, "mel"), a.repeat)
        keep = store.missing_chunks, store._verify_index
        store.missing_chunks, store._verify_index = (lambda arr, rows: []), (lambda *x: None)
        try:
            unchecked = best(lambda: store.open_set(url, "mel"), a.repeat)
        finally:
            store.missing_chunks, store._verify_index = keep
        opened = store.open_set(url, "mel")
        epoch = best(lambda: [opened.read(i) for i in range(len(opened))], 1)
    print(f"store: {len(opened)} tracks x {a.frames} frames x {a.bins} bins (float16), local disk")
    print("| operation | with checks (s) | without (s) | ratio |")
    print("|---|---|---|---|")
    print(f"| open_set | {checked:.4f} | {unchecked:.4f} | {checked / unchecked:.2f}x |")
    print(f"| append 100 tracks | {locked:.4f} | {raw:.4f} | {locked / raw:.2f}x |")
    print(f"| (reading every track once) | {epoch:.2f} | | open = {100 * checked / epoch:.1f} % of it |")


if __name__ == "__main__":
    main()
