"""Pretrain one recipe on the real-music check set, then probe it against its random-init twin.

Runs the package's own stages (``mirkit mels`` / ``tokens`` / ``pretrain`` / ``extract``) on the
check set of ``build_checkset.py`` (train split only for pretraining, valid for the held-out loss
and probe selection, test scored once), then fits the linear probe of ``mirkit.eval.linear_probe``
(the probe stage's ``linear`` protocol: ridge/softmax regression, strength chosen on valid) on
clip embeddings (the mean of a clip's chunk embeddings) for each task:

- ``key``: 24-class accuracy (the score's key, transposed with the rendering);
- ``family``: 7-class accuracy (GM instrument family);
- ``instrument``: 14-class accuracy (the GM program: two per family, e.g. flute vs recorder, so
  unlike ``family`` it is not saturated by a random-init encoder);
- ``tempo``: R^2 of the rendering BPM.

Intervals: a paired percentile bootstrap over the test clips (2,000 resamples, 95 %) of
pretrained minus random-init, so both runs see the same resampled clips (Efron & Tibshirani's
paired bootstrap). A gain is "clear" when the whole interval is above zero.

CPU budget: every stage runs as a child process with ``threads=1``; the pretrain stage's CPU time
(user + sys of that process, ``resource.getrusage(RUSAGE_CHILDREN)``) is what the budget counts.
Wall time on a shared machine is not a budget.

    python bench/realmusic/bench_realmusic.py --cpu15 mt2          # = mirkit pretrain --preset mt2-cpu15
    python bench/realmusic/bench_realmusic.py --recipe mt2 --steps 500 --lr 2e-3 --name mt2-linear-s500 \\
        --pooling cls --probe-every 250                                # any other setting

Results go to ``<work>/runs/<name>/result.json`` and one line per run to ``<work>/results.tsv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_checkset import default_out  # noqa: E402

FEATURE_SET = {"myna": "mel16k", "contrastive": "mel16k-db", "mt2": "cqt22k", "muse-lq": "mel24k"}
TASKS = {"key": {"type": "key", "label": "key"}, "family": {"type": "multiclass", "label": "family"},
         "instrument": {"type": "multiclass", "label": "program"}, "tempo": {"type": "regression", "label": "tempo"}}
N_BOOT, LEVEL = 2000, 0.95
#: the extraction pooling each recipe's training preset is judged with (MT2: its key token, class token 1)
EVAL_POOLING = {"mt2": "cls"}


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], log: Path) -> float:
    """Run a mirkit stage; return its CPU seconds. Output goes to ``log``; a failure stops the bench."""
    before = cpu_children()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        sys.exit(f"{cmd[1]} failed (exit {rc}); see {log}")
    return cpu_children() - before


def yaml_inline(obj) -> str:
    return json.dumps(obj)   # JSON is YAML: --set KEY:=<json> replaces a mapping


# ----------------------------------------------------------------------------- probing
def clip_embeddings(url: str) -> tuple[np.ndarray, list[dict]]:
    from mirkit.eval.embeddings import Embeddings

    emb = Embeddings(url)
    x = np.stack([emb.chunks(i).astype(np.float64).mean(axis=0) for i in range(len(emb))])
    return x, list(emb.tracks)


def targets(task: str, tracks: list[dict]) -> tuple[np.ndarray, str]:
    column = TASKS[task]["label"]
    if TASKS[task]["type"] == "regression":
        return np.array([float(t[column]) for t in tracks]), "regression"
    from mirkit.eval.tasks import normalise_key

    labels = [normalise_key(t[column]) if task == "key" else str(t[column]) for t in tracks]
    classes = sorted(set(labels))
    return np.array([classes.index(v) for v in labels]), "multiclass"


def test_outputs(x: np.ndarray, y: np.ndarray, kind: str, split: np.ndarray) -> np.ndarray:
    """Test-split outputs of the linear probe fitted on train, strength chosen on valid."""
    from mirkit.eval.linear_probe import linear_probe

    tr, va, te = (split == "train"), (split == "valid"), (split == "test")
    res = linear_probe(x[tr], y[tr], x[va], y[va], kind, n_classes=int(y.max()) + 1 if kind == "multiclass" else None)
    return res.fit.outputs(x[te])[0].cpu().numpy()


def statistic(kind: str, out: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Accuracy (multiclass) or R^2 (regression) for each row of resampled indices ``idx`` (B, n)."""
    if kind == "multiclass":
        return (out.argmax(axis=1) == y)[idx].mean(axis=1)
    pred, yy = out[:, 0][idx], y[idx]
    ss_res = ((yy - pred) ** 2).sum(axis=1)
    ss_tot = ((yy - yy.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    return 1.0 - ss_res / np.maximum(ss_tot, 1e-12)


def compare(pre: str, rnd: str, seed: int = 0) -> dict[str, dict[str, float]]:
    xp, tracks = clip_embeddings(pre)
    xr, tracks_r = clip_embeddings(rnd)
    assert [t["track_id"] for t in tracks] == [t["track_id"] for t in tracks_r], "stores list different clips"
    split = np.array([t.get("split", "") for t in tracks])
    out: dict[str, dict[str, float]] = {}
    for task in TASKS:
        y, kind = targets(task, tracks)
        yt = y[split == "test"]
        op, orr = test_outputs(xp, y, kind, split), test_outputs(xr, y, kind, split)
        n = len(yt)
        full = np.arange(n)[None]
        idx = np.random.default_rng(seed).integers(0, n, size=(N_BOOT, n))
        diff = statistic(kind, op, yt, idx) - statistic(kind, orr, yt, idx)
        lo, hi = np.percentile(diff, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)])
        p, r = float(statistic(kind, op, yt, full)[0]), float(statistic(kind, orr, yt, full)[0])
        out[task] = {"pretrained": p, "random": r, "gain": p - r, "lo": float(lo), "hi": float(hi), "n_test": n}
    return out


# ----------------------------------------------------------------------------- stages
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkset", type=Path, default=default_out() / "manifest.csv")
    ap.add_argument("--work", type=Path, default=default_out().parent / "bench-realmusic")
    ap.add_argument("--cpu15", metavar="RECIPE", default=None,
                    help="train with the training preset `<RECIPE>-cpu15` (mirkit.train.presets; `mirkit models` lists them)")
    ap.add_argument("--rescore", nargs="+", metavar="NAME", help="probe finished runs again (current code and tasks)")
    ap.add_argument("--recipe", choices=tuple(FEATURE_SET))
    ap.add_argument("--name", help="run name (folder under <work>/runs)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--feature-set", default=None, help="feature set (default: the recipe's)")
    ap.add_argument("--custom", default=None, help="JSON: extra feature sets for the mels stage (name -> spec)")
    ap.add_argument("--pooling", default=None, help="extraction pooling (default: the model's)")
    ap.add_argument("--probe-every", type=int, default=None, help="online probes every N steps (curves)")
    ap.add_argument("--set", action="append", default=[], help="extra pretrain KEY=VALUE overrides")
    a = ap.parse_args(argv)
    if a.rescore:
        return rescore(a.work.resolve(), a.rescore)
    if a.cpu15:   # exactly what `mirkit pretrain --preset <recipe>-cpu15` trains
        from mirkit.train.presets import TRAINING_PRESETS

        name = a.cpu15 if a.cpu15.endswith("-cpu15") else f"{a.cpu15}-cpu15"
        if name not in TRAINING_PRESETS:
            sys.exit(f"no training preset {name!r} (has: {', '.join(TRAINING_PRESETS)})")
        tp = TRAINING_PRESETS[name]
        a.recipe, a.name, a.preset, a.steps = tp.recipe, a.name or name, name, tp.steps
        a.pooling = a.pooling or EVAL_POOLING.get(tp.recipe)
        a.probe_every = a.probe_every or max(tp.steps // 5, 1)
    if not (a.recipe and a.name and a.steps):
        ap.error("give --cpu15 RECIPE, or --recipe, --name and --steps")
    if not a.checkset.exists():
        sys.exit(f"{a.checkset}: no check set; run `make checkset` (bench/realmusic/build_checkset.py) first")
    mirkit = [sys.executable, "-c", "from mirkit.cli import main; main()"]
    work, rd = a.work.resolve(), (a.work / "runs" / a.name).resolve()
    rd.mkdir(parents=True, exist_ok=True)
    log = rd / "log.txt"
    fs = a.feature_set or FEATURE_SET[a.recipe]
    store = work / f"features-{fs}.zarr"
    t0 = time.time()
    if not (store / ".done").exists():
        custom = json.loads(a.custom) if a.custom else {}
        run(mirkit + ["mels", "--input", str(a.checkset), "--store", str(store), "--set", f"feature_sets=[{fs}]",
                      "--set", f"custom:={yaml_inline(custom)}", "--set", f"failures={work}/failures-{fs}.tsv",
                      "--set", f"summary={work}/features-{fs}.json", "--set", "threads=1", "--set", "device=cpu"], log)
        (store / ".done").write_text("")
    tokens = work / "tokens.zarr"
    if a.recipe == "muse-lq" and not (tokens / ".done").exists():
        run(mirkit + ["tokens", "--set", f"features={store}", "--set", f"out={tokens}", "--set",
                      f"quantizer={work}/quantizer.safetensors", "--set", f"metrics={work}/tokens.json",
                      "--set", "threads=1"], log)
        (tokens / ".done").write_text("")
    sets = [f"features={store}", f"tokens={tokens}", f"manifest={a.checkset}", f"out={rd}/model",
            f"log={rd}/live", f"summary={rd}/summary.json", "threads=1", "device=cpu",
            f"online_probe.manifest={a.checkset}"] + [f"steps={a.steps}"] * (not a.cpu15)   # a preset sets its steps
    sets += [f"lr={a.lr}"] * (a.lr is not None) + [f"batch_size={a.batch_size}"] * (a.batch_size is not None)
    sets += [f"online_probe.every={a.probe_every}"] * (a.probe_every is not None)
    import yaml

    params = yaml.safe_load(Path("params.yaml").read_text())   # the checkout's params, with the check set's tasks
    params["pretrain"]["online_probe"]["tasks"] = TASKS
    (rd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pre = mirkit + ["pretrain", "--params", str(rd / "params.yaml"), "--recipe", a.recipe] + (["--preset", a.preset] if a.preset else [])
    cpu = run(pre + [x for s in sets + a.set for x in ("--set", s)], log)
    pool = ["--set", f"pooling={a.pooling}"] if a.pooling else []
    for kind, flag in (("pretrained", "--pretrained"), ("random", "--random-init")):
        run(mirkit + ["extract", "--model", f"{rd}/model", "--out", f"{rd}/{kind}.zarr", flag,
                      "--set", f"manifest={a.checkset}", "--set", f"features={store}", "--set", "frames=false",
                      "--set", "threads=1", "--set", "device=cpu"] + pool, log)
    res = compare(f"{rd}/pretrained.zarr", f"{rd}/random.zarr")
    summary = json.loads((rd / "summary.json").read_text()) if (rd / "summary.json").exists() else {}
    result = {"name": a.name, "recipe": a.recipe, "preset": a.preset, "steps": a.steps, "lr": a.lr,
              "batch_size": a.batch_size, "pooling": a.pooling, "set": a.set, "pretrain_cpu_s": round(cpu, 1),
              "wall_s": round(time.time() - t0, 1), "probe": res, "pretrain_summary": summary}
    (rd / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    table = work / "results.tsv"
    new = not table.exists()
    with open(table, "a", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        if new:
            w.writerow(["name", "recipe", "steps", "lr", "pooling", "set", "cpu_s"]
                       + [f"{t}_{k}" for t in TASKS for k in ("pre", "rnd", "lo", "hi")])
        w.writerow([a.name, a.recipe, a.steps, a.lr, a.pooling, " ".join(a.set), round(cpu, 1)]
                   + [round(res[t][k], 3) for t in TASKS for k in ("pretrained", "random", "lo", "hi")])
    report(a.name, cpu, res)


def report(name: str, cpu: float, res: dict[str, dict[str, float]]) -> None:
    print(f"{name}: pretrain {cpu / 60:.1f} CPU min")
    for t, r in res.items():
        print(f"  {t:10s} pretrained {r['pretrained']:.3f}  random {r['random']:.3f}  "
              f"gain {r['gain']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]  (n={r['n_test']})")


def rescore(work: Path, names: list[str]) -> None:
    """Probe finished runs again with the current probe code and tasks (their stores are kept), so that
    runs made at different times are compared by one yardstick; updates each ``result.json``."""
    for name in names:
        rd = work / "runs" / name
        if not (rd / "result.json").exists():
            sys.exit(f"{rd}: no finished run to rescore")
        result = json.loads((rd / "result.json").read_text())
        result["probe"] = compare(f"{rd}/pretrained.zarr", f"{rd}/random.zarr")
        (rd / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        report(name, result["pretrain_cpu_s"], result["probe"])


if __name__ == "__main__":
    main()
