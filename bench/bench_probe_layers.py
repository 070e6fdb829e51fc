"""The demo's probe stage on every layer (``layers: best`` / ``weighted``) next to one layer (``layers: -1``).

Run from a checkout where ``dvc repro extract`` has built the demo (``data/features.zarr``,
``models/pretrain``). Both runs' layered stores (``mirkit extract --set layer=all``) are written into
a temporary folder (or taken from ``--stores DIR`` holding ``pretrained.zarr`` and ``random.zarr``),
then, interleaved round by round so drift on a shared machine hits every setting alike:

- in-process: ``mirkit.eval.probe_stage.run`` (5 tasks x 2 runs, bootstrap intervals and the paired
  comparison included), process CPU seconds and wall seconds;
- the whole stage as DVC runs it: ``mirkit probe`` as a subprocess (start-up and imports included).

The median over rounds is reported with the ratio to one layer. CPU seconds are the steadier measure
on a shared machine.

    python bench/bench_probe_layers.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stores", default=None, help="folder with layered pretrained.zarr and random.zarr")
    ap.add_argument("--settings", default="-1,best,weighted", help="probe.layers values to time")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    env = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="bench_layers_")
    stores = Path(args.stores) if args.stores else Path(tmp)
    if not args.stores:
        for name, flag in (("pretrained", []), ("random", ["--random-init"])):
            wall, cpu = child([sys.executable, "-m", "mirkit", "extract", *flag, "--set", "layer=all",
                               "--out", str(stores / f"{name}.zarr")], env)
            print(f"extract {name} layer=all: {wall:.1f} s wall, {cpu:.1f} s CPU")
    from mirkit.eval.layered import open_layers
    from mirkit.eval.probe_stage import ProbeParams, open_stores, run
    from mirkit.eval.tasks import parse_tasks
    from mirkit.params import load
    runs = {"pretrained": str(stores / "pretrained.zarr"), "random-init": str(stores / "random.zarr")}
    print(f"layers in the store: {list(open_layers(runs['pretrained']))}")
    settings = [int(s) if s.lstrip("-").isdigit() else s for s in args.settings.split(",")]
    inproc: dict[object, list[tuple[float, float]]] = {s: [] for s in settings}
    stage: dict[object, list[tuple[float, float]]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for s in settings:
            p = load(ProbeParams, "probe", None, {"runs": runs, "layers": s, "out": f"{tmp}/probe.json",
                                                  "plot": f"{tmp}/probe.png"})
            opened = open_stores(p, parse_tasks(p.tasks))
            t0, c0 = time.perf_counter(), time.process_time()
            run(p, opened)
            inproc[s].append((time.perf_counter() - t0, time.process_time() - c0))
            stage[s].append(child([sys.executable, "-m", "mirkit", "probe", "--set", f"layers={s}",
                                   "--set", f"runs:={{pretrained: {runs['pretrained']}, random-init: {runs['random-init']}}}",
                                   "--set", f"out={tmp}/stage.json", "--set", f"plot={tmp}/stage.png"], env))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    base = settings[0]
    for title, table in (("in-process probe work (5 tasks x 2 runs)", inproc), ("whole `mirkit probe` stage", stage)):
        print(f"\n{title}: median over {args.rounds} rounds")
        print("| layers | wall s | CPU s | CPU ratio to layers=" + str(base) + " |")
        print("|---|---|---|---|")
        cpu0 = statistics.median(c for _, c in table[base])
        for s, vals in table.items():
            wall, cpu = statistics.median(w for w, _ in vals), statistics.median(c for _, c in vals)
            print(f"| {s} | {wall:.1f} | {cpu:.1f} | {cpu / cpu0:.2f} |")


if __name__ == "__main__":
    main()
