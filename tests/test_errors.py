"""One error model (docs/errors.md): every error mirkit reports is a MirkitError, caught once at the CLI's top,
printed as one red line (no traceback) and mapped to its kind's exit code: 2 bad input, 1 runtime failure."""

import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import invoke

from mirkit.data.audio import AudioError
from mirkit.data.manifest import ManifestError
from mirkit.data.quantizer import QuantizerFileError
from mirkit.data.store import StoreError
from mirkit.data.tokens import TokensError
from mirkit.errors import InputError, MirkitError
from mirkit.eval.tasks import TaskDataError
from mirkit.params import ParamsError
from mirkit.train.checkpoint import CheckpointError
from mirkit.train.loop import TrainingDiverged

ROOT = Path(__file__).parent.parent
KINDS = [(MirkitError, 1), (TrainingDiverged, 1), (InputError, 2), (ParamsError, 2), (StoreError, 2),
         (CheckpointError, 2), (ManifestError, 2), (AudioError, 2), (TaskDataError, 2), (TokensError, 2),
         (QuantizerFileError, 2)]


@pytest.mark.parametrize("cls, code", KINDS, ids=[k.__name__ for k, _ in KINDS])
def test_every_kind_is_one_line_with_its_exit_code(monkeypatch, tmp_path, cls, code):
    def fail(*args, **kwargs):
        raise cls(f"data/x.zarr: {cls.__name__} happened")
    monkeypatch.setattr("mirkit.commands.tokens.run", fail)
    res = invoke("tokens", "--params", "none")
    assert cls.exit_code == code and res.exit_code == code
    assert f"error: data/x.zarr: {cls.__name__} happened" in res.text
    lines = res.output.strip().splitlines()
    assert "Traceback" not in res.output and lines[-1].startswith("error: ")
    assert sum("error" in ln for ln in lines) == 1


def test_every_mirkit_error_class_has_a_documented_kind():
    """Each error class derives from InputError (2) or is a runtime MirkitError (1): nothing else."""
    import importlib
    import inspect
    import pkgutil

    import mirkit
    seen = set()
    for info in pkgutil.walk_packages(mirkit.__path__, "mirkit."):
        if info.name.startswith("mirkit.commands") or info.name in ("mirkit.__main__",):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, MirkitError):
                seen.add(obj)
                assert obj.exit_code == (2 if issubclass(obj, InputError) else 1), obj
    assert {k for k, _ in KINDS} <= seen
    doc = (ROOT / "docs" / "errors.md").read_text()
    assert "| 1 | `MirkitError`" in doc and "| 2 | `InputError`" in doc


def test_real_bad_input_exits_2_before_any_work(tmp_path):
    res = invoke("mels", "--params", "none", "--input", str(tmp_path / "missing.csv"),
                 "--store", str(tmp_path / "f.zarr"), "--set", f"failures={tmp_path / 'f.tsv'}",
                 "--set", f"summary={tmp_path / 's.json'}")
    assert res.exit_code == 2 and "missing.csv: manifest not found" in res.text
    res = invoke("mels", "--params", str(tmp_path / "params.yml"))
    assert res.exit_code == 2 and "params.yml: no such file" in res.text and "--params none" in res.text
    res = invoke("pretrain", "--params", "none", "--set", "stepz=5")
    assert res.exit_code == 2 and "pretrain.stepz: unknown parameter; did you mean 'steps'?" in res.text
    res = invoke("benchmark-manifest", "gtzan", "--audio-dir", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "nowhere: not a folder" in res.text


def test_python_dash_m_and_the_entry_point_share_the_handler(tmp_path):
    """`python -m mirkit` (and `torchrun -m mirkit`) go through the same top-level handler."""
    res = subprocess.run([sys.executable, "-m", "mirkit", "tokens", "--params", "none",
                          "--set", f"features={tmp_path / 'absent.zarr'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "error:" in res.stderr and "absent.zarr" in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- issue 18.5: crashes -> one error
def one_red_line(res, code: int, *words: str) -> None:
    """Exit ``code``, no traceback, and the last line an error naming every one of ``words``."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum("error:" in ln for ln in lines) == 1, res.output
    for w in words:
        assert w in res.text, (w, res.text)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A feature store of three clips and a two-step myna-tiny run folder (with state.pt) trained on it."""
    from audio_fixtures import write_good
    tmp = tmp_path_factory.mktemp("crashes")
    write_good(tmp / "audio", 3, seconds=3.0)
    (tmp / "audio" / "manifest.csv").write_text("path,split\n" + "".join(f"good{i:03d}.wav,train\n" for i in range(3)))
    res = invoke("mels", "--params", "none", "--input", str(tmp / "audio"), "--store", str(tmp / "f.zarr"),
                 "--set", "num_workers=0", "--set", "feature_sets=[mel16k]",
                 "--set", f"failures={tmp / 'f.tsv'}", "--set", f"summary={tmp / 's.json'}")
    assert res.exit_code == 0, res.output
    res = invoke("pretrain", *pretrain_args(tmp, "run"), "--set", "steps=2")
    assert res.exit_code == 0, res.output
    return tmp


def pretrain_args(tmp: Path, out: str, features: str = "f.zarr") -> list[str]:
    sets = {"preset": "myna-tiny", "features": str(tmp / features), "out": str(tmp / out), "log": str(tmp / out / "live"),
            "summary": str(tmp / out / "s.json"), "batch_size": 2, "warmup_steps": 0, "device": "cpu",
            "manifest": "null", "val_split": "null", "online_probe": "{}", "checkpoint_every": 1}
    return ["--params", "none"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def test_mels_store_pointing_at_a_file_is_an_input_error(tmp_path):
    """Before: FileExistsError traceback from the writer lock's mkdir."""
    from audio_fixtures import write_good
    write_good(tmp_path / "audio", 1)
    (tmp_path / "taken").write_text("mine\n")
    res = invoke("mels", "--params", "none", "--input", str(tmp_path / "audio"), "--store", str(tmp_path / "taken"),
                 "--set", f"failures={tmp_path / 'f.tsv'}", "--set", f"summary={tmp_path / 's.json'}")
    one_red_line(res, 2, "taken: exists and is a file, not a store folder")
    assert (tmp_path / "taken").read_text() == "mine\n"   # nothing already written is lost


@pytest.mark.parametrize("value, words", [("{myna: 5}", "pretrain.recipe_params.myna=5: expected a mapping"),
                                          ("[1]", "pretrain.recipe_params=[1]: expected a mapping")])
def test_recipe_params_not_a_mapping_is_a_params_error(tmp_path, value, words):
    """Before: TypeError traceback in make_recipe."""
    res = invoke("pretrain", "--params", "none", "--set", f"recipe_params={value}",
                 "--set", f"out={tmp_path / 'run'}")
    one_red_line(res, 2, words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("node", ["mel16k/frames", "mel16k/track_id", "mel16k", ""])
def test_garbage_zarr_json_is_named_by_verify_pretrain_and_extract(run_folder, tmp_path, node):
    """Before: JSONDecodeError traceback. verify calls the store damaged naming the file; pretrain refuses
    it (exit 2); extract notes it and computes features from audio (as for any damaged feature store)."""
    import shutil
    store = tmp_path / "g.zarr"
    shutil.copytree(run_folder / "f.zarr", store)
    bad = store / node / "zarr.json"
    bad.write_text('{"zarr_format": 3, "node_type": "arr' if node != "mel16k" else "garbage")
    res = invoke("verify", str(store))
    one_red_line(res, 2, f"{bad}: damaged Zarr metadata", "problem(s) found")
    res = invoke("pretrain", *pretrain_args(tmp_path, "run", features="g.zarr"), "--set", "steps=1")
    one_red_line(res, 2, f"{bad}: damaged Zarr metadata")
    if node:   # a garbage root is not a store at all: extract computes from audio silently, as without one
        from test_extract import make_checkpoint
        make_checkpoint(tmp_path / "ckpt")
        res = invoke("extract", "--params", "none", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "e.zarr"),
                     "--set", f"manifest={run_folder / 'audio' / 'manifest.csv'}", "--set", f"features={store}", "--set", "device=cpu")
        assert res.exit_code == 0 and f"{bad}: damaged Zarr metadata" in res.text and "computing from audio" in res.text


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_embeddings_chunk_in_probe_is_an_input_error(tmp_path, damage):
    """Before: zstd RuntimeError traceback when the probe read the chunk rows."""
    import yaml
    from test_probe import genre_store
    url = tmp_path / "emb.zarr"
    genre_store(str(url))
    chunk = url / "chunks" / "c" / "0" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(len(data)))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"probe": {
        "runs": {"a": str(url)}, "tasks": {"genre": {"type": "multiclass", "label": "genre"}},
        "out": str(tmp_path / "probe.json"), "plot": str(tmp_path / "probe.png"), "device": "cpu"}}))
    res = invoke("probe", "--params", str(params))
    one_red_line(res, 2, f"{url}: 'chunks' rows", "unreadable")


def _state(kind: str, good: dict) -> object:
    import copy

    import torch
    if kind == "no optimizer":
        return {"step": good["step"]}
    if kind == "garbage optimizer":
        return {"step": good["step"], "optimizer": "garbage"}
    if kind == "optimizer of another form":
        return {"step": good["step"], "optimizer": {"lr": 0.1}}
    if kind == "another model's optimizer":
        return {"step": good["step"], "optimizer": {"state": {}, "param_groups": [{"params": [0, 1]}]}}
    if kind == "wrong moment shape":
        bad = copy.deepcopy(good)
        first = next(iter(bad["optimizer"]["state"].values()))
        first["exp_avg"] = torch.zeros(3, 3)
        return bad
    return [1, 2, 3]


STATES = [("no optimizer", "no 'optimizer' key"), ("garbage optimizer", "'optimizer' is a str, not an optimizer state"),
          ("optimizer of another form", "'optimizer' is not an optimizer state"),
          ("another model's optimizer", "optimizer state does not fit this model"),
          ("wrong moment shape", "'exp_avg' of shape (3, 3)"), ("a list", "a list, not a mapping")]


@pytest.mark.parametrize("kind, words", STATES, ids=[k for k, _ in STATES])
def test_resume_from_a_damaged_state_pt_is_refused_and_verify_calls_it_unsound(run_folder, tmp_path, kind, words):
    """Before: KeyError/ValueError/TypeError tracebacks on resume; verify called the first two sound and
    crashed on the list."""
    import shutil

    import torch
    run = tmp_path / "run"
    shutil.copytree(run_folder / "run", run)
    state_pt = run / "step-000002" / "training" / "state.pt"
    torch.save(_state(kind, torch.load(state_pt, weights_only=True)), state_pt)
    before = state_pt.read_bytes()
    from mirkit.verify import verify
    res = invoke("verify", str(run))
    one_red_line(res, 2, "1 problem(s) found")
    damage = [f for f in verify(str(run))[1] if not f.ok]
    assert len(damage) == 1 and damage[0].part == "state.pt" and words in damage[0].detail
    res = invoke("pretrain", *pretrain_args(run_folder, "run"), "--set", f"out={run}",
                 "--set", f"log={run / 'live'}", "--set", f"summary={run / 's.json'}", "--set", "steps=4", "--resume")
    one_red_line(res, 2, f"{state_pt}", words)
    assert state_pt.read_bytes() == before and sorted(p.name for p in run.glob("step-*")) == ["step-000002"]


def test_a_sound_run_folder_is_sound_with_its_optimizer_checked(run_folder):
    from mirkit.verify import verify
    res = invoke("verify", str(run_folder / "run"))
    assert res.exit_code == 0 and "sound" in res.text
    fits = [f for f in verify(str(run_folder / "run"))[1] if f.check == "optimizer state fits the model"]
    assert len(fits) == 1 and fits[0].ok and "fits the myna model" in fits[0].detail


# ----------------------------------------------------------------------------- issue 19.4: every command
def _damaged_store(run_folder: Path, tmp: Path) -> Path:
    import shutil
    shutil.copytree(run_folder / "f.zarr", tmp / "g.zarr")
    (tmp / "g.zarr" / "mel16k" / "frames" / "zarr.json").write_text("garbage")
    return tmp / "g.zarr"


def _damaged_model(tmp: Path) -> Path:
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{garbage")
    return tmp / "model"


def _junk(path: Path) -> Path:
    path.write_bytes(b"junk" * 100)
    return path


#: command -> (arguments given the fixture folder and a scratch folder, exit code, words of the one red line)
WALK = {
    "synth bad value": (lambda r, t: ["synth", "--params", "none", "--set", "n_clips=0", "--set", f"out={t / 's'}"],
                        2, ["synth.n_clips=0"]),
    "synth unwritable": (lambda r, t: ["synth", "--params", "none", "--set", "n_clips=24",
                                       "--set", f"out={r / 'audio' / 'manifest.csv' / 'x'}"], 1, ["cannot write"]),
    "mels missing": (lambda r, t: ["mels", "--params", "none", "--input", str(t / "none.csv"), "--store", str(t / "f.zarr"),
                                   "--set", f"failures={t / 'f.tsv'}", "--set", f"summary={t / 's.json'}"],
                     2, ["none.csv: manifest not found"]),
    "tokens missing": (lambda r, t: ["tokens", "--params", "none", "--set", f"features={t / 'no.zarr'}"],
                       2, ["no.zarr: no Zarr store here"]),
    "tokens damaged": (lambda r, t: ["tokens", "--params", "none", "--set", f"features={_damaged_store(r, t)}",
                                     "--set", "feature_set=mel16k", "--set", f"out={t / 't.zarr'}"],
                       2, ["frames/zarr.json: damaged Zarr metadata"]),
    "pretrain bad value": (lambda r, t: ["pretrain", "--params", "none", "--set", "lr=-1"], 2, ["pretrain.lr=-1"]),
    "extract missing": (lambda r, t: ["extract", "--params", "none", "--model", str(t / "nope"), "--out", str(t / "e.zarr"),
                                      "--set", f"manifest={r / 'audio' / 'manifest.csv'}"], 2, ["no such model folder"]),
    "extract damaged": (lambda r, t: ["extract", "--params", "none", "--model", str(_damaged_model(t)),
                                      "--out", str(t / "e.zarr"), "--set", f"manifest={r / 'audio' / 'manifest.csv'}"],
                        2, ["config.json: unreadable JSON"]),
    "probe missing": (lambda r, t: ["probe", "--params", "none", "--set", f"runs={{a: {t / 'no.zarr'}}}",
                                    "--set", "tasks={g: {type: multiclass, label: genre}}"],
                      2, ["no.zarr: no embeddings store here"]),
    "inspect embeddings missing": (lambda r, t: ["inspect", "embeddings", str(t / "no.zarr"), "--label", "x",
                                                 "--out", str(t / "i")], 2, ["no.zarr: no embeddings store here"]),
    "inspect model damaged": (lambda r, t: ["inspect", "model", str(_damaged_model(t)), str(r / "audio" / "good000.wav"),
                                            "--out", str(t / "i")], 2, ["config.json: unreadable JSON"]),
    "inspect training missing": (lambda r, t: ["inspect", "training", str(t / "nolog"), "--out", str(t / "i")],
                                 2, ["nolog: no such training log"]),
    "inspect report missing": (lambda r, t: ["inspect", "report", str(t / "none")], 2, ["none: no such folder"]),
    "verify damaged": (lambda r, t: ["verify", str(_damaged_store(r, t))], 2, ["1 problem(s) found"]),
    "import myna bad value": (lambda r, t: ["import", "myna", str(t / "x.pth"), "--variant", "nope"],
                              2, ["--variant 'nope'"]),
    "import myna damaged": (lambda r, t: ["import", "myna", str(_junk(t / "x.pth")), "--variant", "base",
                                          "--out", str(t / "m")], 2, ["x.pth: refused to load"]),
    "import legacy damaged": (lambda r, t: ["import", "legacy", str(_damaged_model(t)), "--out", str(t / "l")],
                              2, ["config.json: unreadable JSON"]),
    "benchmark-manifest bad value": (lambda r, t: ["benchmark-manifest", "nope", "--audio-dir", str(r / "audio")],
                                     2, ["unknown benchmark 'nope'"]),
}


@pytest.mark.parametrize("case", list(WALK))
def test_every_command_fails_with_one_red_line(run_folder, tmp_path, case):
    """Missing files, bad values and damaged artifacts, command by command: exit 2 (bad input) or 1
    (runtime), one `error:` line naming the thing, no traceback."""
    build, code, words = WALK[case]
    one_red_line(invoke(*build(run_folder, tmp_path)), code, *words)


def test_no_command_translates_errors_itself():
    """Errors are raised as MirkitError subclasses where they happen; commands hold no `except` for them."""
    for path in (ROOT / "mirkit" / "commands").glob("*.py"):
        text = path.read_text()
        for banned in ("except ValueError", "except KeyError", "except (ValueError", "except (OSError", "except MirkitError"):
            assert banned not in text, f"{path.name}: {banned}"
