"""Pretraining step time of the demo's model with torch's default threads (one per core) vs 1 thread vs
``threads: null`` (auto: the cores not already busy), on whatever else the machine is doing.

The settings are timed interleaved (one step of each per round; ``torch.set_num_threads`` switches between
them) so that load from other processes hits all of them alike; the median over the timed rounds is
reported, with the load average seen. Run it once on an idle machine and once on a busy one to see why
`threads` exists (what `mirkit <stage> --help` says about it comes from here).

    python bench/bench_threads.py --preset myna-small --batch 32 --crop 96
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from timing import train_step_seconds

from mirkit.params import auto_threads, resolve
from mirkit.recipes.myna import MynaParams, MynaRecipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="myna-small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=7)
    args = ap.parse_args()

    default = torch.get_num_threads()    # torch's default, unless OMP_NUM_THREADS is set
    if os.environ.get("OMP_NUM_THREADS"):
        default = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    auto = auto_threads()
    settings = {f"one per core ({default})": default, "1": 1, f"auto ({auto})": auto}
    torch.manual_seed(0)
    params = resolve(MynaParams, {"preset": args.preset, "crop_frames": args.crop})
    model = MynaRecipe(params).build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(0)
    batch = {k: torch.rand(args.batch, 128, args.crop, generator=gen) for k in ("view1", "view2")}
    times: dict[str, list[float]] = {name: [] for name in settings}
    loads = []
    for i in range(args.warmup + args.steps):
        for name, n in settings.items():
            torch.set_num_threads(n)
            elapsed = train_step_seconds(model, opt, batch, torch.device("cpu"))
            if i >= args.warmup:
                times[name].append(elapsed)
        loads.append(os.getloadavg()[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"myna {args.preset}, batch {args.batch}, crop {args.crop}, {cores} cores, load average "
          f"{min(loads):.1f}-{max(loads):.1f} during the run, {args.warmup} warm-up + {args.steps} timed steps "
          f"(median)\n")
    print("| torch threads | step time (s) | samples/s |")
    print("|---|---|---|")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name in settings:
        print(f"| {name} | {medians[name]:.3f} | {args.batch / medians[name]:.1f} |")
    first = list(settings)[0]
    for name in list(settings)[1:]:
        print(f"\n{name} thread(s) vs {first}: {medians[first] / medians[name]:.2f}x the speed", end="")
    print()


if __name__ == "__main__":
    main()
