"""Model folders and training checkpoints: atomic under kill -9, byte-identical for the same seed,
encoder-only loading for every preset without importing a recipe or objective, bounded config
validation, and the one-command upgrade of mirkit 0.1 checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_runner import invoke as run_cli
from safetensors.torch import load_file, save_file

import mirkit
from mirkit.data.features import PRESETS as FEATURES
from mirkit.models.base import count_parameters
from mirkit.models.registry import create_encoder
from mirkit.train import checkpoint
from mirkit.train.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- a run folder writer
class Tiny(torch.nn.Module):
    """An encoder plus a head, like a recipe's pretraining model."""

    def __init__(self, size: str = "myna-tiny"):
        super().__init__()
        self.encoder = create_encoder(size)
        self.head = torch.nn.Linear(self.encoder.dim, 8)


def fake_recipe(preset: str = "myna-tiny") -> SimpleNamespace:
    return SimpleNamespace(name="test", params=SimpleNamespace(preset=preset), feature_set="mel16k",
                           crop_frames=96, params_dict=lambda: {"preset": preset})


def weights_of_step(model: torch.nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def save_step(out: Path, model: Tiny, step: int, preset: str = "myna-tiny") -> Path:
    weights_of_step(model, step)
    config = checkpoint.make_config(fake_recipe(preset), FEATURES["mel16k"].to_dict(), step, {})
    return checkpoint.save(out, model, config, {"optimizer": {"marker": torch.full((3,), float(step))}})


def assert_consistent(out: Path, preset: str = "myna-tiny") -> int:
    """The run folder's current checkpoint loads, and weights, heads and state are all of one step."""
    model = Tiny(preset)
    step = checkpoint.load_weights(out, model)
    state = checkpoint.load_train_state(out)
    assert state["step"] == step and torch.equal(state["optimizer"]["marker"], torch.full((3,), float(step)))
    expected = Tiny(preset)
    weights_of_step(expected, step)
    for k, v in expected.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    encoder, config, _ = checkpoint.load_encoder(out)
    assert config.step == step
    return step


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_checkpoint import Tiny, save_step
    model = Tiny("myna-small")
    for step in range(1, 10_000):
        save_step(Path({out!r}), model, step, "myna-small")
        print(step, flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.11, 0.17, 0.23, 0.31])
def test_kill_9_during_checkpointing_leaves_a_usable_checkpoint(tmp_path, delay):
    """A real writer killed at an arbitrary instant (after its first commit): the run folder loads,
    weights/heads/state are of one step, and the next save works and cleans up."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent), out=str(out))],
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        first = proc.stdout.readline()                    # step 1 committed
        assert first.strip() == "1"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    step = assert_consistent(out, "myna-small")
    assert step >= 1
    save_step(out, Tiny("myna-small"), step + 1, "myna-small")
    assert assert_consistent(out, "myna-small") == step + 1
    assert sorted(p.name for p in out.iterdir()) == ["LATEST", checkpoint.step_name(step + 1)]


def test_a_crash_at_any_file_operation_keeps_the_previous_or_the_new_checkpoint(tmp_path, monkeypatch):
    """Inject a crash at each rename, commit and cleanup of one save: every interruption point leaves
    a loadable, consistent checkpoint (the old one before the commit, the new one after)."""
    real = {"replace": os.replace, "rmtree": shutil.rmtree}
    n_ops, k = None, 0
    while n_ops is None or k < n_ops:
        out = tmp_path / f"run{k}"
        model = Tiny()
        save_step(out, model, 1)
        calls = {"n": 0}

        def crashing(name, _k=k, calls=calls):
            def op(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == _k + 1:
                    raise KeyboardInterrupt("simulated kill")
                return real[name](*args, **kwargs)
            return op

        monkeypatch.setattr(os, "replace", crashing("replace"))
        monkeypatch.setattr(shutil, "rmtree", crashing("rmtree"))
        try:
            save_step(out, model, 2)
            n_ops, crashed = calls["n"], False
        except KeyboardInterrupt:
            crashed = True
        finally:
            monkeypatch.setattr(os, "replace", real["replace"])
            monkeypatch.setattr(shutil, "rmtree", real["rmtree"])
        step = assert_consistent(out)
        assert step in (1, 2) and (crashed or step == 2)
        save_step(out, model, 3)                          # the next save recovers and cleans up
        assert assert_consistent(out) == 3
        assert sorted(p.name for p in out.iterdir()) == ["LATEST", "step-000003"]
        k += 1
    assert n_ops >= 4          # staging cleanup, staging -> step, LATEST, old step removal


def test_same_seed_gives_byte_identical_checkpoints(tmp_path, tiny_corpus):
    from mirkit.train.loop import PretrainParams, train
    p = PretrainParams(recipe="myna", recipe_params={"myna": {"preset": "myna-tiny", "crop_frames": 32}},
                       features=tiny_corpus["features"], out=str(tmp_path / "run"), log=str(tmp_path / "log.tsv"),
                       summary=str(tmp_path / "summary.json"), steps=2, batch_size=4, warmup_steps=1,
                       log_every=1, checkpoint_every=2, lr=1e-3)
    train(p)
    first = {f.relative_to(p.out): f.read_bytes() for f in sorted(Path(p.out).rglob("*")) if f.is_file()}
    shutil.rmtree(p.out)
    train(p)
    second = {f.relative_to(p.out): f.read_bytes() for f in sorted(Path(p.out).rglob("*")) if f.is_file()}
    assert set(first) == set(second) and len(first) == 6   # LATEST, config, weights, card, heads, state
    for name in first:
        assert first[name] == second[name], name


# ----------------------------------------------------------------------------- encoder-only loading
def _presets():
    from mirkit import recipes
    return [(r.name, name) for name, r, _ in recipes.all_presets()]


def _encoder_folder(folder: Path, recipe: str, preset: str) -> Path:
    """The encoder-only model folder of a freshly initialised preset (no training run folder)."""
    from mirkit import recipes
    from mirkit.params import resolve
    cls = recipes.get(recipe)
    r = cls(resolve(cls.Params, {"preset": preset}))
    torch.manual_seed(0)
    model = r.build_model()
    config = checkpoint.make_config(r, FEATURES[r.feature_set].to_dict(), 0, {})
    checkpoint.save_model_folder(folder, model.encoder, config)
    return folder


def _meta_params(recipe: str, preset: str) -> int:
    from mirkit import recipes
    from mirkit.params import resolve
    cls = recipes.get(recipe)
    with torch.device("meta"):
        return count_parameters(cls(resolve(cls.Params, {"preset": preset})).build_model().encoder)


SMALL = [rp for rp in _presets() if _meta_params(*rp) < 30e6]
LARGE = [rp for rp in _presets() if rp not in SMALL]


def _extract_from_folder(tmp_path: Path, folder: Path) -> None:
    audio = tmp_path / "clip.wav"
    t = np.arange(int(44100 * 4.5)) / 44100
    sf.write(audio, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 44100)
    (tmp_path / "m.csv").write_text("path,split\nclip.wav,test\n")
    res = run_cli("extract", "--model", str(folder), "--out", str(tmp_path / "e.zarr"), "--set",
                  f"manifest={tmp_path / 'm.csv'}", "--set", f"features={tmp_path / 'none.zarr'}", "--set",
                  "device=cpu", "--params", "none")
    assert res.exit_code == 0, res.output
    from mirkit.eval.embeddings import Embeddings
    emb = Embeddings(str(tmp_path / "e.zarr"))
    assert len(emb) == 1 and np.isfinite(emb.chunks(0)).all()
    timing = emb.attrs["timing"]
    assert timing["frame_rate"] == pytest.approx(emb.frame_rate) and timing["receptive_field_seconds"] > 0
    enc = mirkit.load_encoder(folder, device="cpu")
    np.testing.assert_allclose(enc.embed(audio), emb.chunks(0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("recipe, preset", SMALL)
def test_extract_and_load_encoder_work_from_encoder_only_folders(tmp_path, recipe, preset, one_thread):
    folder = _encoder_folder(tmp_path / "model", recipe, preset)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    _extract_from_folder(tmp_path, folder)


@pytest.mark.slow
@pytest.mark.parametrize("recipe, preset", LARGE)
def test_paper_sized_presets_from_encoder_only_folders(tmp_path, recipe, preset):
    folder = _encoder_folder(tmp_path / "model", recipe, preset)
    _extract_from_folder(tmp_path, folder)


def test_paper_sized_configs_validate_without_allocating():
    """Every preset's model folder config validates (architecture, arguments, bounds) on the meta device."""
    from mirkit import recipes
    from mirkit.params import resolve
    for recipe, preset in _presets():
        cls = recipes.get(recipe)
        r = cls(resolve(cls.Params, {"preset": preset}))
        with torch.device("meta"):
            enc = r.build_model().encoder
        config = checkpoint.make_config(r, FEATURES[r.feature_set].to_dict(), 0, {}).bound_to(enc)
        checkpoint.validate_config(config.to_dict(), f"{preset}/config.json")
        assert config.architecture in ("simple-vit", "vit1d", "muse") and config.preset == preset


EMBEDDING_PATH = textwrap.dedent("""
    import sys
    import numpy as np
    import mirkit
    from mirkit.eval.extract import ExtractParams, run
    from mirkit.eval.inspect import analyse
    enc = mirkit.load_encoder({folder!r}, device="cpu")
    enc.embed(np.zeros(16000 * 3, np.float32) + 0.01, sample_rate=16000, layer="all")
    enc.embed_files([{audio!r}], layers=[0, -1])
    run(ExtractParams(model={folder!r}, manifest={manifest!r}, features="", out={out!r}, device="cpu"))
    analyse(enc.frozen, enc.features({audio!r}))
    from mirkit.commands import extract, inspect, models, import_models   # the CLI commands of the path
    bad = sorted(m for m in sys.modules if m.startswith(("mirkit.recipes", "mirkit.objectives", "mirkit.train.loop")))
    print("LOADED", bad)
""")


def test_the_embedding_path_imports_no_recipe_or_objective(tmp_path):
    folder = _encoder_folder(tmp_path / "model", "myna", "myna-tiny")
    audio = tmp_path / "a.wav"
    sf.write(audio, np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1, 16000)
    (tmp_path / "m.csv").write_text("path\na.wav\n")
    code = EMBEDDING_PATH.format(folder=str(folder), audio=str(audio), manifest=str(tmp_path / "m.csv"),
                                 out=str(tmp_path / "e.zarr"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "LOADED []" in res.stdout, res.stdout


# ----------------------------------------------------------------------------- validation
def _tamper(folder: Path, tmp_path: Path, name: str, change) -> Path:
    bad = tmp_path / name
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    change(config)
    (bad / "config.json").write_text(json.dumps(config))
    return bad


@pytest.mark.parametrize("name, change, message", [
    ("window", lambda c: c.update(window_frames=10 ** 9), "window_frames=1000000000: must be in 1..16384"),
    ("dim", lambda c: c["args"].update(dim=10 ** 9, heads=1), "would need about"),
    ("nfft", lambda c: c["features"].update(n_fft=10 ** 8), "features.n_fft=100000000"),
    ("hop", lambda c: c["features"].update(hop_length=1), "features.hop_length=1"),
    ("mels", lambda c: c["features"].update(n_mels=10 ** 6), "features.n_mels=1000000"),
    ("missing", lambda c: c.pop("features"), "missing key 'features'"),
    ("arg", lambda c: c["args"].update(temperature=0.1), "unknown argument"),
    ("arch", lambda c: c.update(architecture="wav2vec"), "unknown encoder architecture 'wav2vec'"),
    ("type", lambda c: c.update(window_frames="96"), "'window_frames' must be a int"),
    ("nan", lambda c: c["args"].update(input_mean=float("nan")), "args.input_mean=nan is not finite"),
    ("fit", lambda c: c.update(window_frames=100), "a window of 100 frames x 128 bins does not fit the simple-vit"),
    ("bins", lambda c: c["args"].update(patch="vertical", bins=96), "a window of 96 frames x 128 bins does not fit"),
])
def test_tampered_configs_are_refused_naming_config_json(tmp_path, name, change, message):
    from mirkit.errors import InputError
    folder = _encoder_folder(tmp_path / "model", "myna" if name != "nan" else "contrastive",
                             "myna-tiny" if name != "nan" else "vit1d-micro")
    bad = _tamper(folder, tmp_path, name, change)
    with pytest.raises(InputError, match="config.json") as err:
        mirkit.load_encoder(bad, device="cpu")
    assert message in str(err.value)
    res = run_cli("verify", str(bad))

    def squash(text: str) -> str:          # the table wraps long details across cells
        return "".join(ch for ch in text if not ch.isspace() and ch != "│")

    assert res.exit_code == 2 and squash(message) in squash(res.text)


def test_model_card_and_save_pretrained_round_trip(tmp_path):
    folder = _encoder_folder(tmp_path / "model", "contrastive", "vit1d-micro")
    enc = mirkit.load_encoder(folder, device="cpu")
    probe = {"key": {"weighted_score": 0.43}, "timbre": {"accuracy": 0.5}}
    enc.save_pretrained(tmp_path / "release", probe=probe)
    again = mirkit.load_encoder(tmp_path / "release", device="cpu")
    wave = np.random.default_rng(1).standard_normal(16000 * 5).astype(np.float32) * 0.1
    np.testing.assert_array_equal(again.embed(wave, sample_rate=16000), enc.embed(wave, sample_rate=16000))
    card = (tmp_path / "release" / "README.md").read_text()
    n = enc.config.n_params
    for text in ("`vit1d`", "vit1d-micro", f"{n:,}", "recipe: `contrastive`", "steps: 0", "| key | weighted_score | 0.43 |",
                 "output frame rate | 31.250 Hz", "receptive field"):
        assert text in card, text
    # same tensors, same checksums; the header differs only where it binds the (re-written) config.json
    release, original = (checkpoint._binding(f / "model.safetensors") for f in (tmp_path / "release", folder))
    assert release["crc32c"] == original["crc32c"]
    assert release["config"] == json.loads((tmp_path / "release" / "config.json").read_text())


# ----------------------------------------------------------------------------- mirkit 0.1 folders
def _legacy_folder(folder: Path, with_state: bool) -> tuple[torch.nn.Module, dict]:
    """A checkpoint in the 0.1 layout: whole-model weights + recipe config (+ train_state.pt)."""
    from mirkit import recipes
    from mirkit.params import resolve
    cls = recipes.get("myna")
    r = cls(resolve(cls.Params, {"preset": "myna-tiny", "n_items": 4}))
    torch.manual_seed(3)
    model = r.build_model()
    state = {}
    if with_state:
        opt = torch.optim.AdamW(model.parameters())
        model(_batch())["loss"].backward()
        opt.step()
        state = {"optimizer": opt.state_dict(), "step": 5}
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"),
              metadata={"format": "mirkit.train.checkpoint/1", "step": "5"})
    config = {"format": "mirkit.train.checkpoint/1", "mirkit_version": "0.1.0", "recipe": "myna",
              "recipe_params": r.params_dict(), "feature_set": "mel16k", "features": FEATURES["mel16k"].to_dict(),
              "crop_frames": 96, "step": 5, "train": {"lr": 0.001}}
    (folder / "config.json").write_text(json.dumps(config))
    if with_state:
        torch.save(state, folder / "train_state.pt")
    return model, state


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"view1": torch.rand(2, 128, 96, generator=g), "view2": torch.rand(2, 128, 96, generator=g),
            "index": torch.tensor([0, 1])}


@pytest.mark.parametrize("with_state", [False, True])
def test_legacy_checkpoints_are_refused_with_the_upgrade_command_then_upgraded(tmp_path, with_state):
    old = tmp_path / "old"
    model, state = _legacy_folder(old, with_state)
    with pytest.raises(CheckpointError, match=r"mirkit import legacy .*old --out"):
        mirkit.load_encoder(old, device="cpu")
    if with_state:
        with pytest.raises(CheckpointError, match="mirkit import legacy"):
            checkpoint.has_train_state(old)
    res = run_cli("import", "legacy", str(old), "--out", str(old))      # in place
    assert res.exit_code == 0, res.output
    enc = mirkit.load_encoder(old, device="cpu")
    x = torch.rand(2, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(enc.frozen.encoder.embed(x), model.eval().encoder.embed(x), rtol=0, atol=0)
    assert enc.config.provenance["recipe"] == "myna" and enc.config.step == 5
    if with_state:
        fresh = _legacy_model()
        assert checkpoint.load_weights(old, fresh) == 5
        for k, v in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[k], v), k
        loaded = checkpoint.load_train_state(old)
        assert loaded["step"] == 5 and loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
        assert sorted(p.name for p in old.iterdir()) == ["LATEST", "step-000005"]
    else:
        assert sorted(p.name for p in old.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def _legacy_model() -> torch.nn.Module:
    from mirkit import recipes
    from mirkit.params import resolve
    cls = recipes.get("myna")
    return cls(resolve(cls.Params, {"preset": "myna-tiny", "n_items": 4})).build_model()


# ----------------------------------------------------------------------------- timing
def test_frame_rates_and_receptive_fields_follow_the_architectures():
    """Independent numbers: Myna 16-frame patches at 16 kHz / hop 512 -> 16000/512/16 Hz, a frame sees
    15 hops + one 2048-sample window; vertical patches 2 frames; ViT-1D one frame; MuSE-LQ 4 frames at
    100 Hz with a 19-frame front end; a CQT frame spans its lowest bin's kernel, Q sr / fmin samples."""
    from mirkit.models.timing import timing
    mel16k, mel24k, cqt = (FEATURES[k].to_dict() for k in ("mel16k", "mel24k", "cqt22k"))
    with torch.device("meta"):
        square = timing(create_encoder("myna-22m"), mel16k, 96)
        vertical = timing(create_encoder("myna-22m", patch="vertical"), mel16k, 98)
        hybrid = timing(create_encoder("myna-22m", patch="hybrid"), mel16k, 96)
        muse = timing(create_encoder("brn-sum-164m"), mel24k, 400)
        vit = timing(create_encoder("vit1d-tiny", in_bins=84), cqt, 172)
    assert square["frame_rate"] == pytest.approx(1.953125) and square["token_seconds"] == pytest.approx(9728 / 16000)
    assert vertical["frame_rate"] == pytest.approx(15.625) and vertical["token_seconds"] == pytest.approx(2560 / 16000)
    assert hybrid["frame_rate"] == pytest.approx(15.625) and hybrid["token_seconds"] == pytest.approx(9728 / 16000)
    assert square["receptive_field_seconds"] == pytest.approx((95 * 512 + 2048) / 16000)
    assert muse["frame_rate"] == pytest.approx(25.0) and muse["token_seconds"] == pytest.approx((18 * 240 + 2048) / 24000)
    q = 1 / (2 ** (1 / 12) - 1)
    assert vit["frame_rate"] == pytest.approx(22050 / 512)
    assert vit["token_seconds"] == pytest.approx(np.ceil(q * 22050 / 27.5) / 22050)
    res = run_cli("models")
    assert res.exit_code == 0 and "brn-sum-164m muse" in " ".join(res.text.replace("│", " ").split())
    assert "1.95 Hz" in res.text and "25 Hz" in res.text and "43.1 Hz" in res.text


def test_replacing_a_model_folder_is_atomic(tmp_path, monkeypatch):
    """save_model_folder over an existing folder, crashed before each rename or cleanup: the folder
    path always loads the old or the new encoder; the next save cleans up."""
    real = {"replace": os.replace, "rmtree": shutil.rmtree}
    old_enc, new_enc = create_encoder("myna-tiny"), create_encoder("myna-tiny")
    weights_of_step(old_enc, 1)
    weights_of_step(new_enc, 2)

    def config_of(enc):
        return checkpoint.encoder_config(enc, "mel16k", FEATURES["mel16k"].to_dict(), 96)

    x = torch.rand(1, 128, 96)
    with torch.no_grad():
        outs = {k: e.eval().embed(x) for k, e in (("old", old_enc), ("new", new_enc))}
    for k in range(5):
        folder = tmp_path / f"m{k}" / "model"
        checkpoint.save_model_folder(folder, old_enc, config_of(old_enc))
        calls = {"n": 0}

        def crashing(name, _k=k, calls=calls):
            def op(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == _k + 1:
                    raise KeyboardInterrupt
                return real[name](*args, **kwargs)
            return op

        monkeypatch.setattr(os, "replace", crashing("replace"))
        monkeypatch.setattr(shutil, "rmtree", crashing("rmtree"))
        try:
            checkpoint.save_model_folder(folder, new_enc, config_of(new_enc))
        except KeyboardInterrupt:
            pass
        finally:
            monkeypatch.setattr(os, "replace", real["replace"])
            monkeypatch.setattr(shutil, "rmtree", real["rmtree"])
        loaded, _, _ = checkpoint.load_encoder(folder)
        with torch.no_grad():
            got = loaded.embed(x)
        assert torch.equal(got, outs["old"]) or torch.equal(got, outs["new"]), k
        checkpoint.save_model_folder(folder, new_enc, config_of(new_enc))
        assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]


def test_verify_reports_what_is_wrong(tmp_path):
    out = tmp_path / "run"
    save_step(out, Tiny(), 1)
    for path in (out, checkpoint.model_dir(out)):
        res = run_cli("verify", str(path))
        assert res.exit_code == 0 and "sound" in res.text, res.text
    heads = out / "step-000001" / "training" / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:100])
    res = run_cli("verify", str(out))
    assert res.exit_code == 2 and "heads.safetensors" in res.text and "truncated" in res.text
    folder = checkpoint.model_dir(out)
    tensors = {k: v.clone() for k, v in checkpoint.load_encoder(folder)[0].state_dict().items()}
    tensors["norm.weight"][0] = float("nan")
    save_file(tensors, str(folder / "model.safetensors"))
    res = run_cli("verify", str(folder))
    assert res.exit_code == 2 and "NaN/inf in norm.weight" in res.text
    with pytest.raises(CheckpointError, match="create_encoder"):
        mirkit.load_encoder("myna-22m")


# -- integrity: checksums, bound config, sizes bounded before building (issue 18 items 3-4) -----------
@pytest.mark.parametrize("name, change, edited", [
    ("window", lambda c: c.update(window_frames=48), "window_frames: 96 -> 48"),
    ("scale", lambda c: c["features"].update(scale="log1p"), "features.scale: 'power' -> 'log1p'"),
    ("hop", lambda c: c["features"].update(hop_length=256), "features.hop_length: 512 -> 256"),
    ("fmin", lambda c: c["features"].update(fmin=30.0), "features.fmin: 0.0 -> 30.0"),
])
def test_an_in_bounds_edit_of_config_json_is_refused_by_name(tmp_path, name, change, edited):
    """Before: these edits changed every embedding and `verify` said sound."""
    from mirkit.errors import InputError
    folder = _encoder_folder(tmp_path / "model", "myna", "myna-tiny")
    bad = _tamper(folder, tmp_path, name, change)
    for load in (lambda: mirkit.load_encoder(bad, device="cpu"), lambda: checkpoint.load_encoder(bad, weights=False)):
        with pytest.raises(InputError, match="edited after the weights were written") as err:
            load()
        assert edited in str(err.value) and "config.json" in str(err.value)
    from mirkit.verify import verify
    assert any(not f.ok and edited in f.detail and f.part == "config.json" for f in verify(str(bad))[1])
    assert run_cli("verify", str(bad)).exit_code == 2
    shutil.copy(folder / "config.json", bad / "config.json")          # restored: loads again
    mirkit.load_encoder(bad, device="cpu")


def test_a_flipped_byte_in_the_weights_is_refused_naming_the_tensor(tmp_path):
    folder = _encoder_folder(tmp_path / "model", "contrastive", "vit1d-micro")
    path = folder / "model.safetensors"
    names = sorted(load_file(str(path)))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01                                  # a finite value changes: the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: checksum mismatch in tensor\(s\) \S+") as err:
        mirkit.load_encoder(folder, device="cpu")
    assert len([k for k in names if f"tensor(s) {k} " in str(err.value)]) == 1, err.value
    tensor = str(err.value).split("tensor(s) ")[1].split(" ")[0]
    r = run_cli("verify", str(folder))
    assert r.exit_code == 2 and "checksum mismatch" in r.text and tensor in r.text, r.text


def test_depth_of_a_million_fails_before_any_layer_is_built(tmp_path):
    """Before: `verify` and `extract` built the model layer by layer (even on `meta`) until killed.
    In a subprocess with a timeout, so a regression fails instead of hanging the suite."""
    folder = _encoder_folder(tmp_path / "model", "myna", "myna-tiny")
    bad = _tamper(folder, tmp_path, "deep", lambda c: c["args"].update(depth=1_000_000))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "1000"}
    sf.write(tmp_path / "a.wav", np.sin(np.arange(32000) / 10.0).astype(np.float32) * 0.3, 16000)
    (tmp_path / "m.csv").write_text("path\na.wav\n")
    for args in (["verify", str(bad)], ["extract", "--model", str(bad), "--out", str(tmp_path / "e.zarr"),
                                        "--set", f"manifest={tmp_path}/m.csv"]):
        r = subprocess.run([sys.executable, "-m", "mirkit", *args], env=env, capture_output=True, text=True, timeout=120)
        text = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2 and "args.depth=1000000: must be an integer in 1..1024" in text, text
        assert "Traceback" not in text


def test_a_folder_written_before_the_binding_loads_with_a_warning(tmp_path):
    """Model folders of earlier versions (plain safetensors metadata) still load; the warning says why
    re-saving them is worth it, and `verify` says they are unbound."""
    folder = _encoder_folder(tmp_path / "model", "contrastive", "vit1d-micro")
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="without checksums or a bound config.json.*re-save"):
        enc = mirkit.load_encoder(folder, device="cpu")
    assert enc.config.architecture == "vit1d"
