"""dvc.yaml stays complete: each stage lists every mirkit module its command imports (derived here, statically,
transitively, function-level imports included) and every results-changing param by key, never a runtime-only one;
`dvc status` then reports a stage exactly when something it depends on changed."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_copy import copy_repository, repo_env

from mirkit.cli import STAGE_PARAMS
from mirkit.params import RUNTIME_ONLY

ROOT = Path(__file__).parent.parent
PKG = ROOT / "mirkit"
BIN = Path(sys.executable).parent


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _param_set(params: dict, key: str) -> bool:
    value: object = params
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return bool(value)


def _gated(tree: ast.Module, params: dict) -> set[str]:
    """Modules a command imports only when a params key is set (its ``IMPORTED_WHEN`` table) whose key
    ``params`` leaves empty: the command does not run them, so they are no deps."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "IMPORTED_WHEN"
                                                for t in node.targets):
            table = ast.literal_eval(node.value)
            return {m for key, mods in table.items() if not _param_set(params, key) for m in mods}
    return set()


def _imports_of(path: Path, params: dict | None = None) -> set[str]:
    """Every mirkit module named by an import in ``path``: anywhere in a module (function bodies included);
    at module level only in a package's __init__ (mirkit/__init__'s lazy ``__getattr__`` only serves
    ``mirkit.load_encoder``, which no stage calls). mirkit uses absolute imports only. Imports gated by a
    params key (``IMPORTED_WHEN``) count when ``params`` (default: the shipped params.yaml) sets that key."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0]
        nodes = [sub for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for sub in ast.walk(node)]
    else:
        nodes = list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mirkit"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mirkit":
            assert not node.level, f"{path}: relative import"
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    if "iter_modules(__path__)" in path.read_text():   # a registry importing every module of its package
        found |= {f"{package}.{p.stem}" for p in path.parent.glob("*.py") if p.name != "__init__.py"}
    skipped = _gated(tree, yaml.safe_load((ROOT / "params.yaml").read_text()) if params is None else params)
    return {m for m in found if not any(m == g or m.startswith(g + ".") for g in skipped)}


def module_closure(roots: list[str], params: dict | None = None) -> set[str]:
    """Dotted names of the mirkit modules ``roots`` import, transitively (parent packages included)."""
    todo = list(roots)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):   # parent packages run their __init__ first
            mod = ".".join(parts[:i])
            if mod in seen:
                continue
            path = _module_file(mod)
            if path is None:
                continue
            seen.add(mod)
            todo.extend(_imports_of(path, params))
    return seen


def stage_code(command: str, params: dict | None = None) -> set[str]:
    """Repo-relative paths of the mirkit files `mirkit <command>` runs, from mirkit/commands/<command>.py on,
    given ``params`` (default: the shipped params.yaml, which decides the ``IMPORTED_WHEN`` imports)."""
    found = module_closure([f"mirkit.commands.{command.replace('-', '_')}"], params)
    return {_module_file(m).relative_to(ROOT).as_posix() for m in found}


def stages() -> dict[str, dict]:
    """dvc.yaml's stages with foreach expanded to its first item (all items share deps and params)."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        out[name] = stage.get("do", stage)
    return out


def commands(stage: dict) -> set[str]:
    cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
    return {c.split()[1] for c in cmds if c.startswith("mirkit ")}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", list(stages()))
def test_stage_lists_every_module_its_command_imports(name):
    stage = stages()[name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    code = set().union(*(stage_code(c) for c in commands(stage)))
    assert "mirkit/errors.py" in code and "mirkit/params.py" in code   # the walker works
    missing = sorted(p for p in code if not covered(p, deps))
    assert not missing, f"dvc.yaml stage '{name}' misses code deps: {missing}"
    stale = sorted(d for d in deps if d.startswith("mirkit/") and not any(covered(p, [d]) for p in code))
    assert not stale, f"dvc.yaml stage '{name}' lists code it does not import: {stale}"


def test_function_level_and_registry_imports_are_followed():
    code = stage_code("pretrain")
    assert {"mirkit/train/loop.py", "mirkit/data/store.py", "mirkit/recipes/muse_lq.py", "mirkit/models/muse.py",
            "mirkit/objectives/cpsd.py", "mirkit/train/checkpoint.py"} <= code
    assert {"mirkit/eval/embeddings.py", "mirkit/data/store.py", "mirkit/data/features.py", "mirkit/train/checkpoint.py"} <= stage_code("extract")
    assert "mirkit/api.py" not in code


def test_training_imports_nothing_from_evaluation():
    """mirkit/train knows no probe: no module under it imports (even inside a function) anything that
    reaches mirkit/eval; online probes are a callback the pretrain command passes in."""
    train_modules = [f"mirkit.train.{p.stem}" for p in (PKG / "train").glob("*.py")]
    assert "mirkit.train.loop" in train_modules
    reached = module_closure(train_modules)
    assert not {m for m in reached if m.startswith("mirkit.eval")}, "mirkit/train reaches mirkit/eval"


def test_pretrain_deps_list_evaluation_code_only_when_the_online_probe_is_configured():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert shipped["pretrain"]["online_probe"], "the shipped params configure online probes"
    assert {"mirkit/eval/online_probe.py", "mirkit/eval/probe.py"} <= stage_code("pretrain", shipped)
    off = {**shipped, "pretrain": {**shipped["pretrain"], "online_probe": {}}}
    assert not {p for p in stage_code("pretrain", off) if p.startswith("mirkit/eval/")}
    assert "mirkit/train/loop.py" in stage_code("pretrain", off)


@pytest.mark.parametrize("configured", [False, True])
def test_the_online_probe_module_is_imported_exactly_when_configured(configured, tmp_path):
    """IMPORTED_WHEN tells the truth: building the pretrain command's callbacks imports evaluation code
    only when pretrain.online_probe is set (run in a fresh interpreter, so nothing is imported yet)."""
    probe = {"manifest": "m.csv", "tasks": {"k": {"type": "key", "label": "key"}}} if configured else {}
    code = ("import sys, json\n"
            "from mirkit.commands.pretrain import callbacks_for\n"
            "from mirkit.train.loop import PretrainParams\n"
            f"hooks = callbacks_for(PretrainParams(online_probe={probe!r}))\n"
            "print(json.dumps([len(hooks), sorted(m for m in sys.modules if m.startswith('mirkit.eval'))]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    import json
    n_hooks, evaluation = json.loads(out.stdout.splitlines()[-1])
    assert n_hooks == int(configured)
    assert ("mirkit.eval.online_probe" in evaluation) == configured
    assert bool(evaluation) == configured


@pytest.mark.parametrize("name", [n for n in stages() if n in STAGE_PARAMS])
def test_params_by_key_results_changing_only(name):
    """Runtime-only settings (params.RUNTIME_ONLY: device, workers, batch sizes that do not change results,
    threads, ...) are left out so changing them never invalidates the stage; all others are listed."""
    module, cls, section = STAGE_PARAMS[name]
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    runtime = RUNTIME_ONLY.get(section, set())
    assert runtime <= fields | {"threads"}, runtime - fields
    listed = set(stages()[name].get("params", []))
    assert listed == {f"{section}.{k}" for k in fields - runtime}
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())[section]
    assert not {k for k in fields - runtime if k not in shipped}, "dvc needs every listed key in params.yaml"


def _dvc(args, cwd, env):
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dvc_status_sees_code_and_results_params_but_not_runtime_ones(tmp_path):
    """A scratch copy with stand-in outputs committed by `dvc commit`: then each kind of edit is checked."""
    if not (BIN / "dvc").exists():
        pytest.skip("dvc is not installed beside this python")
    env = repo_env()
    copy_repository(tmp_path, env, skip=("tests/", "bench/", "docs/"),
                    before_commit=lambda dst: (dst / "dvc.lock").unlink(missing_ok=True))
    for stage in yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"].values():
        stage = stage.get("do", stage)
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []) + stage.get("deps", []):
            rel = entry if isinstance(entry, str) else next(iter(entry))
            for key in ("pretrained", "random"):
                path = tmp_path / rel.replace("${key}", key)
                if path.exists():
                    continue
                if path.suffix in (".json", ".tsv", ".png", ".safetensors"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n" if path.suffix == ".json" else "step\tloss\n0\t1\n")
                else:
                    (path / "stand-in").parent.mkdir(parents=True, exist_ok=True)
                    (path / "stand-in").write_text("x")
    res = _dvc(["commit", "-f", "-q"], tmp_path, env)
    assert res.returncode == 0, res.stderr
    assert "up to date" in _dvc(["status"], tmp_path, env).stdout.lower()

    def changed(edit) -> set[str]:
        before = {p: p.read_text() for p in (tmp_path / "params.yaml", tmp_path / "mirkit" / "data" / "store.py")}
        edit()
        out = _dvc(["status", "--json"], tmp_path, env)
        for p, text in before.items():
            p.write_text(text)
        import json
        return {name.split("@")[0] for name in json.loads(out.stdout or "{}")}

    def set_param(section, key, value):
        def edit():
            p = yaml.safe_load((tmp_path / "params.yaml").read_text())
            p[section][key] = value
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        return edit

    for section, key, value in [("pretrain", "device", "cpu"), ("pretrain", "log_every", 7),
                                ("pretrain", "num_workers", 2), ("mels", "batch_size", 8), ("extract", "batch_size", 3),
                                ("probe", "device", "cpu"), ("pretrain", "threads", 2), ("mels", "threads", 1)]:
        assert changed(set_param(section, key, value)) == set(), f"{section}.{key} is runtime-only"
    assert changed(set_param("pretrain", "lr", 0.001)) == {"pretrain"}
    assert changed(set_param("probe", "seed", 3)) == {"probe"}
    store = tmp_path / "mirkit" / "data" / "store.py"
    assert changed(lambda: store.write_text(store.read_text() + "\n# edited\n")) >= {"mels", "tokens", "pretrain", "extract"}


def test_committed_dvc_lock_is_current():
    """`make demo` must leave git clean: dvc.lock records today's code, params and commands. When this fails,
    run `dvc repro` (or `make demo`) and commit dvc.lock."""
    if not (BIN / "dvc").exists():
        pytest.skip("dvc is not installed beside this python")
    import json
    res = _dvc(["status", "--json"], ROOT, {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr
    stale = {}
    for stage, changes in json.loads(res.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else [changes]:
            if not isinstance(change, dict):       # "changed checksum", "always changed", ...
                stale.setdefault(stage, []).append(change)
                continue
            for kind, items in change.items():
                if kind == "changed outs":
                    continue    # outputs are not in a clone
                items = {k: v for k, v in items.items() if k.startswith("mirkit/") or k == "params.yaml"
                         } if kind == "changed deps" else items
                if items:
                    stale.setdefault(stage, []).append({kind: items})
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit dvc.lock): {stale}"
