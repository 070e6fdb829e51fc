"""The linear protocol vs scikit-learn's LogisticRegression(lbfgs), on the same standardised rows.

Synthetic 10-class task: ``--rows`` training rows of ``--dim`` features (random scales and offsets),
plus as many validation and test rows, labels from a random linear teacher with noise. Both fit every
strength of the grid (``mirkit.eval.linear_probe.LAMBDAS``; scikit-learn's ``C = 1 / (n * lambda)``), choose it
on validation and score test once. mirkit solves the grid together; scikit-learn fits one ``C`` at a
time (default ``tol=1e-4``, the same gradient scale as mirkit's default). Best of ``--repeat`` runs each,
interleaved, in one process.

    python bench/bench_probe_linear.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mirkit.eval.linear_probe import LAMBDAS, choose, fit_linear, one_hot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.rows
    x = (rng.normal(size=(3 * n, args.dim)) * rng.uniform(0.5, 2, args.dim) + rng.normal(size=args.dim)).astype(np.float32)
    teacher = rng.normal(size=(args.dim, args.classes)) / np.sqrt(args.dim)
    y = (x @ teacher + 0.7 * rng.normal(size=(3 * n, args.classes))).argmax(1)
    tr, va, te = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)

    def ours():
        fit = fit_linear(x[tr], one_hot(y[tr], args.classes), "softmax")
        valid = (fit.outputs(x[va]).argmax(-1).numpy() == y[va]).mean(-1)
        best = choose(valid)
        test = (fit.take(best).outputs(x[te])[0].argmax(-1).numpy() == y[te]).mean()
        return fit.lambdas[best], valid[best], test, fit.iterations

    def sklearn():
        scaler = StandardScaler().fit(x[tr])
        a, b, c = scaler.transform(x[tr]), scaler.transform(x[va]), scaler.transform(x[te])
        fits = [LogisticRegression(C=1 / (n * lam), max_iter=1000).fit(a, y[tr]) for lam in LAMBDAS]
        valid = np.array([(f.predict(b) == y[va]).mean() for f in fits])
        best = choose(valid)
        return LAMBDAS[best], valid[best], (fits[best].predict(c) == y[te]).mean(), [int(f.n_iter_[0]) for f in fits]

    t_ours, t_sk = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        r_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r_sk = sklearn()
        t_sk.append(time.perf_counter() - t0)
    a, b = min(t_ours), min(t_sk)
    print(f"\n{n} train / {n} valid / {n} test rows x {args.dim}, {args.classes} classes, {len(LAMBDAS)} strengths "
          f"({LAMBDAS[0]:g} .. {LAMBDAS[-1]:g}); torch threads {torch.get_num_threads()}; best of {args.repeat}\n")
    print("| solver | whole grid (s) | chosen lambda | valid acc | test acc | iterations |")
    print("|---|---|---|---|---|---|")
    print(f"| mirkit linear (batched L-BFGS) | {a:.2f} | {r_ours[0]:g} | {r_ours[1]:.4f} | {r_ours[2]:.4f} | {r_ours[3]} |")
    print(f"| sklearn LogisticRegression(lbfgs), one C at a time | {b:.2f} | {r_sk[0]:g} | {r_sk[1]:.4f} | "
          f"{r_sk[2]:.4f} | {sum(r_sk[3])} ({', '.join(map(str, r_sk[3]))}) |")
    print(f"\ntime ratio mirkit / sklearn: {a / b:.2f}x; test accuracy difference {100 * (r_ours[2] - r_sk[2]):+.2f} points")


if __name__ == "__main__":
    main()
