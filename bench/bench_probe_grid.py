"""The JukeMIR grid (216 configurations): today's implementation vs the one before (a git ref), side by side.

Synthetic multiclass task: ``--rows`` random embeddings (80 % train, 20 % valid), ``--classes`` classes from a
random linear teacher. Timing: every configuration trains exactly ``--steps`` steps (early stopping off,
so both implementations do the same work), validation every ``--eval-every`` steps (JukeMIR: 8). The old
implementation is loaded from ``git show <ref>:mirkit/eval/probe.py`` and run with its CPU default (stacks of 6);
the new one with whole groups and with stacks of 6. Selection: the whole grid with early stopping
(``--select-*``; patience in evaluations) through both, printing each one's chosen configuration.
Both run in the same process.

    python bench/bench_probe_grid.py --steps 64 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mirkit.eval import probe as P
from mirkit.eval.tasks import TaskSpec, make_task

OLD_REF = "d2b7178"   # main before the fast grid (mirkit/eval/probe.py with autograd and per-configuration loops)


def load_old(ref: str):
    src = subprocess.run(["git", "show", f"{ref}:mirkit/eval/probe.py"], capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "probe_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("probe_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["probe_old"] = mod
    spec.loader.exec_module(mod)
    return mod


def synthetic(rows: int, dim: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g) * (1 + torch.rand(dim, generator=g)) + torch.randn(dim, generator=g)
    teacher = torch.randn(dim, classes, generator=g)
    y = (x @ teacher / dim ** 0.5 + 1.5 * torch.randn(rows, classes, generator=g)).argmax(1)
    n_train = int(0.8 * rows)
    task = make_task(TaskSpec("synthetic", "multiclass", ["y"]))
    task.fit([{"y": str(c)} for c in range(classes)])
    val_y = y[n_train:].numpy()

    def old_val_score(outputs: torch.Tensor) -> np.ndarray:   # the old per-configuration scoring
        return np.array([task.score(o.numpy(), val_y)["accuracy"] for o in outputs])

    def new_val_score(outputs: torch.Tensor) -> np.ndarray:   # one chunk per track: fusion is the identity
        return task.primary_scores(outputs, val_y)

    return (x[:n_train], y[:n_train], x[n_train:], classes, task, old_val_score, new_val_score)


def data_for(old, parts):
    x, y, vx, classes, task, old_score, new_score = parts
    return (old.TrainData(x, y, vx, old_score, classes, task.loss),
            P.TrainData(x, y, vx, new_score, classes, task.output_grad))


def groups():
    out: dict[tuple[int, int], list] = {}
    for cid, c in enumerate(P.jukemir_grid()):
        out.setdefault((c.batch_size, c.hidden), []).append((cid, c))
    return sorted(out.items())


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--old-ref", default=OLD_REF)
    ap.add_argument("--select-rows", type=int, default=1000)
    ap.add_argument("--select-dim", type=int, default=64)
    ap.add_argument("--select-patience", type=int, default=16)
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    old = load_old(args.old_ref)

    if not args.skip_timing:
        old_data, new_data = data_for(old, synthetic(args.rows, args.dim, args.classes, seed=0))
        kw = dict(max_steps=args.steps, eval_every=args.eval_every, patience=10**9, seed=0)
        rows, tot = [], np.zeros(3)
        for (bs, hidden), configs in groups():
            t_old = timed(lambda c=configs: old.train_configs(c, old_data, old.TrainSettings(**kw, stack=6)))
            t_all = timed(lambda c=configs: P.train_configs(c, new_data, P.TrainSettings(**kw, stack=0)))
            t_six = timed(lambda c=configs: P.train_configs(c, new_data, P.TrainSettings(**kw, stack=6)))
            tot += (t_old, t_all, t_six)
            rows.append((f"bs={bs}, {'mlp512' if hidden else 'linear'}", len(configs), t_old, t_all, t_six))
        print(f"\nJukeMIR grid, {args.rows} x {args.dim} ({int(.8 * args.rows)} train / "
              f"{args.rows - int(.8 * args.rows)} valid), {args.classes} classes, {args.steps} steps per "
              f"configuration, valid every {args.eval_every}; torch threads {torch.get_num_threads()}, CPU; "
              f"old = {args.old_ref}\n")
        print("| group | configs | old, stacks of 6 (s) | new, one stack (s) | new, stacks of 6 (s) | speed-up |")
        print("|---|---|---|---|---|---|")
        for name, n, a, b, c in rows:
            print(f"| {name} | {n} | {a:.1f} | {b:.1f} | {c:.1f} | {a / min(b, c):.1f}x |")
        print(f"| **all** | 216 | {tot[0]:.1f} | {tot[1]:.1f} | {tot[2]:.1f} | **{tot[0] / min(tot[1], tot[2]):.1f}x** |")

    # selection with early stopping, whole grid, both implementations
    old_data, new_data = data_for(old, synthetic(args.select_rows, args.select_dim, args.classes, seed=1))
    kw = dict(max_steps=100_000, eval_every=8, patience=args.select_patience, seed=0)
    t0 = time.perf_counter()
    r_old = old.train_configs(list(enumerate(old.jukemir_grid())), old_data, old.TrainSettings(**kw, stack=6))
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_new = P.train_configs(list(enumerate(P.jukemir_grid())), new_data, P.TrainSettings(**kw, stack=0))
    t_new = time.perf_counter() - t0
    a, b = old.select(r_old), P.select(r_new)
    print(f"\nselection, {args.select_rows} x {args.select_dim}, early stopping (every 8 steps, patience "
          f"{args.select_patience}), seed 0: old {t_old:.1f} s, new {t_new:.1f} s ({t_old / t_new:.1f}x)")
    print(f"old: #{a.config_id} {a.config.label()} valid {a.valid_score:.4f} (steps {sum(r.steps for r in r_old)})")
    print(f"new: #{b.config_id} {b.config.label()} valid {b.valid_score:.4f} (steps {sum(r.steps for r in r_new)})")
    print("same configuration selected" if a.config_id == b.config_id else "DIFFERENT configuration selected")
    top_old = sorted(r_old, key=lambda r: (-r.valid_score, r.config_id))[:5]
    top_new = sorted(r_new, key=lambda r: (-r.valid_score, r.config_id))[:5]
    print("top 5 old:", [(r.config_id, round(r.valid_score, 4)) for r in top_old])
    print("top 5 new:", [(r.config_id, round(r.valid_score, 4)) for r in top_new])


if __name__ == "__main__":
    main()
