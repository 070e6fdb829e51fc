"""The random-projection quantizer and the ``tokens`` stage, on tiny stores (CPU, a few seconds)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mirkit.cli import app
from mirkit.data import store
from mirkit.data.quantizer import QuantizerFileError, RandomProjectionQuantizer, sidecar_path
from mirkit.data.store import create_or_open, open_set
from mirkit.data.tokens import TokensParams, codebook_stats, feature_stats, run, stack_frames, tokenize
from mirkit.params import ParamsError, resolve

BINS, STACK, CODES = 8, 4, 64
LENGTHS = (41, 16, 3, 30, 27)   # 10, 4, 0, 7, 6 tokens; 1+0+3+2+3 trailing frames dropped


def make_features(url: str, name: str = "mel24k", lengths=LENGTHS, seed: int = 0) -> list[np.ndarray]:
    """A tiny feature set of dB-like random frames; returns the frames as stored (float16 -> float32)."""
    rng = np.random.default_rng(seed)
    fs, _ = create_or_open(url, name, {"preset": name, "sr": 24000, "hop": 240}, n_bins=BINS, frame_rate=100.0)
    items = [(f"track{i}", f"audio/{i}.wav", f"fp{i}", rng.normal(-40, 12, (n, BINS)).astype(np.float32))
             for i, n in enumerate(lengths)]
    fs.append(items)
    return [f.astype(np.float16).astype(np.float32) for *_, f in items]


def params_for(tmp_path, **extra) -> TokensParams:
    raw = {"features": str(tmp_path / "features.zarr"), "out": str(tmp_path / "tokens.zarr"),
           "metrics": str(tmp_path / "metrics" / "tokens.json"), "stack": STACK, "codebook_size": CODES,
           "batch_tracks": 2}
    raw.update(extra)
    return resolve(TokensParams, raw, section="tokens")


def all_codes(url: str, name: str = "mel24k") -> np.ndarray:
    return np.concatenate(list(open_set(url, name).iter_frames()))


# -- quantizer ---------------------------------------------------------------------------------------
def test_quantizer_is_seeded_frozen_and_leaves_global_rng_alone():
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    a = RandomProjectionQuantizer(32, codebook_size=CODES, codebook_dim=16, num_codebooks=2, seed=7)
    b = RandomProjectionQuantizer(32, codebook_size=CODES, codebook_dim=16, num_codebooks=2, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.projection, b.projection) and torch.equal(a.codebook, b.codebook)
    c = RandomProjectionQuantizer(32, codebook_size=CODES, codebook_dim=16, num_codebooks=2, seed=8)
    assert not torch.equal(a.codebook, c.codebook)
    # codebook i uses seed + i (MusicFM: 142 + i): codebook 1 of seed 7 is codebook 0 of seed 8
    assert not torch.equal(a.codebook[0], a.codebook[1])
    assert torch.equal(a.codebook[1], c.codebook[0]) and torch.equal(a.projection[1], c.projection[0])
    assert not any(t.requires_grad for t in a.buffers()) and list(a.parameters()) == []
    x = torch.randn(5, 3, 32, requires_grad=True)
    codes = a(x)
    assert codes.shape == (5, 3, 2) and codes.dtype == torch.int64 and not codes.requires_grad
    assert int(codes.min()) >= 0 and int(codes.max()) < CODES


def test_quantizer_init_distributions():
    q = RandomProjectionQuantizer(512, codebook_size=1024, codebook_dim=16, seed=142)
    xavier_std = (2.0 / (512 + 16)) ** 0.5
    assert float(q.projection.std()) == pytest.approx(xavier_std, rel=0.05)
    assert float(q.codebook.std()) == pytest.approx(1.0, rel=0.05)
    assert abs(float(q.codebook.mean())) < 0.05


def test_lookup_is_nearest_unit_codeword_bruteforce():
    q = RandomProjectionQuantizer(32, codebook_size=CODES, codebook_dim=16, num_codebooks=2, seed=3,
                                  mean=-40.0, std=12.0)
    x = np.random.default_rng(1).normal(-40, 12, (200, 3, 32)).astype(np.float32)
    codes = q(torch.from_numpy(x)).numpy()
    xn = ((x.astype(np.float64) + 40.0) / 12.0).reshape(-1, 32)
    for i in range(2):
        z = xn @ q.projection[i].double().numpy()
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        cb = q.codebook[i].double().numpy()
        cb /= np.linalg.norm(cb, axis=1, keepdims=True)
        dist = ((z[:, None, :] - cb[None, :, :]) ** 2).sum(-1)
        ref = dist.argmin(1)
        got = codes[..., i].reshape(-1)
        chosen = dist[np.arange(len(got)), got]
        # identical except (float32 vs float64) near-ties, where the chosen code is as near as the best
        assert np.all((got == ref) | (chosen - dist.min(1) < 1e-5))
        assert (got == ref).mean() > 0.99


def test_constructor_rejects_bad_values():
    with pytest.raises(ValueError, match="codebook_size"):
        RandomProjectionQuantizer(32, codebook_size=1)
    with pytest.raises(ValueError, match="std"):
        RandomProjectionQuantizer(32, std=0.0)
    with pytest.raises(ValueError, match="expected vectors of size 32"):
        RandomProjectionQuantizer(32, codebook_size=CODES)(torch.zeros(2, 31))


def test_save_load_round_trip_and_clear_errors(tmp_path):
    q = RandomProjectionQuantizer(32, codebook_size=CODES, num_codebooks=2, seed=11, mean=-3.5, std=2.25)
    path = tmp_path / "q" / "quantizer.safetensors"
    q.save(path)
    assert sidecar_path(path) == str(tmp_path / "q" / "quantizer.json")
    r = RandomProjectionQuantizer.load(path)
    assert r.hparams() == q.hparams()
    assert torch.equal(r.projection, q.projection) and torch.equal(r.codebook, q.codebook)
    x = torch.randn(50, 32) * 2 - 3
    assert torch.equal(r(x), q(x))

    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(QuantizerFileError, match="truncated or corrupt"):
        RandomProjectionQuantizer.load(path)
    path.write_bytes(blob)

    meta = json.loads((tmp_path / "q" / "quantizer.json").read_text())
    (tmp_path / "q" / "quantizer.json").write_text(json.dumps({**meta, "input_dim": 48}))
    with pytest.raises(QuantizerFileError, match=r"'projection' has shape \(2, 32, 16\).*\(2, 48, 16\)"):
        RandomProjectionQuantizer.load(path)

    with pytest.raises(QuantizerFileError, match="hyper-parameters file is missing"):
        RandomProjectionQuantizer.load(tmp_path / "nowhere.safetensors")
    (tmp_path / "q" / "quantizer.json").write_text(json.dumps(meta))
    path.unlink()
    with pytest.raises(QuantizerFileError, match="weights file is missing"):
        RandomProjectionQuantizer.load(path)


def test_save_load_through_fsspec_url():
    url = f"memory://rpq-{uuid.uuid4().hex}/quantizer.safetensors"
    q = RandomProjectionQuantizer(16, codebook_size=CODES, seed=5)
    q.save(url)
    assert torch.equal(RandomProjectionQuantizer.load(url).codebook, q.codebook)


# -- stacking, statistics ----------------------------------------------------------------------------
def test_stacking_layout_and_alignment():
    rng = np.random.default_rng(2)
    frames = rng.normal(size=(43, BINS)).astype(np.float32)
    stacked = stack_frames(frames, STACK)
    assert stacked.shape == (10, STACK * BINS)          # 3 trailing frames dropped
    for t in range(10):                                  # frame-major: [frame 4t bins, frame 4t+1 bins, ...]
        np.testing.assert_array_equal(stacked[t], frames[STACK * t: STACK * t + STACK].ravel())

    q = RandomProjectionQuantizer(STACK * BINS, codebook_size=CODES, seed=0)
    base = tokenize(frames, q, STACK)
    assert base.shape == (10, 1) and base.dtype == np.int32
    t = 3
    changed_target = False
    for _ in range(10):                              # perturb frame 4t+5 (inside token t+1) only
        perturbed = frames.copy()
        perturbed[STACK * t + 5] = rng.normal(size=BINS) * 5
        codes = tokenize(perturbed, q, STACK)
        others = np.ones(10, bool)
        others[t + 1] = False
        np.testing.assert_array_equal(codes[others], base[others])
        changed_target |= bool(codes[t + 1, 0] != base[t + 1, 0])
    assert changed_target
    perturbed = frames.copy()
    perturbed[40:] += 100.0                              # trailing frames never reach a token
    np.testing.assert_array_equal(tokenize(perturbed, q, STACK), base)


def test_codebook_stats_perplexity():
    uniform = np.zeros((1, CODES), np.int64)
    uniform[0, :10] = 7
    collapsed = np.zeros((1, CODES), np.int64)
    collapsed[0, 5] = 100
    (u,), (c,) = codebook_stats(uniform), codebook_stats(collapsed)
    assert u["codes_used"] == 10 and u["fraction_used"] == pytest.approx(10 / CODES)
    assert u["perplexity"] == pytest.approx(10.0)
    assert c["codes_used"] == 1 and c["perplexity"] == pytest.approx(1.0)
    skewed = np.zeros((1, CODES), np.int64)
    skewed[0, :2] = (90, 10)
    assert 1.0 < codebook_stats(skewed)[0]["perplexity"] < 2.0


def test_feature_stats_streaming_matches_numpy(tmp_path):
    frames = make_features(str(tmp_path / "f.zarr"))
    everything = np.concatenate(frames).astype(np.float64)
    for block in (7, 65536):                              # merged across many blocks, and in one
        mean, std = feature_stats(open_set(str(tmp_path / "f.zarr"), "mel24k"), block=block)
        assert mean == pytest.approx(everything.mean(), rel=1e-12)
        assert std == pytest.approx(everything.std(), rel=1e-12)


# -- the stage -----------------------------------------------------------------------------------------
def test_stage_end_to_end_via_cli(tmp_path):
    frames = make_features(str(tmp_path / "features.zarr"))
    params = {"tokens": {"features": str(tmp_path / "features.zarr"), "out": str(tmp_path / "tokens.zarr"),
                         "metrics": str(tmp_path / "metrics" / "tokens.json"), "codebook_size": CODES,
                         "batch_tracks": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["tokens", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "codes used" in result.output and "perplexity" in result.output

    tokens, features = open_set(str(tmp_path / "tokens.zarr"), "mel24k"), open_set(str(tmp_path / "features.zarr"), "mel24k")
    assert [t.track_id for t in tokens.tracks] == [t.track_id for t in features.tracks]
    assert [t.fingerprint for t in tokens.tracks] == [t.fingerprint for t in features.tracks]
    assert [t.n_frames for t in tokens.tracks] == [n // STACK for n in LENGTHS]
    assert tokens.frame_rate == 25.0 and tokens.n_bins == 1 and tokens.attrs["dtype"] == "int32"
    everything = np.concatenate(frames).astype(np.float64)
    for key, value in {"feature_set": "mel24k", "stack": 4, "codebook_size": CODES, "num_codebooks": 1}.items():
        assert tokens.attrs[key] == value
    assert tokens.attrs["mean"] == pytest.approx(everything.mean()) and tokens.attrs["std"] == pytest.approx(everything.std())
    assert tokens.spec["feature_spec"] == features.spec and tokens.spec["seed"] == 142

    # the saved quantizer alone reproduces the stored codes from the stored features
    q = RandomProjectionQuantizer.load(tmp_path / "quantizer.safetensors")
    assert q.mean == tokens.attrs["mean"] and q.std == tokens.attrs["std"]
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(tokens.read(i), tokenize(f, q, STACK))

    metrics = json.loads((tmp_path / "metrics" / "tokens.json").read_text())
    assert metrics["n_tokens"] == sum(n // STACK for n in LENGTHS) == tokens.total_frames
    assert metrics["dropped_frames"] == sum(n % STACK for n in LENGTHS)
    codes = all_codes(str(tmp_path / "tokens.zarr"))[:, 0]
    assert metrics["codebook_0"]["codes_used"] == len(np.unique(codes))
    assert 1.0 < metrics["codebook_0"]["perplexity"] <= metrics["codebook_0"]["codes_used"]


def test_rerun_skips_and_same_params_give_identical_codes(tmp_path):
    make_features(str(tmp_path / "features.zarr"))
    p = params_for(tmp_path)
    first = run(p)
    assert (first.status, first.tokenised, first.skipped) == ("created", 5, 0)
    codes = all_codes(p.out)
    again = run(p)
    assert (again.status, again.tokenised, again.skipped) == ("resumed", 0, 5)
    np.testing.assert_array_equal(all_codes(p.out), codes)
    elsewhere = run(params_for(tmp_path, out=str(tmp_path / "other.zarr"),
                               quantizer=str(tmp_path / "other.safetensors")))
    assert elsewhere.status == "created"
    np.testing.assert_array_equal(all_codes(str(tmp_path / "other.zarr")), codes)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    make_features(str(tmp_path / "features.zarr"))
    reference = run(params_for(tmp_path, out=str(tmp_path / "reference.zarr")))
    p = params_for(tmp_path)
    real_append, calls = store.FrameSet.append, []

    def dying_append(self, items):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt   # killed before the second batch commits
        real_append(self, items)

    monkeypatch.setattr(store.FrameSet, "append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        run(p)
    monkeypatch.setattr(store.FrameSet, "append", real_append)
    assert len(open_set(p.out, "mel24k")) == 2
    resumed = run(p)
    assert (resumed.status, resumed.tokenised, resumed.skipped) == ("resumed", 3, 2)
    np.testing.assert_array_equal(all_codes(p.out), all_codes(str(tmp_path / "reference.zarr")))
    assert resumed.codebooks == reference.codebooks


def test_changed_seed_or_features_replace_the_set(tmp_path):
    make_features(str(tmp_path / "features.zarr"))
    codes = (run(params_for(tmp_path)), all_codes(str(tmp_path / "tokens.zarr")))[1]
    other = run(params_for(tmp_path, seed=143))
    assert (other.status, other.tokenised) == ("replaced", 5)
    assert not np.array_equal(all_codes(str(tmp_path / "tokens.zarr")), codes)
    assert RandomProjectionQuantizer.load(tmp_path / "quantizer.safetensors").seed == 143
    # more feature tracks change the global stats: the token set is rebuilt, not extended
    fs, _ = create_or_open(str(tmp_path / "features.zarr"), "mel24k", {"preset": "mel24k", "sr": 24000, "hop": 240},
                           n_bins=BINS, frame_rate=100.0)
    fs.append([("track5", "audio/5.wav", "fp5", np.full((8, BINS), -10.0, np.float32))])
    grown = run(params_for(tmp_path, seed=143))
    assert (grown.status, grown.tokenised, grown.n_tracks) == ("replaced", 6, 6)


def test_stage_over_fsspec_memory_store():
    root = f"memory://tokens-{uuid.uuid4().hex}"
    make_features(f"{root}/features.zarr")
    p = resolve(TokensParams, {"features": f"{root}/features.zarr", "out": f"{root}/tokens.zarr",
                               "metrics": "/dev/null", "codebook_size": CODES}, section="tokens")
    assert p.quantizer_path == f"{root}/quantizer.safetensors"
    result = run(p)
    assert result.n_tokens == sum(n // STACK for n in LENGTHS)
    assert RandomProjectionQuantizer.load(p.quantizer_path).codebook_size == CODES


def _squeezed(result) -> str:
    """CLI output without whitespace (rich wraps long lines at the terminal width)."""
    return "".join(result.output.split())


def test_missing_inputs_and_bad_params_fail_clearly(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["tokens", "--params", "none",
                                  "--features", str(tmp_path / "absent.zarr"), "--out", str(tmp_path / "t.zarr")])
    assert missing.exit_code == 2 and "absent.zarr:noZarrstorehere" in _squeezed(missing)
    make_features(str(tmp_path / "features.zarr"), name="mel16k")
    wrong_set = runner.invoke(app, ["tokens", "--params", "none",
                                    "--features", str(tmp_path / "features.zarr"), "--out", str(tmp_path / "t.zarr")])
    assert wrong_set.exit_code == 2 and "nosetnamed'mel24k'(has:mel16k)" in _squeezed(wrong_set)
    assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "quantizer.safetensors").exists()
    bad = runner.invoke(app, ["tokens", "--params", "none", "--set", "stack=0"])
    assert bad.exit_code == 2 and "tokens.stack=0:mustbe>=1" in _squeezed(bad)
    with pytest.raises(ParamsError, match="must differ"):
        params_for(tmp_path, out=str(tmp_path / "features.zarr"))
