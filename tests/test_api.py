"""Python API: `mirkit.load_encoder(...).embed(...)` equals `mirkit extract`, resamples and
downmixes waveforms, and the documented example runs."""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_extract import SR, build_features, make_checkpoint, params, write_dataset

import mirkit.api as api
from mirkit.api import load_encoder
from mirkit.errors import InputError
from mirkit.eval.embeddings import Embeddings
from mirkit.eval.extract import run
from mirkit.train.checkpoint import CheckpointError

README = Path(__file__).resolve().parents[1] / "README.md"


def sines(seconds: float, sr: int) -> np.ndarray:
    """A band-limited signal (all partials far below 8 kHz), so resampling barely changes it."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 660 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
            + 0.1 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("api")
    write_dataset(tmp / "data", [("a", 7.0, 220.0), ("b", 3.5, 330.0)])
    build_features(tmp / "data" / "manifest.csv", tmp / "features.zarr")
    make_checkpoint(tmp / "ckpt")
    return tmp


@pytest.fixture(scope="module")
def enc(workspace):
    return load_encoder(workspace / "ckpt", device="cpu")


def test_api_equals_extract(workspace, enc):
    p = params(workspace, out=workspace / "emb.zarr")
    report = run(p)
    assert report.from_store == 2                       # the stage read the feature store, the API decodes audio
    store = Embeddings(p.out)
    for i, name in enumerate(("a", "b")):
        out = enc.embed(workspace / "data" / f"{name}.wav", frames=True)
        np.testing.assert_allclose(out["chunks"], store.chunks(i), atol=1e-4, rtol=1e-4)
        frames, times = store.frames(i)
        np.testing.assert_allclose(out["frames"], frames, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(out["times"], times, atol=1e-5)
        np.testing.assert_array_equal(enc.embed(workspace / "data" / f"{name}.wav"), out["chunks"])


def test_waveforms_at_other_rates_and_channels(tmp_path, enc):
    ref = enc.embed(sines(5.0, SR), sample_rate=SR)
    wave44 = sines(5.0, 44100)
    sf.write(tmp_path / "x44.wav", wave44, 44100, subtype="FLOAT")
    from_file = enc.embed(tmp_path / "x44.wav")
    from_array = enc.embed(wave44, sample_rate=44100)
    np.testing.assert_allclose(from_file, from_array, atol=1e-5)    # same resampler on both paths
    assert from_array.shape == ref.shape
    cos = (from_array * ref).sum(-1) / np.linalg.norm(from_array, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.99                                          # resampled input ~ native input
    noise = enc.embed(np.random.default_rng(0).standard_normal(5 * SR).astype(np.float32), sample_rate=SR)
    cos_noise = (noise * ref).sum(-1) / np.linalg.norm(noise, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos_noise.max() < cos.min()                               # ... and the test can tell inputs apart
    stereo = np.stack([wave44, wave44])                             # (channels, samples), downmixed
    np.testing.assert_allclose(enc.embed(stereo, sample_rate=44100), from_array, atol=1e-6)
    pt = enc.embed(torch.from_numpy(wave44), sample_rate=44100, return_tensors="pt", frames=True)
    assert isinstance(pt["chunks"], torch.Tensor) and pt["frames"].ndim == 2 and pt["times"].ndim == 1


def test_api_arguments_are_checked(workspace, enc, tmp_path):
    with pytest.raises(InputError, match="sample_rate"):
        enc.embed(np.zeros(1000, np.float32))
    with pytest.raises(InputError, match="pooling='cls'"):
        enc.embed(sines(1.0, SR), sample_rate=SR, pooling="cls")
    with pytest.raises(InputError, match="layer=7"):
        enc.embed(sines(1.0, SR), sample_rate=SR, layer=7)
    with pytest.raises(CheckpointError, match="no such model folder"):
        load_encoder(tmp_path / "nothing")
    assert enc.layers == (-1, 0, 1, 2) and enc.poolings == ("mean",) and enc.sample_rate == SR
    layer1 = enc.embed(sines(4.0, SR), sample_rate=SR, layer=1)
    assert layer1.shape == (1, 64) and not np.allclose(layer1, enc.embed(sines(4.0, SR), sample_rate=SR))


def docstring_example() -> str:
    """The example block of mirkit.api's docstring (the indented block after 'Example ...::')."""
    doc = api.__doc__
    start = doc.index("::\n", doc.index("Example")) + 3
    lines = []
    for line in doc[start:].splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


def test_documented_example_runs(tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "models" / "pretrain")
    monkeypatch.chdir(tmp_path)
    code = docstring_example()
    assert "mirkit.load_encoder" in code
    buf = io.StringIO()
    import mirkit
    if not hasattr(mirkit, "load_encoder"):        # until the lead wires it into mirkit/__init__.py
        monkeypatch.setattr(mirkit, "load_encoder", load_encoder, raising=False)
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "api-example", "exec"), {})
    printed = buf.getvalue()
    # 5 s at 16 kHz = 157 frames: one window + an end-aligned tail (61 >= 48 frames) -> 2 chunks;
    # columns: 6 of the first window + 4 of the tail mostly past frame 96 (starts 93, 109, 125, 141)
    assert printed.startswith("(2, 64) (10, 64) [0.24")


def test_readme_example_is_the_tested_one():
    text = README.read_text() if README.exists() else ""
    blocks = re.findall(r"```python api-example\n(.*?)```", text, flags=re.S)
    if not blocks:
        pytest.skip("README.md has no ```python api-example block yet")
    assert blocks[0].strip() + "\n" == docstring_example()


# ----------------------------------------------------------------------------- many files, all layers
def test_embed_files_equals_embed_per_file_and_the_stage(workspace, enc, tmp_path):
    files = [workspace / "data" / "a.wav", workspace / "data" / "b.wav"]
    many = enc.embed_files(files, batch_size=3)
    assert list(many) == [str(f) for f in files]
    for f in files:
        np.testing.assert_allclose(many[str(f)], enc.embed(f), atol=1e-6)
    # a manifest, reading the feature store, written as the extract stage writes it
    report = enc.embed_files(workspace / "data" / "manifest.csv", features=str(workspace / "features.zarr"),
                             out=tmp_path / "api.zarr", frames=True)
    assert report.embedded == 2 and report.from_store == 2
    stage = run(params(workspace, out=tmp_path / "stage.zarr"))
    assert stage.embedded == 2
    a, b = Embeddings(str(tmp_path / "api.zarr")), Embeddings(str(tmp_path / "stage.zarr"))
    for i in range(2):
        np.testing.assert_array_equal(a.chunks(i), b.chunks(i))
        np.testing.assert_array_equal(a.frames(i)[0], b.frames(i)[0])
    assert a.attrs["timing"] == b.attrs["timing"] and a.attrs["timing"]["frame_rate"] == pytest.approx(1.953125)
    again = enc.embed_files(workspace / "data" / "manifest.csv", out=tmp_path / "api.zarr", frames=True)
    assert again.skipped == 2 and again.embedded == 0             # resumes like the stage


def test_all_layers_come_from_one_pass_and_equal_single_layers(workspace, enc, tmp_path):
    wave = sines(6.0, SR)
    every = enc.embed(wave, sample_rate=SR, layer="all", frames=True)
    depth = enc.frozen.encoder.depth
    assert every["chunks"].shape[0] == depth + 2 and every["frames"].shape[0] == depth + 2
    for i, layer in enumerate([*range(depth + 1), -1]):
        single = enc.embed(wave, sample_rate=SR, layer=layer, frames=True)
        np.testing.assert_allclose(every["chunks"][i], single["chunks"], atol=1e-6)
        np.testing.assert_allclose(every["frames"][i], single["frames"], atol=1e-6)
    np.testing.assert_array_equal(every["times"], single["times"])
    picked = enc.embed_files([workspace / "data" / "a.wav"], layers=[1, -1])
    np.testing.assert_allclose(picked[str(workspace / "data" / "a.wav")][1], enc.embed(workspace / "data" / "a.wav"),
                               atol=1e-6)
    report = enc.embed_files(workspace / "data" / "manifest.csv", layers=[0, -1], out=tmp_path / "layers")
    assert report.embedded == 2
    assert sorted(p.name for p in (tmp_path / "layers").iterdir()) == ["layer_0.zarr", "layer_last.zarr"]
    assert Embeddings(str(tmp_path / "layers" / "layer_0.zarr")).layer == 0
    with pytest.raises(ValueError, match="layer=9"):
        enc.embed(wave, sample_rate=SR, layer=[1, 9])
    with pytest.raises(ValueError, match="'every'"):
        enc.embed(wave, sample_rate=SR, layer="every")


def test_public_api_is_listed_and_loads_lazily():
    import subprocess
    import sys
    code = ("import sys, mirkit; names = dir(mirkit); "
            "assert {'load_encoder', 'embed_files', 'create_encoder', 'list_encoders', 'MirkitEncoder'} <= set(names), names; "
            "assert 'torch' not in sys.modules; mirkit.load_encoder; assert 'torch' in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(README.parent)})
    assert res.stdout.strip() == "ok", res.stderr[-2000:]
    import mirkit
    assert set(mirkit.__all__) <= set(dir(mirkit))
    assert any(e["name"] == "brn-sum-164m" for e in mirkit.list_encoders())


def readme_block(name: str) -> str:
    blocks = re.findall(rf"```python {name}\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, f"README.md has no ```python {name} block"
    return blocks[0]


def test_readme_examples_for_many_files_and_all_layers_run(tmp_path, monkeypatch):
    samples = tmp_path / "data" / "samples"
    samples.mkdir(parents=True)
    for i, seconds in enumerate((5.0, 3.5)):
        sf.write(samples / f"clip_{i:04d}.wav", sines(seconds, 22050), 22050)
    (samples / "manifest.csv").write_text("path,split\nclip_0000.wav,train\nclip_0001.wav,test\n")
    build_features(samples / "manifest.csv", tmp_path / "data" / "features.zarr")
    make_checkpoint(tmp_path / "models" / "pretrain")
    monkeypatch.chdir(tmp_path)
    printed = {}
    for name in ("api-many-files", "api-all-layers"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(readme_block(name), name, "exec"), {})
        printed[name] = buf.getvalue()
    many = printed["api-many-files"].splitlines()
    assert many[0] == "data/samples/clip_0000.wav (2, 64)" and many[1] == "data/samples/clip_0001.wav (1, 64)"
    assert many[2] == "2 embedded, 2 from the feature store"
    layers = printed["api-all-layers"].splitlines()
    assert layers[0] == "(4, 2, 64) [0, 1, 2, -1]"
    assert layers[1] == "['layer_2.zarr', 'layer_last.zarr']"


# ----------------------------------------------------------------------------- issue 18.6: integer PCM
@pytest.mark.parametrize("subtype, dtype", [("PCM_16", "int16"), ("PCM_32", "int32")])
def test_integer_pcm_is_scaled_as_libsndfile_reads_the_same_file(tmp_path, subtype, dtype):
    """Oracle: soundfile returns a PCM file as integers and as floats; pcm_to_float maps the first onto
    the second exactly (signed n-bit / 2**(n-1))."""
    sf.write(tmp_path / "x.wav", sines(0.5, SR), SR, subtype=subtype)
    ints, _ = sf.read(tmp_path / "x.wav", dtype=dtype)
    floats, _ = sf.read(tmp_path / "x.wav", dtype="float32")
    np.testing.assert_array_equal(api.pcm_to_float(ints), floats)


def test_unsigned_8_bit_and_int8_follow_the_wav_convention():
    np.testing.assert_array_equal(api.pcm_to_float(np.array([0, 64, 128, 192, 255], np.uint8)),
                                  np.array([-1, -0.5, 0, 0.5, 127 / 128], np.float32))
    np.testing.assert_array_equal(api.pcm_to_float(np.array([-128, 0, 64], np.int8)), np.array([-1, 0, 0.5], np.float32))
    for bad in (np.zeros(4, np.int64), np.zeros(4, np.uint16), np.zeros(4, bool)):
        with pytest.raises(InputError, match=f"dtype {bad.dtype}"):
            api.pcm_to_float(bad)


@pytest.mark.parametrize("dtype, offset, scale", [(np.int16, 0, 2 ** 15), (np.int32, 0, 2 ** 31), (np.uint8, 128, 2 ** 7)])
def test_embed_of_integer_pcm_equals_embed_of_the_same_audio_as_float(enc, dtype, offset, scale):
    """Before: int16 samples were taken as floats of magnitude ~10^4 (cosine 0.11 to the float input)."""
    wave = sines(4.0, SR)
    pcm = np.clip(np.round(wave * scale) + offset, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    same_as_float = ((pcm.astype(np.float64) - offset) / scale).astype(np.float32)   # the same audio, as floats
    ref = enc.embed(same_as_float, sample_rate=SR)
    for x in (pcm, torch.from_numpy(pcm)):
        got = enc.embed(x, sample_rate=SR)
        cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() > 0.9999, cos
    if dtype is not np.uint8:   # 16/32-bit quantisation noise is far below what the model tells apart
        clean = enc.embed(wave, sample_rate=SR)
        assert ((got * clean).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(clean, axis=-1)).min() > 0.999
