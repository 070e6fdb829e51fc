"""ViT-1D backbone and the ``contrastive`` recipe (Emergent musical properties, ISMIR 2025)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memory_source import MemorySource

import mirkit.objectives.contrastive as contrastive_objective
import mirkit.recipes.contrastive as contrastive_recipe
from mirkit.models.base import count_parameters, pool
from mirkit.models.vit1d import ViT1D, build_vit1d
from mirkit.params import ParamsError, resolve
from mirkit.recipes.base import Sources
from mirkit.recipes.contrastive import ContrastiveParams, ContrastiveRecipe, db_power, pick_two_segments

pytestmark = pytest.mark.usefixtures("one_thread")


def micro(**kw) -> ViT1D:
    torch.manual_seed(0)
    return build_vit1d("vit1d-micro", **{"in_bins": 16, "max_len": 20, **kw})


# --- backbone ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_cls", [1, 2])
def test_vit1d_tiny_has_about_5_4_million_parameters(n_cls):
    with torch.device("meta"):   # counts without allocating or initialising
        model = build_vit1d("vit1d-tiny", in_bins=128, max_len=126, n_cls=n_cls)
        encoder = ContrastiveRecipe(resolve(ContrastiveParams, {"preset": "vit1d-tiny"})).build_encoder()
    assert abs(count_parameters(model) - 5.4e6) / 5.4e6 < 0.02
    assert abs(count_parameters(encoder) - 5.4e6) / 5.4e6 < 0.02


@pytest.mark.parametrize("n_cls", [1, 2])
def test_class_tokens_are_learned_vector_plus_mean_of_frame_tokens(n_cls):
    model = micro(n_cls=n_cls, input_mean=-3.0, input_std=2.0)
    x = torch.randn(3, 16, 12)
    h0 = model.encode(x, layers=(0,)).hidden[0]
    frames = ((x - -3.0) / 2.0).transpose(1, 2) @ model.patch.weight.T + model.patch.bias   # (3, 12, 64)
    expected_cls = model.cls[None] + frames.mean(dim=1, keepdim=True)
    torch.testing.assert_close(h0[:, :n_cls], expected_cls)
    torch.testing.assert_close(h0[:, n_cls:], frames + model.pos[:12])
    assert not torch.allclose(h0[0, 0], h0[1, 0])  # the class token depends on the input


def test_encode_contract_shapes_attention_and_poolings():
    model = micro(n_cls=2).eval()
    x = torch.randn(2, 16, 20)
    out = model.encode(x, layers=(0, 1, 2, -1), attention=True)
    assert out.n_cls == 2 and out.grid == (1, 20) and out.frames_per_col == 1.0
    assert set(out.hidden) == {0, 1, 2, -1} and out.hidden[-1].shape == (2, 22, 64)
    assert set(out.attentions) == {1, 2, -1}
    att = out.attentions[2]
    assert att.shape == (2, 2, 22, 22)
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 2, 22))
    torch.testing.assert_close(out.attentions[-1], att)
    # the explicit attention path equals the SDPA path
    plain = model.encode(x, layers=(1, -1))
    torch.testing.assert_close(plain.hidden[-1], out.hidden[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain.hidden[1], out.hidden[1], atol=1e-5, rtol=1e-5)
    assert model.poolings == ("cls-mean", "cls", "cls2", "seq-mean", "mean")
    assert micro(n_cls=1).poolings == ("cls", "seq-mean", "mean")
    for p in model.poolings:
        assert pool(out, -1, p).shape == (2, 64)
    assert model.embed(x).shape == (2, 64)
    frames, per_col = model.embed_frames(x[..., :7])
    assert frames.shape == (2, 7, 64) and per_col == 1.0


def test_extra_bins_are_cropped_at_crop_offset():
    model = micro(n_cls=2).eval()
    x = torch.randn(2, 25, 10)
    for offset in (0, 5, 9):
        model.crop_offset = offset
        torch.testing.assert_close(model.encode(x).hidden[-1], model.encode(x[:, offset:offset + 16]).hidden[-1])
    model.crop_offset = 10
    with pytest.raises(ValueError, match="bins"):
        model.encode(x)


def test_bad_inputs_are_rejected():
    model = micro()
    with pytest.raises(ValueError, match="positions"):
        model.encode(torch.randn(1, 16, 21))
    with pytest.raises(ValueError, match="layer 3"):
        model.encode(torch.randn(1, 16, 5), layers=(3,))
    with pytest.raises(ValueError, match="bins"):
        model.encode(torch.randn(1, 12, 5))


# --- contrastive recipe ----------------------------------------------------------------------
def test_recipe_uses_the_shared_nt_xent():
    assert contrastive_recipe.nt_xent is contrastive_objective.nt_xent


def test_silence_rule_picks_distinct_non_silent_segments():
    seg = 10
    power = np.full(100, 1e-6)
    power[70:90] = 1.0                                  # only chunks inside 70..90 are loud
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = pick_two_segments(power, seg, rng)
        assert a != b
        for s in (a, b):
            assert power[s:s + seg].mean() > 0.1 * power.mean()
    # one loud chunk: it is picked, the next loudest fills in
    power = np.full(40, 1e-6)
    power[:10] = 1.0
    for _ in range(10):
        a, b = pick_two_segments(power, seg, rng)
        assert a != b and min(a, b) < 10
    # short tracks fall back to random (or zero-padded) crops
    a, b = pick_two_segments(np.ones(15), seg, rng)
    assert 0 <= a <= 5 and 0 <= b <= 5
    assert pick_two_segments(np.ones(7), seg, rng) == (0, 0)


def test_silence_threshold_is_a_power_ratio_in_db():
    seg = 10
    power = np.ones(60)
    power[:10] = 10 ** (-0.8)          # -8 dB relative to ~1: silent at -7.5
    power[10:20] = 10 ** (-0.7)        # -7 dB: not silent
    level = lambda p, s: 10 * np.log10(p[s:s + seg].mean() / p.mean())
    rng = np.random.default_rng(1)
    picked = set()
    for _ in range(200):
        picked.update(pick_two_segments(power, seg, rng, silence_db=-7.5))
    assert all(level(power, s) > -7.5 for s in picked)
    assert any(level(power, s) < -6 for s in picked)   # the -7 dB chunk is allowed


def test_sample_returns_two_views_from_different_loud_segments():
    loud = np.random.default_rng(0).normal(0, 3, size=(126 * 6, 128)).astype(np.float16)
    loud[: 126 * 4] = -100.0                            # first two thirds silent
    src = MemorySource([loud])
    recipe = ContrastiveRecipe(resolve(ContrastiveParams, {"preset": "vit1d-micro"}))
    assert recipe.feature_set == "mel16k-db" and recipe.crop_frames == 126
    rng = np.random.default_rng(3)
    for _ in range(5):
        views = recipe.sample(Sources(src), 0, rng)
        assert views["view1"].shape == views["view2"].shape == (128, 126)
        assert views["view1"].dtype == np.float32
        assert not np.array_equal(views["view1"], views["view2"])
        for v in (views["view1"], views["view2"]):   # never an all-silent chunk
            assert (v[0] > -50).mean() > 0.05
    assert db_power(np.zeros((3, 4))).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("key,value", [("temperature", 0), ("preset", "vit-huge"), ("proj_dims", [0, 4]),
                                       ("segment_frames", 2), ("silence_db", 3.0), ("tempreature", 0.1)])
def test_bad_params_are_rejected_naming_the_key(key, value):
    with pytest.raises(ParamsError, match=key):
        resolve(ContrastiveParams, {key: value}, section="pretrain")


def test_prepare_checks_bins_and_estimates_normalisation():
    rng = np.random.default_rng(0)
    src = MemorySource([rng.normal(-40, 5, size=(300, 128)).astype(np.float32) for _ in range(3)])
    recipe = ContrastiveRecipe(resolve(ContrastiveParams, {"preset": "vit1d-micro"}))
    recipe.prepare(Sources(src))
    assert abs(recipe.params.input_mean + 40) < 1 and abs(recipe.params.input_std - 5) < 0.5
    enc = recipe.build_encoder()
    assert float(enc.input_mean) == pytest.approx(recipe.params.input_mean)
    with pytest.raises(ParamsError, match="128"):
        recipe.prepare(Sources(MemorySource([np.zeros((10, 64), np.float32)])))


def _structured_tracks(n_tracks: int, n_frames: int, bins: int, seed: int) -> list[np.ndarray]:
    """Each track: its own spectral envelope plus frame noise (so two segments of a track match)."""
    rng = np.random.default_rng(seed)
    tracks = []
    for _ in range(n_tracks):
        env = rng.normal(-30, 10, size=bins)
        tracks.append((env + rng.normal(0, 4, size=(n_frames, bins))).astype(np.float32))
    return tracks


def _batch(recipe, sources, tracks, rng):
    samples = [recipe.sample(sources, t, rng) for t in tracks]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def test_short_training_lowers_the_contrastive_loss():
    torch.manual_seed(0)
    params = resolve(ContrastiveParams, {"preset": "vit1d-micro", "segment_frames": 16, "proj_dims": [64, 32]})
    recipe = ContrastiveRecipe(params)
    sources = Sources(MemorySource(_structured_tracks(16, 64, 128, seed=0)))
    recipe.prepare(sources)
    model = recipe.build_model()
    eval_batch = _batch(recipe, sources, range(16), np.random.default_rng(123))
    with torch.no_grad():
        before = model(eval_batch)["loss"].item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(25):
        batch = _batch(recipe, sources, rng.choice(16, size=8, replace=False), rng)
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = model(eval_batch)["loss"].item()
    assert after < 0.7 * before, (before, after)
