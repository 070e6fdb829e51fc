"""DVC experiments compare pretraining runs: two `dvc exp run -S pretrain.steps=...`, then `dvc exp show`
lists the online-probe metric of both and `dvc plots diff` draws both curves (issue 15, done-when)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_copy import copy_repository, repo_env

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def _run(args, cwd, env, timeout=900):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def _scratch_repo(tmp_path: Path, env: dict) -> dict:
    params: dict = {}

    def tiny_params(dst: Path) -> None:
        params.update(yaml.safe_load((dst / "params.yaml").read_text()))
        params["synth"].update(n_clips=30, min_seconds=4.0, max_seconds=5.0)
        pre = params["pretrain"]
        pre.update(recipe="myna", preset="myna-tiny", steps=4, batch_size=8, warmup_steps=1, log_every=2,
                   val_every=2, val_batches=1, checkpoint_every=4, num_workers=0)
        pre["recipe_params"]["myna"]["crop_frames"] = 32
        pre["online_probe"] = {"manifest": "data/samples/manifest.csv", "every": 2,
                               "tasks": {"timbre": {"type": "multiclass", "label": "timbre"}}}
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    copy_repository(tmp_path, env, before_commit=tiny_params)
    return params


@pytest.mark.slow
def test_two_experiments_show_their_online_probe_metric_and_curves(tmp_path):
    if not (BIN / "dvc").exists():
        pytest.skip("dvc is not installed beside this python")
    env = repo_env(OMP_NUM_THREADS="1", PYTHONPATH=str(tmp_path))
    _scratch_repo(tmp_path, env)
    names = {}
    for steps in (4, 6):
        name = f"steps{steps}"
        res = _run([str(BIN / "dvc"), "exp", "run", "pretrain", "-n", name, "-S", f"pretrain.steps={steps}"], tmp_path, env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        names[name] = steps

    show = _run([str(BIN / "dvc"), "exp", "show", "--json"], tmp_path, env)
    assert show.returncode == 0, show.stderr[-3000:]
    rows = {}
    for baseline in json.loads(show.stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                rows[rev.get("name")] = rev["data"]["metrics"]
    assert set(names) <= set(rows), rows.keys()
    for name, steps in names.items():
        live = rows[name]["results/pretrain/live/metrics.json"]["data"]
        assert live["step"] == steps
        assert 0.0 <= live["probe"]["timbre"]["accuracy"] <= 1.0
        assert "loss" in live["val"] and "loss" in live["train"]

    diff = _run([str(BIN / "dvc"), "plots", "diff", *names, "--json"], tmp_path, env)
    assert diff.returncode == 0, diff.stderr[-3000:]
    plots = json.loads(diff.stdout)["data"]
    (plot,) = next(v for k, v in plots.items() if k.endswith("plots/metrics/probe/timbre/accuracy.tsv"))
    assert plot["revisions"] == list(names)
    steps: dict[str, list[int]] = {}
    for row in plot["content"]["data"]["values"]:
        steps.setdefault(row["rev"], []).append(int(row["step"]))
    assert steps == {"steps4": [0, 2, 4], "steps6": [0, 2, 4, 6]}, steps
