"""Why does MT2's loss not fall? Per-objective curves, gradient norms per token, the CPSD
prediction over the circle of fifths, and learning-rate / warm-up sensitivity, on the sample clips.

The training step is the one of ``mirkit pretrain`` (same example stream, per-step seeding,
AdamW with warm-up + cosine, clipping at 1.0). Every ``--diag-every`` steps, on a fixed batch:

* gradient norm per token: |dL/dh| of each objective (CPSD, NT-Xent) at the input of the blocks
  (layer 0) for class token 1 (CPSD's), class token 2 (NT-Xent's) and the mean over frame tokens;
* the CPSD prediction on the held-out clips (first segment, crop offset 0): the mean |z| of the
  key phasor (0 = flat profile, 1 = one pitch class) and the histogram of its phase over the 12
  positions of the circle of fifths; a key-signature read-out (phase position vs the clip's true
  key signature, best global rotation: CPSD fixes the key only up to a rotation).

    python bench/diagnose_mt2.py --steps 300                                  # one run, curves
    python bench/diagnose_mt2.py --steps 150 --sweep-lr 5e-4 2e-3 5e-3 --sweep-warmup 0 20
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from mirkit.data.manifest import read_manifest
from mirkit.objectives.contrastive import nt_xent
from mirkit.objectives.cpsd import cpsd_terms, key_phasor
from mirkit.train.loop import ExampleStream, PretrainParams, lr_factor, make_recipe, open_sources, param_groups

PITCH = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "F": 5, "F#": 6, "Gb": 6, "G": 7,
         "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11}


def key_signature(label: str, c: int = 7) -> int:
    """Position of a key's signature on the circle of CPSD's ``c`` (relative major's tonic x c mod 12;
    c = 7: circle of fifths, c = 1: semitones)."""
    tonic, mode = label.split()
    pc = PITCH[tonic] + (3 if mode.startswith("min") else 0)
    return (c * pc) % 12


def forward_terms(model, batch):
    """CPSD (sum of terms) and NT-Xent of the MT2 model, plus the layer-0 tokens (the blocks' input)."""
    b = batch["view1"].shape[0]
    out = model.encoder.encode(torch.cat([batch["view1"], batch["view2"], batch["view3"]]), layers=(0, -1))
    h = out.hidden[0]
    cls = out.hidden[-1][:, : model.encoder.n_cls]
    y1, y2, y3 = model.key_profiles(cls).split(b)
    cpsd = sum(cpsd_terms(y1, y2, y3, batch["shift"], model.c).values())
    if model.head is None:
        return cpsd, None, h
    p = model.head(cls[: 2 * b, model.contrastive_token])
    return cpsd, nt_xent(p[:b], p[b:], model.temperature), h


def token_grad_norms(model, batch) -> dict[str, float]:
    """|dL/dh| per objective at the blocks' input (layer 0): class token 1, class token 2 and the mean
    over sequence (frame) tokens, i.e. how much of each objective reaches each token."""
    model.eval()
    cpsd, ntx, h = forward_terms(model, batch)
    out = {}
    n_cls = model.encoder.n_cls
    for name, loss in (("cpsd", cpsd), ("ntxent", ntx)):
        if loss is None:
            continue
        g = torch.autograd.grad(loss, h, retain_graph=True)[0].norm(dim=-1)   # (views*b, tokens)
        out[f"{name}_cls1"] = float(g[:, 0].mean())
        if n_cls == 2:
            out[f"{name}_cls2"] = float(g[:, 1].mean())
        out[f"{name}_seq"] = float(g[:, n_cls:].mean())
    model.train()
    return out


@torch.no_grad()
def key_readout(model, crops: torch.Tensor, signatures: np.ndarray) -> dict[str, object]:
    model.eval()
    cls = model.encoder.encode(crops, layers=(-1,)).cls_tokens(-1)
    z = key_phasor(model.key_profiles(cls), model.c)
    model.train()
    pos = np.round(np.angle(z.numpy()) / (2 * math.pi / 12)).astype(int) % 12
    hist = np.bincount(pos, minlength=12)
    acc = max(float(np.mean((pos - r) % 12 == signatures)) for r in range(12))
    return {"mean_abs_z": float(z.abs().mean()), "phase_hist": hist.tolist(), "key_signature_acc": acc}


def held_out_crops(recipe, sources, manifest: str, split: str) -> tuple[torch.Tensor, np.ndarray]:
    tracks = {t.track_id: t for t in read_manifest(manifest) if t.split == split}
    feats = sources.features
    crops, sigs = [], []
    p = recipe.params
    for i, t in enumerate(feats.tracks):
        if t.track_id in tracks:
            frames = feats.read(i)[: p.segment_frames]
            if len(frames) < p.segment_frames:
                continue
            crops.append(np.ascontiguousarray(frames.T[: p.crop_bins], dtype=np.float32))
            sigs.append(key_signature(tracks[t.track_id].labels["key"], p.c))
    return torch.from_numpy(np.stack(crops)), np.array(sigs)


class StandardisedBins:
    """A feature set whose every CQT bin (absolute, before cropping) is standardised with the train
    tracks' mean and std: removes the spectral envelope all clips share while keeping a crop offset
    an exact transposition (the same absolute bin gets the same statistics in every view). The
    silence rule keeps reading the raw STONE-scaled values."""

    def __init__(self, frames, tracks: list[int]):
        self.raw, self.tracks, self.attrs, self.n_bins = frames, frames.tracks, frames.attrs, frames.n_bins
        data = np.concatenate([frames.read(t) for t in tracks]).astype(np.float64)
        self.mean, self.std = data.mean(0).astype(np.float32), data.std(0).astype(np.float32) + 1e-6

    def n_frames(self, t: int) -> int:
        return self.raw.n_frames(t)

    def read(self, t: int, start: int = 0, length: int | None = None) -> np.ndarray:
        return (self.raw.read(t, start, length) - self.mean) / self.std


def run(args, lr: float, warmup: int, log: bool = True) -> dict:
    p = PretrainParams(recipe="mt2", recipe_params={"mt2": {"preset": args.preset, "segment_frames": args.segment_frames,
                                                             "objectives": args.objectives,
                                                             "frame_norm": not args.no_frame_norm, "c": args.c}},
                       features=args.features, manifest=args.manifest, splits=["train"], steps=args.steps,
                       batch_size=args.batch, lr=lr, warmup_steps=warmup, seed=args.seed)
    recipe = make_recipe(p)
    sources, tracks = open_sources(p, recipe)
    recipe.prepare(sources)
    if args.standardise_bins:
        from mirkit.recipes import mt2
        sources.features = StandardisedBins(sources.features, tracks)
        raw_power = mt2.cqt_power
        mt2.cqt_power = lambda frames: raw_power(frames * sources.features.std + sources.features.mean)
    torch.manual_seed(p.seed)
    model = recipe.build_model().train()
    opt = torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr, betas=tuple(p.betas), fused=True)
    stream = ExampleStream(recipe, sources, tracks, p.seed)
    diag_batch = default_collate([stream[10 ** 9 + k] for k in range(args.batch)])
    crops, sigs = held_out_crops(recipe, sources, args.manifest, "valid")
    curves: dict[str, list] = {"step": [], "loss": [], "cpsd": [], "ntxent": [], "grad_norm": []}
    summary_extra = {"objectives": args.objectives, "standardise_bins": args.standardise_bins, "preset": args.preset,
                     "frame_norm": not args.no_frame_norm, "c": args.c}
    diags = []
    t0 = time.perf_counter()
    for step in range(p.steps):
        if step % args.diag_every == 0:
            diags.append({"step": step, **token_grad_norms(model, diag_batch), **key_readout(model, crops, sigs)})
        for group in opt.param_groups:
            group["lr"] = p.lr * lr_factor(step, p)
        torch.manual_seed(p.seed * 1_000_003 + step * 4099)
        batch = default_collate([stream[step * p.batch_size + j] for j in range(p.batch_size)])
        out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip, foreach=True)
        opt.step()
        for k in ("loss", "cpsd", "ntxent"):
            curves[k].append(float(out[k].detach()) if k in out else float("nan"))
        curves["step"].append(step + 1)
        curves["grad_norm"].append(float(gn))
    diags.append({"step": p.steps, **token_grad_norms(model, diag_batch), **key_readout(model, crops, sigs)})
    seconds = time.perf_counter() - t0
    k = max(1, min(10, p.steps // 10))
    summary = {**summary_extra, "lr": lr, "warmup": warmup, "steps": p.steps, "seconds": seconds,
               **{f"{n}_first": float(np.mean(curves[n][:k])) for n in ("cpsd", "ntxent")},
               **{f"{n}_last": float(np.mean(curves[n][-k:])) for n in ("cpsd", "ntxent")},
               "mean_abs_z_last": diags[-1]["mean_abs_z"], "key_signature_acc_first": diags[0]["key_signature_acc"],
               "key_signature_acc_last": diags[-1]["key_signature_acc"]}
    if log:
        print(f"lr {lr:g} warm-up {warmup}: cpsd {summary['cpsd_first']:.3f} -> {summary['cpsd_last']:.3f}, "
              f"ntxent {summary['ntxent_first']:.3f} -> {summary['ntxent_last']:.3f}, |z| {summary['mean_abs_z_last']:.3f}, "
              f"key-signature read-out {summary['key_signature_acc_first']:.2f} -> {summary['key_signature_acc_last']:.2f} "
              f"({seconds:.0f} s)", flush=True)
    return {"summary": summary, "curves": curves, "diagnostics": diags}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", default="data/features.zarr")
    ap.add_argument("--manifest", default="data/samples/manifest.csv")
    ap.add_argument("--preset", default="vit1d-micro")
    ap.add_argument("--segment-frames", type=int, default=172)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--diag-every", type=int, default=50)
    ap.add_argument("--sweep-lr", type=float, nargs="*", default=[])
    ap.add_argument("--sweep-warmup", type=int, nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objectives", default="both", choices=["both", "cpsd"])
    ap.add_argument("--standardise-bins", action="store_true", help="standardise each CQT bin (train statistics)")
    ap.add_argument("--c", type=int, default=7, choices=[1, 5, 7, 11], help="CPSD circle (7 = fifths, 1 = semitones)")
    ap.add_argument("--no-frame-norm", action="store_true",
                    help="feed the raw STONE-scaled CQT (the recipe before its per-frame LayerNorm)")
    ap.add_argument("--out", default="results/diagnose_mt2.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for lr in args.sweep_lr or [args.lr]:
        for warmup in args.sweep_warmup or [args.warmup]:
            results.append(run(args, lr, warmup))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    if len(results) == 1:
        print("\n| step | " + " | ".join(k for k in results[0]["diagnostics"][0] if k not in ("step", "phase_hist"))
              + " | phase histogram (circle of fifths) |")
        for d in results[0]["diagnostics"]:
            print(f"| {d['step']} | " + " | ".join(f"{v:.3g}" for k, v in d.items() if k not in ("step", "phase_hist"))
                  + f" | {d['phase_hist']} |")
    print("\n| lr | warm-up | CPSD first -> last | NT-Xent first -> last | mean abs z (end) | key-signature read-out |")
    print("|---|---|---|---|---|---|")
    for r in results:
        s = r["summary"]
        print(f"| {s['lr']:g} | {s['warmup']} | {s['cpsd_first']:.3f} -> {s['cpsd_last']:.3f} | "
              f"{s['ntxent_first']:.3f} -> {s['ntxent_last']:.3f} | {s['mean_abs_z_last']:.3f} | "
              f"{s['key_signature_acc_first']:.2f} -> {s['key_signature_acc_last']:.2f} |")


if __name__ == "__main__":
    main()
