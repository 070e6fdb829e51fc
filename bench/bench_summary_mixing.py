"""Forward+backward time vs sequence length: rotary MHSA vs SummaryMixing at the same width.

Times the MuSE-LQ block stack (``--scope encoder``: Branchformer/Conformer blocks + final norm)
or the global branch alone (``--scope mixer``) on random 25 Hz token sequences (10 s, 30 s,
120 s of audio by default), both variants side by side in one run, and fits the growth exponent
(slope of log time vs log length) for each. Prints a markdown table.

    python bench/bench_summary_mixing.py                       # CPU, fp32, width 256, 2 blocks
    python bench/bench_summary_mixing.py --device cuda --width 1024 --depth 12 --batch 4   # bf16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mirkit.models.muse import MuseEncoder

LABELS = {"mhsa": "MHSA (rotary)", "summary": "SummaryMixing"}


def build(attention: str, args: argparse.Namespace) -> MuseEncoder:
    return MuseEncoder(dim=args.width, depth=args.depth, block=args.block, attention=attention,
                       heads=args.heads, conv_dim=8, units=4 * args.width, dropout=0.0,
                       sm_local_hidden=[args.width // 2], sm_local_out=args.width // 2,
                       sm_summary_hidden=[args.width // 2], sm_summary_out=args.width // 2)


def step_fn(model: MuseEncoder, scope: str):
    if scope == "mixer":
        mixer = model.blocks[0].mixer
        return lambda z: mixer(z)[0]
    return lambda z: model.run_blocks(z).hidden[-1]


def time_once(fn, z: torch.Tensor, device: torch.device, dtype: torch.dtype | None, clock) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = fn(z)
    out.float().square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 30, 120])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--block", choices=["branchformer", "conformer"], default="branchformer")
    ap.add_argument("--scope", choices=["encoder", "mixer"], default="encoder")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                    help="cpu = process CPU time (robust on a shared CPU box); auto = cpu on CPU, wall on CUDA")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else None   # bf16 autocast on CUDA, fp32 on CPU
    clock_name = args.clock if args.clock != "auto" else ("wall" if device.type == "cuda" else "cpu")
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    torch.manual_seed(0)

    steps = [int(round(s * 25)) for s in args.seconds]         # 25 Hz after 4x subsampling
    models = {a: build(a, args).to(device).train() for a in LABELS}
    times: dict[str, list[float]] = {a: [] for a in LABELS}
    for n in steps:
        z = torch.randn(args.batch, n, args.width, device=device, requires_grad=True)
        for attention, model in models.items():              # side by side, same input
            fn = step_fn(model, args.scope)
            time_once(fn, z, device, dtype, clock)                  # warm-up
            runs = [time_once(fn, z, device, dtype, clock) for _ in range(args.repeats)]
            times[attention].append(min(runs))
            model.zero_grad(set_to_none=True)

    slopes = {a: float(np.polyfit(np.log(steps), np.log(t), 1)[0]) for a, t in times.items()}
    print(f"device={device.type} dtype={'bf16' if dtype else 'fp32'} scope={args.scope} block={args.block} "
          f"width={args.width} depth={args.depth} heads={args.heads} batch={args.batch} "
          f"threads={torch.get_num_threads()} clock={clock_name} (best of {args.repeats}, fwd+bwd)\n")
    print(f"| audio (s) | steps (25 Hz) | {LABELS['mhsa']} (ms) | {LABELS['summary']} (ms) | MHSA / SM |")
    print("|---:|---:|---:|---:|---:|")
    for s, n, ta, ts in zip(args.seconds, steps, times["mhsa"], times["summary"], strict=True):
        print(f"| {s:g} | {n} | {ta * 1e3:.1f} | {ts * 1e3:.1f} | {ta / ts:.2f} |")
    print(f"| **growth exponent** (log-log slope) | | **{slopes['mhsa']:.2f}** | **{slopes['summary']:.2f}** | |")


if __name__ == "__main__":
    main()
