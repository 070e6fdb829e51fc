"""The demo's whole ``probe`` stage next to its ``extract`` stage, measured in the same run.

Run from a checkout where ``dvc repro extract`` has built the demo (``data/features.zarr``,
``models/pretrain``). Times, as subprocesses with the same environment: both ``extract`` runs of the
stage (pretrained and random-init, into a temporary folder), then ``mirkit probe`` on the demo's
embeddings (5 tasks x 2 runs) with each protocol of ``--protocols``, and optionally the same probe stage
with the code of ``--old-ref`` (a temporary git worktree, ``--old-protocol``). Wall-clock and CPU
(user + system) seconds, including Python start-up and imports, as DVC would run them; on a shared
machine the CPU seconds are the steadier measure.

    python bench/bench_probe_stage.py --protocols linear,quick --old-ref d2b7178
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of a subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] + b[0], a[1] + b[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocols", default="linear")
    ap.add_argument("--old-ref", default="", help="also time the probe stage of this git ref")
    ap.add_argument("--old-protocol", default="quick", help="the protocol the old ref runs")
    args = ap.parse_args()
    root = Path.cwd()
    env = dict(os.environ, PYTHONPATH=str(root))
    tmp = Path(tempfile.mkdtemp())
    mirkit = [sys.executable, "-m", "mirkit"]
    extract = add(run(mirkit + ["extract", "--out", str(tmp / "pretrained.zarr")], env),
                  run(mirkit + ["extract", "--random-init", "--out", str(tmp / "random.zarr")], env))
    rows = [("extract (pretrained + random-init)", extract),
            ("`mirkit probe --help` (start-up and imports only)", run(mirkit + ["probe", "--help"], env))]
    for protocol in args.protocols.split(","):
        rows.append((f"probe, {protocol} protocol", run(mirkit + ["probe", "--set", f"protocol={protocol}",
                                                                 "--set", f"out={tmp}/{protocol}/probe.json",
                                                                 "--set", f"plot={tmp}/{protocol}/probe.png"], env)))
    if args.old_ref:
        old = tmp / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.old_ref], check=True, capture_output=True)
        try:
            # `python -m` would put the current checkout first on sys.path: import the old package explicitly
            old_cli = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(old)!r}); "
                                             "from mirkit.cli import app; app(prog_name='mirkit')"]
            rows.append((f"probe, code of {args.old_ref} ({args.old_protocol} protocol)",
                         run(old_cli + ["probe", "--set", f"protocol={args.old_protocol}",
                                        "--set", f"out={tmp}/old/probe.json", "--set", f"plot={tmp}/old/probe.png"],
                             dict(env, PYTHONPATH=str(old)))))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], check=False, capture_output=True)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"\ndemo stages, wall clock incl. start-up (OMP_NUM_THREADS={threads}, {os.cpu_count()} CPUs)\n")
    print("| stage | wall (s) | CPU (s) | CPU ratio to extract |")
    print("|---|---|---|---|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {cpu / extract[1]:.2f} |")


if __name__ == "__main__":
    main()
