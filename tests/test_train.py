import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import interrupted_then_resumed, timeless, train_until
from typer.testing import CliRunner

from mirkit.cli import app
from mirkit.train import checkpoint
from mirkit.train.live import read_curves
from mirkit.train.loop import PretrainParams, TrainingDiverged, batch_indices, lr_factor, train

ROOT = Path(__file__).parent.parent
TINY = {
    "myna": {"preset": "myna-tiny", "mask_ratio": 0.5, "crop_frames": 32},
    "contrastive": {"preset": "vit1d-micro", "segment_frames": 32},
    "mt2": {"preset": "vit1d-micro", "segment_frames": 32},
    "muse-lq": {"preset": "brn-sum-tiny", "crop_frames": 80, "mask_prob": 0.5},
}


def make_params(tmp_path, corpus, recipe="myna", **kw):
    base = dict(recipe=recipe, recipe_params={recipe: dict(TINY[recipe])}, features=corpus["features"],
                tokens=corpus["tokens"], out=str(tmp_path / "ckpt"), log=str(tmp_path / "live"),
                summary=str(tmp_path / "summary.json"), steps=4, batch_size=4, warmup_steps=1,
                log_every=1, checkpoint_every=2, lr=1e-3)
    base.update(kw)
    return PretrainParams(**base)


def run_weights(out) -> dict[str, torch.Tensor]:
    """Encoder (prefixed ``encoder.``) and head weights of a run folder's current checkpoint."""
    folder = checkpoint.model_dir(out)
    weights = {f"encoder.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    weights.update(load_file(str(folder.parent / "training" / "heads.safetensors")))
    return weights


def run_config(out) -> dict:
    return json.loads((checkpoint.model_dir(out) / "config.json").read_text())


def test_schedule_warms_up_then_decays_to_the_floor():
    p = PretrainParams(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    f = [lr_factor(s, p) for s in range(100)]
    assert all(a < b for a, b in zip(f[:10], f[1:11], strict=True))
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_ddp_batches_partition_the_global_batch():
    single = batch_indices(3, 5, 8, 0, 1)
    split = [batch_indices(3, 5, 8, r, 2) for r in range(2)]
    for s in range(2):
        assert split[0][s] + split[1][s] == single[s]


@pytest.mark.parametrize("recipe", list(TINY))
def test_training_writes_checkpoint_and_resume_is_exact(tmp_path, tiny_corpus, recipe):
    full = make_params(tmp_path / "a", tiny_corpus, recipe)
    result = train(full)
    assert np.isfinite(result.final_loss) and len(result.history) == 4
    weights_full = run_weights(full.out)
    config = run_config(full.out)
    assert config["provenance"]["recipe"] == recipe and config["step"] == 4
    assert config["features"]["n_mels" if recipe != "mt2" else "n_bins"]
    assert sorted(p.name for p in Path(full.out).iterdir()) == ["LATEST", "step-000004"]   # older steps removed

    # an interrupted run: stopped right after the step-2 checkpoint, then resumed
    interrupted = make_params(tmp_path / "b", tiny_corpus, recipe)
    resumed = interrupted_then_resumed(interrupted, stop_after=2)
    assert resumed.resumed_from == 2
    weights_resumed = run_weights(interrupted.out)
    assert weights_resumed.keys() == weights_full.keys()
    for k in weights_full:
        torch.testing.assert_close(weights_resumed[k], weights_full[k], rtol=0, atol=0)
    curves_full, curves_resumed = read_curves(full.log), read_curves(interrupted.log)
    assert curves_resumed["train/loss"][0] == [1, 2, 3, 4]
    assert timeless(curves_resumed) == timeless(curves_full)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_corpus, monkeypatch):
    from mirkit.recipes.myna import MynaModel
    original = MynaModel.forward
    calls = {"n": 0}

    def flaky(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        if calls["n"] >= 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(MynaModel, "forward", flaky)
    p = make_params(tmp_path, tiny_corpus, "myna", steps=6)
    with pytest.raises(TrainingDiverged, match=r"step 3: loss is nan.*\(step 2\)"):
        train(p)
    assert run_config(p.out)["step"] == 2
    encoder, _, _ = checkpoint.load_encoder(p.out)
    assert all(torch.isfinite(t).all() for t in encoder.state_dict().values())


def test_bad_checkpoints_fail_with_clear_messages(tmp_path, tiny_corpus):
    p = make_params(tmp_path, tiny_corpus, "myna", steps=2)
    train(p)
    folder = checkpoint.model_dir(p.out)
    with pytest.raises(checkpoint.CheckpointError, match="no such model folder"):
        checkpoint.load_encoder(tmp_path / "nowhere")
    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:200])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load_encoder(bad)
    other = json.loads((folder / "config.json").read_text())
    other["args"]["dim"] = 192
    (bad / "config.json").write_text(json.dumps(other))
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="edited after the weights were written"):
        checkpoint.load_encoder(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable JSON"):
        checkpoint.load_encoder(bad)
    (folder.parent / "training" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable training state"):
        train(p, resume=True)


def test_cli_pretrain_reports_missing_features_and_bad_params(tmp_path, tiny_corpus):
    runner = CliRunner()
    missing = runner.invoke(app, ["pretrain", "--params", "none", "--set",
                                  f"features={tmp_path / 'none.zarr'}", "--set", "manifest=null"])
    assert missing.exit_code == 2 and "none.zarr" in missing.output and "mirkit mels" in missing.output
    bad = runner.invoke(app, ["pretrain", "--params", "none", "--set", "lr=-1"])
    assert bad.exit_code == 2 and "pretrain.lr=-1" in bad.output
    unknown = runner.invoke(app, ["pretrain", "--params", "none", "--recipe", "wav2vec"])
    assert unknown.exit_code == 2 and "wav2vec" in unknown.output and "myna" in unknown.output
    preset = runner.invoke(app, ["pretrain", "--params", "none", "--preset", "huge"])
    assert preset.exit_code == 2 and "preset" in preset.output


@pytest.mark.slow
@pytest.mark.parametrize("recipe, extra", [("myna", {"mask_ratio": 0.0}), ("contrastive", {"proj_dims": [16]}),
                                           ("mt2", {"proj_dims": [16]})])
def test_ddp_two_processes_match_one_process(tmp_path, tiny_corpus, recipe, extra):
    """gloo, 2 ranks × 4 examples == 1 process × 8 examples: same loss, same averaged gradients.

    Random masking is off and the projection heads have no BatchNorm here: per-rank batch
    statistics (SyncBatchNorm is CUDA-only) and per-rank masks legitimately differ from one process.
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_worker import grads_on_global_batch
    raw = {"recipe": recipe, "recipe_params": {recipe: {**TINY[recipe], **extra}},
           "features": tiny_corpus["features"], "tokens": tiny_corpus["tokens"], "batch_size": 8}
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{Path(__file__).parent}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    str(29500 + os.getpid() % 1000), str(Path(__file__).parent / "ddp_worker.py"),
                    json.dumps(raw), str(out)], check=True, env=env, cwd=ROOT, timeout=300,
                   stdout=subprocess.DEVNULL)
    ddp = torch.load(out, weights_only=True)
    from mirkit.params import resolve
    loss, grads = grads_on_global_batch(resolve(PretrainParams, raw), 0, 1)
    assert ddp["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(ddp["grads"]) == set(grads)
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_torchrun_cli_trains_muse_lq_with_ddp(tmp_path, tiny_corpus):
    """The real entry point under torchrun (gloo, 2 ranks): rank 0 writes one checkpoint and one log."""
    import yaml
    p = make_params(tmp_path, tiny_corpus, "muse-lq", steps=3, checkpoint_every=3, log_every=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pretrain": {**p.__dict__, "manifest": None}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(30500 + os.getpid() % 1000), "-m", "mirkit", "pretrain", "--params",
                          str(tmp_path / "params.yaml")], env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    config = run_config(p.out)
    assert config["step"] == 3 and config["provenance"]["recipe"] == "muse-lq"
    steps, losses = read_curves(p.log)["train/loss"]
    assert steps == [1, 2, 3] and all(np.isfinite(losses))
    checkpoint.load_encoder(p.out)


@pytest.mark.slow
def test_torch_compile_trains_like_eager(tmp_path, tiny_corpus, monkeypatch):
    """`pretrain.compile: true` reaches the eager run's weights within float tolerance.

    The compiled step runs with the ``aot_eager`` backend: TorchDynamo capture and AOTAutograd (what mirkit's
    training step must survive: graph breaks, functionalised optimiser-facing gradients, checkpoint keys of
    a compiled module) without inductor's C++ code generation, which is torch's own tested territory and
    took 140-190 s of g++ on a busy 2-core machine for this 2-block model (a few seconds here)."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, **{"backend": "aot_eager", **kw}))
    kw = dict(steps=2, checkpoint_every=2, recipe_params={"myna": {**TINY["myna"], "mask_ratio": 0.0}})
    eager = make_params(tmp_path / "eager", tiny_corpus, "myna", **kw)
    compiled = make_params(tmp_path / "compiled", tiny_corpus, "myna", compile=True, **kw)
    train(eager)
    torch._dynamo.reset()
    train(compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    a = run_weights(eager.out)
    b = run_weights(compiled.out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("recipe, extra", [("myna", {"patch": "hybrid"}), ("myna", {"patch": "vertical"}),
                                           ("mt2", {"objectives": "cpsd"}), ("mt2", {"objectives": "ntxent"}),
                                           ("mt2", {}), ("contrastive", {}), ("muse-lq", {}),
                                           ("muse-lq", {"preset": "cnf-att-tiny"})])
def test_every_parameter_gets_a_gradient(tiny_corpus, recipe, extra):
    """DDP runs without the unused-parameter search, so every recipe variant must use all its parameters."""
    from torch.utils.data import default_collate

    from mirkit.train.loop import ExampleStream, make_recipe, open_sources
    p = PretrainParams(recipe=recipe, recipe_params={recipe: {**TINY[recipe], **extra}}, manifest=None,
                       features=tiny_corpus["features"], tokens=tiny_corpus["tokens"], batch_size=4)
    r = make_recipe(p)
    sources, tracks = open_sources(p, r)
    r.prepare(sources)
    model = r.build_model()
    stream = ExampleStream(r, sources, tracks, 0)
    model(default_collate([stream[k] for k in range(4)]))["loss"].backward()
    assert [n for n, q in model.named_parameters() if q.grad is None] == []


def write_split_manifest(path, corpus, splits=("train", "train", "train", "train", "valid", "valid")):
    rows = ["path,track_id,split"] + [f"{p},{p.name},{s}" for p, s in zip(sorted(Path(corpus["audio"]).glob("*.wav")), splits, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.mark.parametrize("recipe", ["contrastive", "myna"])
def test_validation_loss_is_held_out_deterministic_and_leaves_training_untouched(tmp_path, tiny_corpus, recipe):
    """The held-out loss is logged at step 0, every val_every steps and at the end; it does not move the
    training RNG or the BatchNorm statistics (same weights as a run without it); a resumed run logs the
    same numbers (fixed crops, fixed masks)."""
    manifest = write_split_manifest(tmp_path / "m.csv", tiny_corpus)
    kw = dict(manifest=manifest, splits=["train"], steps=5, val_every=2, val_batches=2)
    plain = make_params(tmp_path / "plain", tiny_corpus, recipe, **{k: v for k, v in kw.items() if k.startswith(("man", "spl", "ste"))})
    with_val = make_params(tmp_path / "val", tiny_corpus, recipe, val_split="valid", **kw)
    train(plain)
    result = train(with_val)
    a, b = (run_weights(q.out) for q in (plain, with_val))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    curves = read_curves(with_val.log)
    steps, values = curves["val/loss"]
    assert steps == [0, 2, 4, 5] and all(np.isfinite(values)) and len(set(values)) == 4
    assert json.loads((Path(with_val.log) / "metrics.json").read_text())["val"]["loss"] == values[-1]
    assert result.history[0]["step"] == 0 and result.history[0]["val/loss"] == values[0]

    from mirkit.eval.inspect import training_curves
    info = training_curves(with_val.log, tmp_path / "training.png")
    assert info["steps"] == 5 and "val/loss" in info["curves"] and info["last_loss"] == curves["train/loss"][1][-1]

    resumed = make_params(tmp_path / "resumed", tiny_corpus, recipe, val_split="valid", **kw)
    train_until(resumed, stop_after=2)
    train(resumed, resume=True)
    assert timeless(read_curves(resumed.log)) == timeless(curves)


def test_validation_split_must_be_held_out(tmp_path, tiny_corpus):
    from mirkit.params import ParamsError
    with pytest.raises(ParamsError, match="val_split='valid' is also in pretrain.splits"):
        make_params(tmp_path, tiny_corpus, manifest="m.csv", splits=["train", "valid"], val_split="valid").check()
    manifest = write_split_manifest(tmp_path / "m.csv", tiny_corpus, splits=("train",) * 6)
    p = make_params(tmp_path, tiny_corpus, manifest=manifest, splits=["train"], val_split="valid")
    with pytest.raises(Exception, match="no track of split 'valid'"):
        train(p)


def test_callbacks_see_every_hook_and_cannot_change_training(tmp_path, tiny_corpus, one_thread):
    """The loop's hooks (mirkit.train.callbacks): start once, evaluation at step 0 and after every step (its
    values logged as curves), after_step every step, at_checkpoint after each checkpoint; a run with a
    callback trains exactly as one without, and a resumed run calls evaluate at the same steps."""
    from mirkit.train.callbacks import Callback

    class Recorder(Callback):
        name = "recorder"

        def __init__(self):
            self.calls: list[tuple[str, int]] = []

        def on_start(self, run):
            self.calls.append(("start", run.start))
            assert run.feature_set == "mel16k" and run.steps == 4 and hasattr(run.model, "encoder")

        def evaluate(self, run, step):
            self.calls.append(("evaluate", step))
            assert run.config(step).step == step
            return {"extra/norm": float(sum(p.detach().abs().sum() for p in run.model.encoder.parameters()))} \
                if step % 2 == 0 else {}

        def after_step(self, run, step, row):
            self.calls.append(("after_step", step))

        def at_checkpoint(self, run, step):
            self.calls.append(("checkpoint", step))
            assert (Path(run.out) / f"step-{step:06d}").is_dir()

    plain = make_params(tmp_path / "plain", tiny_corpus)
    train(plain)
    rec = Recorder()
    hooked = make_params(tmp_path / "hooked", tiny_corpus)
    result = train(hooked, callbacks=[rec])
    assert rec.calls[:2] == [("start", 0), ("evaluate", 0)]
    assert [c for c in rec.calls if c[0] == "evaluate"] == [("evaluate", s) for s in range(5)]
    assert [c for c in rec.calls if c[0] == "after_step"] == [("after_step", s) for s in range(1, 5)]
    assert [c for c in rec.calls if c[0] == "checkpoint"] == [("checkpoint", 2), ("checkpoint", 4)]
    assert rec.calls.index(("checkpoint", 2)) < rec.calls.index(("after_step", 2))
    assert read_curves(hooked.log)["extra/norm"][0] == [0, 2, 4]
    assert set(result.callback_seconds) == {"recorder"}
    a, b = run_weights(plain.out), run_weights(hooked.out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)

    again = Recorder()
    cut = make_params(tmp_path / "cut", tiny_corpus)
    train_until(cut, stop_after=2)
    train(cut, resume=True, callbacks=[again])
    assert again.calls[0] == ("start", 2)
    assert [c for c in again.calls if c[0] == "evaluate"] == [("evaluate", 3), ("evaluate", 4)]


def test_pretrain_command_rejects_a_bad_online_probe_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--params", "none", "--set", f"out={tmp_path / 'run'}",
                                      "--set", "online_probe:={tasks: {k: {type: key, label: key}}, protocol: nope}"])
    assert result.exit_code == 2 and "pretrain.online_probe.protocol='nope'" in result.output, result.output
    assert not (tmp_path / "run").exists()
