"""`mirkit import musicfm`: a checkpoint in minzwon/musicfm's published layout (tiny random weights, written
and run by the reference code: tests/fixtures/importers/make_reference.py) converts into a model folder
whose every layer equals the reference forward pass; unknown keys, wrong shapes, bad stats and pickles
that would run code are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import invoke as run_cli
from hostile import Payload
from safetensors.torch import load_file

import mirkit
from mirkit.data.features import PRESETS, FrontEnd
from mirkit.importers.musicfm import import_musicfm
from mirkit.train.checkpoint import CheckpointError

FIX = Path(__file__).parent / "fixtures" / "importers"
WEIGHTS, STATS = FIX / "musicfm-tiny.pt", FIX / "musicfm-tiny_stats.json"
LAYERS = [0, 1, 2, -1]


def wave() -> np.ndarray:
    return load_file(str(FIX / "wave.safetensors"))["pcm16"].float().numpy() / 32768.0


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("musicfm") / "model"
    import_musicfm(WEIGHTS, STATS, out)
    return out


def test_every_layer_equals_the_reference_forward(model):
    torch.set_num_threads(1)
    ref = load_file(str(FIX / "musicfm-tiny-outputs.safetensors"))
    enc = mirkit.load_encoder(model, device="cpu").frozen.encoder
    # from the reference's own mel: the encoder alone, every layer (2 blocks: 0, 1, 2 and the final norm)
    with torch.no_grad():
        out = enc.encode(ref["mel_db"][None], layers=LAYERS)
        for layer in LAYERS:
            assert (out.hidden[layer][0] - ref[f"layer.{layer}"]).abs().max() <= 1e-4, layer
        # from the waveform through mirkit's mel24k front end in fp32 (the reference drops the last frame)
        spec = PRESETS["mel24k"]
        spec = type(spec)(**{**spec.__dict__, "dtype": "float32"})
        mel = FrontEnd(spec)(torch.from_numpy(wave())[None])[0, :-1].T
        assert (mel - ref["mel_db"]).abs().max() <= 1e-3
        out = enc.encode(mel[None], layers=LAYERS)
        for layer in LAYERS:
            assert (out.hidden[layer][0] - ref[f"layer.{layer}"]).abs().max() <= 1e-4, layer


def test_card_and_api_carry_licence_and_sha256(model):
    import hashlib
    config = json.loads((model / "config.json").read_text())
    prov = config["provenance"]
    assert prov["source_sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert prov["licence"].startswith("MIT") and config["feature_set"] == "mel24k" and config["window_frames"] == 3000
    card = (model / "README.md").read_text()
    assert prov["source_sha256"] in card and "MIT" in card
    enc = mirkit.load_encoder(model, device="cpu")
    assert enc.frozen.model_info["licence"] == prov["licence"]
    emb = enc.embed(wave(), sample_rate=24000, layer="all", frames=True)
    assert emb["chunks"].shape == (4, 1, 32) and emb["frames"].shape[:2] == (4, 26)   # 0..2, -1; 101 mel frames at 25 Hz
    assert np.isfinite(emb["frames"]).all()


def test_unknown_keys_wrong_shapes_and_bad_stats_are_named(tmp_path):
    obj = torch.load(WEIGHTS, weights_only=True)
    sd = dict(obj["state_dict"])
    torch.save({"state_dict": {**sd, "model.conformer.layers.0.self_attn.linear_pos.weight": torch.zeros(32, 32)}},
               tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unknown key\(s\).*conformer\.layers\.0\.self_attn\.linear_pos\.weight"):
        import_musicfm(tmp_path / "extra.pt", STATS, tmp_path / "o1")
    bad = dict(sd)
    bad["model.conformer.layers.1.ffn2.output_dense.weight"] = torch.zeros(32, 65)
    torch.save({"state_dict": bad}, tmp_path / "shape.pt")
    res = run_cli("import", "musicfm", str(tmp_path / "shape.pt"), "--stats", str(STATS), "--out", str(tmp_path / "o2"))
    assert res.exit_code == 2 and "conformer.layers.1.ffn2.output_dense.weight" in res.text and "(32, 65)" in res.text
    assert not (tmp_path / "o2").exists()
    missing = {k: v for k, v in sd.items() if "conv_module.batch_norm.running_var" not in k}
    torch.save({"state_dict": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing weight\(s\).*batch_norm\.running_var"):
        import_musicfm(tmp_path / "missing.pt", STATS, tmp_path / "o3")
    fb = dict(sd)
    fb["model.preprocessor_melspec_2048.mel_stft.mel_scale.fb"] = sd["model.preprocessor_melspec_2048.mel_stft.mel_scale.fb"] * 2
    torch.save({"state_dict": fb}, tmp_path / "fb.pt")
    with pytest.raises(CheckpointError, match="mel_scale.fb is not MusicFM's mel filterbank"):
        import_musicfm(tmp_path / "fb.pt", STATS, tmp_path / "o4")
    (tmp_path / "stats.json").write_text(json.dumps({"melspec_2048_mean": -10.0}))
    res = run_cli("import", "musicfm", str(WEIGHTS), "--stats", str(tmp_path / "stats.json"), "--out", str(tmp_path / "o5"))
    assert res.exit_code == 2 and "melspec_2048_std" in res.text and "stats.json" in res.text


def test_a_pickle_that_would_run_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    obj = torch.load(WEIGHTS, weights_only=True)
    torch.save({"state_dict": obj["state_dict"], "callbacks": Payload(marker)}, tmp_path / "evil.pt")
    res = run_cli("import", "musicfm", str(tmp_path / "evil.pt"), "--stats", str(STATS), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "refused to load" in res.text and "weights_only" in res.text
    assert not marker.exists() and not (tmp_path / "o").exists()
