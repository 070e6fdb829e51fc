"""Batched vs one-configuration-at-a-time training of the 216-configuration JukeMIR probe grid.

Synthetic multiclass task: ``--rows`` random 768-d embeddings (80 % train, 20 % valid), 10 classes
from a random linear teacher. Every configuration trains for exactly ``--steps`` steps (early
stopping disabled so both modes do the same work), evaluating on valid every ``--eval-every``.
Batched: the four (batch size, hidden) stacks of 54 configurations. Sequential: ``--sample``
configurations per stack trained alone, timed, and extrapolated to the 54 of the stack.
Both modes run in the same process, side by side, on CPU.

    python bench/bench_probe_grid.py --steps 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mirkit import probe as P
from mirkit.tasks import TaskSpec, make_task


def synthetic(rows: int, dim: int, classes: int, seed: int) -> P.TrainData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    teacher = torch.randn(dim, classes, generator=g)
    y = (x @ teacher + 4 * torch.randn(rows, classes, generator=g)).argmax(1)
    n_train = int(0.8 * rows)
    task = make_task(TaskSpec("synthetic", "multiclass", ["y"]))
    task.fit([{"y": str(c)} for c in range(classes)])
    val_y = y[n_train:].numpy()

    def val_score(outputs: torch.Tensor) -> np.ndarray:   # one chunk per track: fusion is the identity
        return np.array([task.score(o.numpy(), val_y)["accuracy"] for o in outputs])

    return P.TrainData(x[:n_train], y[:n_train], x[n_train:], val_score, classes, task.loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--sample", type=int, default=2, help="configurations per stack timed alone")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--stack", type=int, default=6, help="also time stacks of this many configurations")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = synthetic(args.rows, args.dim, args.classes, seed=0)
    settings = P.TrainSettings(max_steps=args.steps, eval_every=args.eval_every, patience=10**9, seed=0)
    grid = list(enumerate(P.jukemir_grid()))
    stacks: dict[tuple[int, int], list] = {}
    for cid, c in grid:
        stacks.setdefault((c.batch_size, c.hidden), []).append((cid, c))

    rows, total_b, total_k, total_s = [], 0.0, 0.0, 0.0
    best = None
    for (bs, hidden), configs in sorted(stacks.items()):
        t0 = time.perf_counter()
        results = P.train_group(configs, data, settings)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        P.train_configs(configs, data, P.TrainSettings(**{**settings.__dict__, "stack": args.stack}))
        stacked = time.perf_counter() - t0
        sample = configs[:: max(1, len(configs) // args.sample)][: args.sample]
        t0 = time.perf_counter()
        for cfg in sample:
            P.train_group([cfg], data, settings)
        per_config = (time.perf_counter() - t0) / len(sample)
        sequential = per_config * len(configs)
        total_b, total_k, total_s = total_b + batched, total_k + stacked, total_s + sequential
        top = P.select(results)
        best = top if best is None or top.valid_score > best.valid_score else best
        rows.append((f"bs={bs}, {'mlp512' if hidden else 'linear'}", len(configs), batched, stacked, per_config,
                     sequential))

    device = "CPU"
    print(f"\nJukeMIR grid, {args.rows} x {args.dim} embeddings ({int(.8 * args.rows)} train / "
          f"{args.rows - int(.8 * args.rows)} valid), {args.classes} classes, {args.steps} steps per "
          f"configuration, valid every {args.eval_every}; torch threads {torch.get_num_threads()}, {device}\n")
    print(f"| group | configs | one stack of all (s) | stacks of {args.stack} (s) | one config (s) | "
          f"one at a time, extrapolated (s) | speed-up (best batched) |")
    print("|---|---|---|---|---|---|---|")
    for name, n, b, k, one, s in rows:
        print(f"| {name} | {n} | {b:.1f} | {k:.1f} | {one:.2f} | {s:.1f} | {s / min(b, k):.1f}x |")
    print(f"| **all** | 216 | {total_b:.1f} | {total_k:.1f} | | {total_s:.1f} | "
          f"**{total_s / min(total_b, total_k):.1f}x** |")
    print(f"\nbest valid accuracy {best.valid_score:.3f}: {best.config.label()}")


if __name__ == "__main__":
    main()
