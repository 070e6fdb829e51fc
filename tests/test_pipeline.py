"""End to end: `dvc repro` of the real dvc.yaml and params.yaml (the README's main job) in a scratch copy, then an
experiment compared with `dvc exp show`, `dvc metrics diff` and `dvc plots diff`."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 1500


def _run(args, cwd, env, timeout=TIMEOUT):
    """Run in a new process group and kill the whole group on timeout (dvc's stage commands are its
    children: killing dvc alone would leave a `mirkit pretrain` running)."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, args))} timed out after {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    """The helper above, on a shell that starts a grandchild: no process of the group survives."""
    pid_file = tmp_path / "child.pid"
    with pytest.raises(pytest.fail.Exception, match="timed out"):
        _run(["bash", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], tmp_path, dict(os.environ), timeout=2)
    child = int(pid_file.read_text())
    try:
        os.kill(child, 0)
        alive = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True).stdout
        assert alive.strip().startswith("Z") or not alive.strip(), f"grandchild {child} still running"
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_pipeline_and_then_only_what_changed(tmp_path):
    if not (BIN / "dvc").exists():
        pytest.skip("dvc is not installed beside this python")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files + ["dvc.yaml", "params.yaml"]:
        if (ROOT / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tmp_path / rel)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True)
    dvc = str(BIN / "dvc")

    first = _run([dvc, "repro"], tmp_path, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    metrics = json.loads((tmp_path / "results" / "probe.json").read_text())
    assert set(metrics) == {"pretrained", "random-init"}
    assert set(metrics["pretrained"]) == set(params["probe"]["tasks"])
    assert (tmp_path / "models" / "pretrain" / "LATEST").is_file()
    log = (tmp_path / "results" / "pretrain" / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert log[0] == "step\tloss"
    losses = [float(row.split("\t")[1]) for row in log[1:]]
    assert sum(losses[-5:]) < sum(losses[:5]), "pretraining did not lower the loss"
    # the point of pretraining: its embeddings beat a randomly initialised twin on chords, the clearest gap at
    # this scale under every probe protocol (key is decided by 18 validation tracks and flips between protocols)
    chords = {run: metrics[run]["chords"]["majmin"] for run in metrics}
    assert chords["pretrained"] > chords["random-init"], chords
    # metrics files hold numbers only (strings and params go to the details files)
    def leaves(v):
        return [x for child in v.values() for x in leaves(child)] if isinstance(v, dict) else [v]
    for name in ("features.json", "tokens.json", "probe.json"):   # pretrain/summary.json: train.py (learning)
        text = (tmp_path / "results" / name).read_text()
        values = leaves(json.loads(text))
        assert values and all(isinstance(v, (int, float)) for v in values), (name, text[:300])

    status = _run([dvc, "status"], tmp_path, env)
    assert "up to date" in status.stdout.lower(), status.stdout
    # outputs do not depend on the checkout folder or the wall clock: the committed dvc.lock is reproduced
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, check=True).stdout
    diff = subprocess.run(["git", "diff", "--unified=4", "--", "dvc.lock"], cwd=tmp_path, env=env,
                          capture_output=True, text=True).stdout
    assert changed.strip() == "", f"dvc repro in a copy changed tracked files:\n{changed}\n{diff[-4000:]}"
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "pipeline run"], cwd=tmp_path, env=env, check=True)
    tracked = subprocess.run(["git", "ls-files", "data", "models", "results"], cwd=tmp_path, capture_output=True,
                             text=True).stdout.split()
    generated = [p for p in tracked if not p.endswith((".gitignore", "README.md"))]
    assert not generated, f"generated data must not be committed to git: {generated}"

    # an experiment re-runs only what its change touches, and compares with main
    exp = _run([dvc, "exp", "run", "-S", "probe.seed=1", "-n", "seed1"], tmp_path, env)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    ran = [line for line in exp.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'probe':"], exp.stdout
    show = _run([dvc, "exp", "show", "--json"], tmp_path, env)
    assert show.returncode == 0, show.stderr[-3000:]
    assert "seed1" in show.stdout and "weighted_score" in show.stdout
    declared = {next(iter(m)) if isinstance(m, dict) else m
                for s in yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"].values()
                for m in s.get("metrics", [])}
    loaded = {}
    def collect(node):   # every "metrics" mapping of every revision in the JSON, whatever its nesting
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "metrics" and isinstance(v, dict):
                    for path, entry in v.items():
                        loaded.setdefault(path, []).append(isinstance(entry, dict) and "data" in entry
                                                           and "error" not in entry)
                else:
                    collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)
    collect(json.loads(show.stdout))
    assert declared <= set(loaded), (declared, show.stdout[:2000])
    assert all(all(ok) for path, ok in loaded.items() if path in declared), f"a metric did not load: {show.stdout[:3000]}"
    diff = _run([dvc, "metrics", "diff", "main", "seed1", "--all", "--json"], tmp_path, env)   # --all: unchanged too
    assert diff.returncode == 0, diff.stderr[-3000:]
    assert "results/probe.json" in json.loads(diff.stdout), diff.stdout
    assert "unable to" not in (diff.stderr + diff.stdout).lower(), diff.stderr
    plots = _run([dvc, "plots", "diff", "main", "seed1", "-o", str(tmp_path / "plots")], tmp_path, env)
    assert plots.returncode == 0, plots.stdout[-3000:] + plots.stderr[-3000:]
    assert (tmp_path / "plots" / "index.html").is_file()
