"""Embedding every layer of a recording: one forward pass (``layer="all"``) vs one pass per layer.

Both go through the Python API on the same features (decoding and the front end are excluded: the
features are computed once). The two settings are timed interleaved (one run of each per round) so
drift on a shared machine hits both alike; the median over the timed rounds is reported, with the
ratio. Outputs are checked equal before timing.

    python bench/bench_all_layers.py --preset myna-small --recipe myna --seconds 60 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from mirkit.api import load_encoder
from mirkit.data.features import PRESETS as FEATURES
from mirkit.params import resolve
from mirkit.recipes import get
from mirkit.train import checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="myna")
    ap.add_argument("--preset", default="myna-small")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cls = get(args.recipe)
    recipe = cls(resolve(cls.Params, {"preset": args.preset}))
    torch.manual_seed(0)
    model = recipe.build_model()
    with tempfile.TemporaryDirectory() as tmp:
        config = checkpoint.make_config(recipe, FEATURES[recipe.feature_set].to_dict(), 0, {})
        checkpoint.save_model_folder(f"{tmp}/model", model.encoder, config)
        enc = load_encoder(f"{tmp}/model", device=args.device)
    rate = enc.sample_rate
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(args.seconds * rate))).astype(np.float32)
    feats = enc.features(wave, sample_rate=rate)

    def one_pass():
        return [e for _, e in enc.frozen.embed_tracks([(0, feats)], "all", None, True)][0]

    def per_layer():
        return [[e for _, e in enc.frozen.embed_tracks([(0, feats)], layer, None, True)][0]
                for layer in enc.all_layers]

    every, singles = one_pass(), per_layer()
    for i, single in enumerate(singles):
        np.testing.assert_allclose(every.chunks[i], single.chunks, atol=1e-5)
        np.testing.assert_allclose(every.frames[i], single.frames, atol=1e-5)
    times: dict[str, list[float]] = {"one pass": [], "one pass per layer": []}
    for _ in range(args.rounds):
        for name, fn in (("one pass", one_pass), ("one pass per layer", per_layer)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.recipe}/{args.preset}, {args.seconds:g} s of audio, {len(enc.all_layers)} layers, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.rounds}")
    for name, t in med.items():
        print(f"  {name:20s} {t * 1000:8.1f} ms")
    print(f"  ratio (per layer / one pass): {med['one pass per layer'] / med['one pass']:.2f}x")


if __name__ == "__main__":
    main()
