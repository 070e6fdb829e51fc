"""Throughput of `mirkit mels` vs its floor (decoding + resampling alone) on the same files.

Usage: python bench/bench_mels.py [--files 24] [--seconds 20] [--sets mel16k] [--threads 1]
Prints seconds of audio processed per wall second for both, and the share of the total spent on
features + storage (everything above the floor).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mirkit.data.audio import load_audio
from mirkit.data.features import PRESETS, FrontEnd
from mirkit.data.mels import MelsParams, run


def make_files(folder: Path, n: int, seconds: float, sr: int = 44100) -> float:
    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * (110 + 20 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(folder / f"clip{i:03d}.flac", np.stack([x, x[::-1]], 1), sr)   # stereo FLAC, 44.1 kHz
    return n * seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--sets", default="mel16k", help="comma-separated feature sets")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sets = args.sets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "audio").mkdir()
        audio_s = make_files(tmp / "audio", args.files, args.seconds)
        rates = sorted({PRESETS[s].sample_rate for s in sets})
        files = sorted((tmp / "audio").glob("*.flac"))
        load_audio(files[0], rates[0])                           # warm-up: resampler cache, and the
        for name in sets:                                         # one-time nnAudio/scipy import (~2 s)
            FrontEnd(PRESETS[name])
        t0 = time.perf_counter()
        for f in files:
            for r in rates:
                load_audio(f, r)
        floor = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(MelsParams(input=str(tmp / "audio"), store=str(tmp / "f.zarr"), feature_sets=sets, num_workers=0,
                       failures=str(tmp / "f.tsv"), summary=str(tmp / "s.json")))
        total = time.perf_counter() - t0
    print("| what | wall s | audio s / s |\n|---|---|---|")
    print(f"| decode + resample only (floor) | {floor:.2f} | {audio_s / floor:.0f} |")
    print(f"| mirkit mels ({', '.join(sets)}) | {total:.2f} | {audio_s / total:.0f} |")
    print(f"\nfeatures + storage share of the total: {(total - floor) / total:.0%} "
          f"({args.files} files x {args.seconds:g} s, stereo 44.1 kHz FLAC, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
