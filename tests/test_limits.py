"""Bounded parameters and memory estimates before allocating (issue 13 item 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import invoke
from test_extract import make_checkpoint

from mirkit import limits
from mirkit.data.features import FeatureSpec, FrontEnd, validate_spec
from mirkit.params import ParamsError, resolve
from mirkit.recipes import get


@pytest.mark.parametrize("key, value, words", [("n_fft", 1e8, "n_fft=100000000: must be <= 65536"),
                                               ("hop_length", 1, "hop_length=1: must be >= 16"),
                                               ("n_mels", 1e6, "n_mels=1000000: must be <= 1024"),
                                               ("hop_length", 4096, "must be <= n_fft")])
def test_feature_specs_are_bounded_and_name_their_source(key, value, words):
    spec = {**FeatureSpec().to_dict(), key: value}
    with pytest.raises(ParamsError, match=f"models/x/config.json: .*{words}"):
        validate_spec(spec, source="models/x/config.json")
    with pytest.raises(ParamsError, match="config.json: 'features' must be a mapping"):
        validate_spec([1, 2], source="config.json")
    assert validate_spec(FeatureSpec().to_dict()) == FeatureSpec()


def test_cqt_kernel_memory_is_estimated_before_allocating(monkeypatch):
    monkeypatch.setenv("MIRKIT_MAX_BYTES", "1G")
    spec = {"kind": "cqt", "sample_rate": 22050, "fmin": 0.01, "n_bins": 99, "bins_per_octave": 12}
    with pytest.raises(limits.ResourceError, match="cqt kernels .* would need about .* GiB"):
        resolve(FeatureSpec, spec)
    assert FeatureSpec(kind="cqt", sample_rate=22050, fmin=27.5).kernel_samples == 16384   # nnAudio's value


def test_a_long_input_is_refused_before_the_stft(monkeypatch):
    front = FrontEnd(FeatureSpec())
    monkeypatch.setenv("MIRKIT_MAX_BYTES", "64M")
    from mirkit.data.audio import AudioError
    with pytest.raises(AudioError, match="too long to compute at once"):
        front.check_input(16000 * 3600)
    front.check_input(16000 * 10)


@pytest.mark.parametrize("recipe, key, value", [("myna", "crop_frames", 1e9), ("myna", "proj_dims", [10**9]),
                                                ("mt2", "segment_frames", 100000),
                                                ("contrastive", "segment_frames", 100000),
                                                ("muse-lq", "codebook_size", 1e9), ("muse-lq", "crop_frames", 1e9)])
def test_recipe_parameters_are_bounded(recipe, key, value):
    cls = get(recipe)
    with pytest.raises(ParamsError, match=f"{key}=.*must be <="):
        resolve(cls.Params, {key: value})


def test_token_codebooks_are_bounded(monkeypatch):
    from mirkit.data.tokens import TokensParams
    with pytest.raises(ParamsError, match="codebook_size=1000000000: must be <= 65536"):
        resolve(TokensParams, {"codebook_size": 1e9})
    monkeypatch.setenv("MIRKIT_MAX_BYTES", "1G")
    with pytest.raises(limits.ResourceError, match="codebook"):
        resolve(TokensParams, {"codebook_size": 65536, "codebook_dim": 4096, "num_codebooks": 4})


def test_model_memory_is_estimated_on_the_meta_device(monkeypatch):
    cls = get("myna")
    recipe = cls(resolve(cls.Params, {"preset": "myna-tiny"}))
    size = limits.module_bytes(recipe.build_model)
    assert 0 < size < 50e6
    monkeypatch.setenv("MIRKIT_MAX_BYTES", str(size // 2))
    with pytest.raises(limits.ResourceError, match="config.json"):
        limits.check_module("models/x/config.json: the model", recipe.build_model)


@pytest.mark.parametrize("edit, words", [((None, "window_frames", 10 ** 9), "window_frames=1000000000: must be in 1..16384"),
                                         (("args", "mlp_dim", 10 ** 9), "MIRKIT_MAX_BYTES"),
                                         (("features", "n_fft", 1e8), "config.json: features.n_fft=100000000")])
def test_hostile_checkpoint_configs_are_refused_before_allocating(tmp_path, monkeypatch, edit, words):
    """A model folder's config.json asking for a huge window, a huge model or huge STFT kernels is
    refused (naming config.json) before anything of that size is allocated; verify says so too."""
    ckpt = make_checkpoint(tmp_path / "ckpt", preset="myna-tiny")
    config = json.loads((ckpt / "config.json").read_text())
    section, key, value = edit
    (config[section] if section else config)[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    from mirkit.api import load_encoder
    from mirkit.errors import InputError
    monkeypatch.setenv("MIRKIT_MAX_BYTES", "4G")
    with pytest.raises(InputError, match=words) as err:
        load_encoder(ckpt, device="cpu")
    assert "config.json" in str(err.value)
    r = invoke("verify", str(ckpt))
    short = words.split(": ")[-1] if words.startswith("config.json") else words.split(":")[0]
    assert r.exit_code == 2 and short in r.text, r.text


def test_verify_a_sound_model_dir(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", preset="myna-tiny")
    for path in (ckpt, tmp_path / "ckpt"):          # the model folder, and the training run folder
        r = invoke("verify", str(path))
        assert r.exit_code == 0 and "sound" in r.text, r.text
    config = json.loads((ckpt / "config.json").read_text())
    del config["window_frames"]
    (ckpt / "config.json").write_text(json.dumps(config))
    r = invoke("verify", str(ckpt))
    assert r.exit_code == 2 and "missing key 'window_frames'" in r.text


def test_a_file_too_long_to_decode_is_refused_before_decoding(tmp_path, monkeypatch):
    import soundfile as sf

    from mirkit.data.audio import AudioError, read_audio
    sf.write(tmp_path / "long.wav", np.full(16000 * 20, 0.1, np.float32), 16000)
    monkeypatch.setenv("MIRKIT_MAX_BYTES", "1M")
    with pytest.raises(AudioError, match="too long to decode at once: 20 s"):
        read_audio(tmp_path / "long.wav")
    assert read_audio(tmp_path / "long.wav", 0.0, 2.0)[0].shape == (32000,)   # a clip of it fits
