"""Myna recipe: SimpleViT shapes, positions, token dropping, NT-Xent, params, a few training steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from memory_source import MemorySource as ArraySource

import mirkit.models.vit as vit
from mirkit.models.base import count_parameters
from mirkit.models.vit import SimpleViT, keep_tokens, patchify, random_keep_indices, sincos_2d
from mirkit.objectives.contrastive import decoupled_infonce, nt_xent
from mirkit.params import ParamsError, resolve
from mirkit.recipes import get
from mirkit.recipes.base import Sources
from mirkit.recipes.myna import PRESETS, MynaParams, MynaRecipe

TINY = PRESETS["myna-tiny"].model


def tiny_recipe(**overrides) -> MynaRecipe:
    return MynaRecipe(resolve(MynaParams, {"preset": "myna-tiny", **overrides}))


# --- encoder shapes ----------------------------------------------------------------------------

@pytest.mark.parametrize("patch, grid, width, emb_dim", [
    ("square", (8, 6), 16, 64), ("vertical", (1, 48), 2, 64), ("hybrid", (8, 6), 16, 128)])
def test_shapes_for_each_patch_kind(patch, grid, width, emb_dim):
    torch.manual_seed(0)
    enc = SimpleViT(**TINY, patch=patch).eval()
    x = torch.rand(3, 128, 96)
    out = enc.encode(x, layers=(0, 1, 2, -1), attention=True)
    n = grid[0] * grid[1]
    assert out.grid == grid and out.n_cls == 0 and out.frames_per_col == width
    assert set(out.hidden) == {0, 1, 2, -1}
    assert all(h.shape == (3, n, 64) for h in out.hidden.values())
    assert set(out.attentions) == {1, 2}
    assert out.attentions[1].shape == (3, 2, n, n)
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(3, 2, n))
    assert enc.embed(x).shape == (3, emb_dim)
    frames, step = enc.embed_frames(x)
    assert frames.shape == (3, 96 // int(step), emb_dim) and step == (2 if patch != "square" else 16)
    # other crop lengths that are multiples of the patch width work (positions follow the grid)
    longer = enc.encode(torch.rand(2, 128, 160))
    assert longer.grid == (grid[0], 160 // width)
    assert longer.hidden[-1].shape == (2, grid[0] * 160 // width, 64)


def test_explicit_attention_path_matches_sdpa():
    torch.manual_seed(0)
    enc = SimpleViT(**TINY).eval()
    x = torch.rand(2, 128, 64)
    plain = enc.encode(x, layers=(1, -1))
    with_maps = enc.encode(x, layers=(1, -1), attention=True)
    for layer in (1, -1):
        torch.testing.assert_close(plain.hidden[layer], with_maps.hidden[layer], atol=1e-5, rtol=1e-5)


def test_bad_input_lengths_raise():
    enc = SimpleViT(**TINY)
    with pytest.raises(ValueError, match="patch width 16"):
        enc.encode(torch.rand(1, 128, 100))
    with pytest.raises(ValueError, match="layer 3"):
        enc.encode(torch.rand(1, 128, 96), layers=(3,))
    with pytest.raises(ValueError, match="no 'vertical'"):
        enc.encode(torch.rand(1, 128, 96), patch="vertical")


# --- patches and positions ---------------------------------------------------------------------

def test_patchify_is_row_major_freq_then_time():
    f = torch.arange(128).view(128, 1).float()
    t = torch.arange(96).view(1, 96).float()
    x = (f * 1000 + t).unsqueeze(0)                             # value encodes (bin, frame)
    patches, grid = patchify(x, (16, 16))
    assert grid == (8, 6)
    for row in range(8):
        for col in range(6):
            token = patches[0, row * 6 + col]
            assert token[0] == (16 * row) * 1000 + 16 * col     # top-left of the patch
            assert token[1] == (16 * row) * 1000 + 16 * col + 1  # then along time within a patch row
            assert token[16] == (16 * row + 1) * 1000 + 16 * col


def test_sincos_values_for_known_position():
    pe = sincos_2d(rows=3, cols=5, dim=8)                       # omega = [1, 1/10000]
    x, y = 3, 2
    expected = [math.sin(x), math.sin(x / 1e4), math.cos(x), math.cos(x / 1e4),
                math.sin(y), math.sin(y / 1e4), math.cos(y), math.cos(y / 1e4)]
    torch.testing.assert_close(pe[y * 5 + x], torch.tensor(expected))
    assert pe.shape == (15, 8)


def test_positions_are_added_to_the_patch_embedding():
    torch.manual_seed(0)
    enc = SimpleViT(**TINY)
    x = torch.full((1, 128, 96), 0.5)                             # every patch identical
    layer0 = enc.encode(x, layers=(0,)).hidden[0][0]
    content = layer0 - sincos_2d(8, 6, 64)
    torch.testing.assert_close(content, content[:1].expand_as(content))


# --- masking -----------------------------------------------------------------------------------

def test_keep_indices_exact_count_and_independent_per_sample():
    torch.manual_seed(0)
    keep = random_keep_indices(batch=16, n_tokens=48, mask_ratio=0.9)
    assert keep.shape == (16, 48 - int(0.9 * 48)) == (16, 5)
    for row in keep:
        assert len(set(row.tolist())) == 5 and row.min() >= 0 and row.max() < 48
    assert len({tuple(sorted(r.tolist())) for r in keep}) == 16
    assert random_keep_indices(4, 48, 0.0).sort(dim=1).values.tolist() == [list(range(48))] * 4


def test_keep_tokens_gathers_the_chosen_positions():
    tokens = torch.arange(6).float().view(1, 6, 1).expand(2, 6, 3)
    keep = torch.tensor([[4, 1], [0, 5]])
    assert keep_tokens(tokens, keep)[..., 0].tolist() == [[4.0, 1.0], [0.0, 5.0]]


def test_masked_pass_runs_only_the_kept_tokens():
    torch.manual_seed(0)
    enc = SimpleViT(**TINY)
    x = torch.rand(4, 128, 96)
    torch.manual_seed(7)
    masked = enc.pooled(x, mask_ratio=0.9)
    torch.manual_seed(7)
    keep = random_keep_indices(4, 48, 0.9)
    h = keep_tokens(enc.tokens(x, "square")[0], keep)
    for block in enc.blocks:
        h, _ = block(h)
    torch.testing.assert_close(masked, enc.norm(h).mean(dim=1))
    assert not torch.allclose(masked, enc.embed(x), atol=1e-4)


def test_views_get_independent_masks(monkeypatch):
    calls = []

    def recording(batch, n_tokens, mask_ratio, device=None):
        keep = random_keep_indices(batch, n_tokens, mask_ratio, device)
        calls.append(keep)
        return keep

    monkeypatch.setattr(vit, "random_keep_indices", recording)
    torch.manual_seed(0)
    model = tiny_recipe(loss="ntxent").build_model()
    view = torch.rand(8, 128, 96)
    model({"view1": view, "view2": view.clone()})
    assert len(calls) == 2 and all(c.shape == (8, 5) for c in calls)
    sets = [[frozenset(r.tolist()) for r in c] for c in calls]
    assert sum(a != b for a, b in zip(*sets, strict=True)) == 8            # same sample, different subset per view


def test_nothing_is_dropped_at_embedding_even_in_train_mode():
    torch.manual_seed(0)
    enc = SimpleViT(**TINY).train()
    x = torch.rand(2, 128, 96)
    torch.manual_seed(1)
    a = enc.embed(x)
    torch.manual_seed(2)
    b = enc.embed(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, enc.encode(x).hidden[-1].mean(dim=1))
    assert enc.encode(x).hidden[-1].shape[1] == 48


# --- loss --------------------------------------------------------------------------------------

def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR eq. 1 written out: every anchor vs the 2N-1 others, positive in the denominator."""
    views = [torch.nn.functional.normalize(z, dim=-1) for z in (z1, z2)]
    n = len(z1)
    total = 0.0
    for v in range(2):
        for i in range(n):
            anchor = views[v][i]
            positive = math.exp(float(anchor @ views[1 - v][i]) / tau)
            denom = 0.0
            for u in range(2):
                for j in range(n):
                    if (u, j) != (v, i):
                        denom += math.exp(float(anchor @ views[u][j]) / tau)
            total += -math.log(positive / denom)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_matches_reference(tau):
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(reference_nt_xent(z1, z2, tau), rel=1e-5)


def test_model_loss_is_nt_xent_of_projected_views_at_its_temperature():
    torch.manual_seed(0)
    model = tiny_recipe(mask_ratio=0.0, temperature=0.3, loss="ntxent").build_model()
    tracks = structured_tracks(4, np.random.default_rng(0))     # distinct inputs -> spread embeddings
    v1 = torch.from_numpy(np.stack([t[:96].T for t in tracks]))
    v2 = torch.from_numpy(np.stack([t[-96:].T for t in tracks]))
    loss = float(model({"view1": v1, "view2": v2})["loss"].detach())
    with torch.no_grad():
        z1, z2 = model.head(model.encoder.embed(v1)), model.head(model.encoder.embed(v2))
    assert loss == pytest.approx(reference_nt_xent(z1, z2, 0.3), rel=1e-4)
    assert loss != pytest.approx(reference_nt_xent(z1, z2, 0.1), rel=1e-2)


# --- hybrid ------------------------------------------------------------------------------------

def test_hybrid_embedding_concatenates_both_passes():
    torch.manual_seed(0)
    enc = SimpleViT(**TINY, patch="hybrid").eval()
    x = torch.rand(3, 128, 96)
    emb = enc.embed(x)
    square = enc.encode(x, patch="square").hidden[-1].mean(1)
    vertical = enc.encode(x, patch="vertical").hidden[-1].mean(1)
    assert emb.shape == (3, 2 * enc.dim)
    torch.testing.assert_close(emb, torch.cat([square, vertical], dim=-1))
    assert not torch.allclose(square, vertical)
    frames, step = enc.embed_frames(x)
    assert frames.shape == (3, 48, 128) and step == 2
    sq_cols = enc.encode(x, patch="square").time_tokens(-1)   # (3, 6, 64), 16 frames each
    torch.testing.assert_close(frames[:, :, :64], sq_cols.repeat_interleave(8, dim=1))
    torch.testing.assert_close(frames[:, :, 64:], enc.encode(x, patch="vertical").time_tokens(-1))


def test_hybrid_loss_is_mean_of_the_two_passes():
    torch.manual_seed(0)
    model = tiny_recipe(patch="hybrid", n_items=4).build_model()
    assert len(model.encoder.patch_embeds) == 2 and len(model.encoder.blocks) == TINY["depth"]
    out = model({"view1": torch.rand(4, 128, 96), "view2": torch.rand(4, 128, 96), "index": torch.arange(4)})
    total = float(out["loss"].detach())
    assert total == pytest.approx((float(out["loss_square"]) + float(out["loss_vertical"])) / 2)


# --- recipe ------------------------------------------------------------------------------------

def test_recipe_is_registered_and_names_its_features():
    recipe = tiny_recipe()
    assert get("myna") is MynaRecipe
    assert recipe.feature_set == "mel16k" and recipe.crop_frames == 96


@pytest.mark.parametrize("patch, frames", [("square", 96), ("hybrid", 96), ("vertical", 98)])
def test_default_crop_is_mynas_50000_samples(patch, frames):
    """example.py: N_SAMPLES 50000 -> nnAudio's centred frames 1 + 50000 // 512 = 98, floored to the
    time patch width (16 for square and hybrid, 2 for vertical)."""
    assert tiny_recipe(patch=patch).crop_frames == frames
    assert tiny_recipe(patch=patch, crop_frames=64).crop_frames == 64


@pytest.mark.parametrize("samples, patch, frames", [(50_000, "square", 96), (100_000, "square", 192),
                                                    (100_000, "hybrid", 192), (100_000, "vertical", 196)])
def test_crop_samples_follow_mynas_get_n_frames(samples, patch, frames):
    """Oracle: get_n_frames counts the frames of nnAudio's centred STFT (n_fft 2048, hop 512) of that many
    samples and floors them to the time patch width; train.py's default 100000 gives 192 / 196."""
    n = torch.stft(torch.zeros(samples), n_fft=2048, hop_length=512, center=True, window=torch.hann_window(2048),
                   return_complex=True).shape[-1]
    width = 2 if patch == "vertical" else 16
    assert tiny_recipe(patch=patch, crop_samples=samples).crop_frames == n // width * width == frames


def test_projection_head_is_mynas_linear_head_or_relu_mlp():
    """utils.add_proj_head: Linear per width, ReLU between layers and none after the last."""
    head = tiny_recipe().build_model().head
    assert [type(m) for m in head] == [torch.nn.Linear] and head[0].out_features == 50
    head = tiny_recipe(proj_dims=[32, 16]).build_model().head
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[2].out_features) == (TINY["dim"], 32, 16)


def test_sample_two_independent_crops_of_one_track():
    frames = np.arange(300, dtype=np.float32)[:, None] * np.ones((1, 128), np.float32)  # value = frame index
    short = np.ones((40, 128), np.float32)
    sources = Sources(features=ArraySource([frames, short]))
    recipe = tiny_recipe()
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(20):
        ex = recipe.sample(sources, 0, rng)
        assert set(ex) == {"view1", "view2"}
        for view in ex.values():
            assert view.shape == (128, 96) and view.dtype == np.float32
            start = int(view[0, 0])
            np.testing.assert_array_equal(view[5], np.arange(start, start + 96))   # contiguous crop
            starts.append(start)
    assert len(set(starts)) > 10 and max(starts) <= 300 - 96
    ex = recipe.sample(sources, 1, rng)                           # short track: zero-padded
    assert ex["view1"][:, :40].min() == 1 and ex["view1"][:, 40:].max() == 0


def test_prepare_rejects_other_bin_counts():
    with pytest.raises(ValueError, match="128 mel bins"):
        tiny_recipe().prepare(Sources(features=ArraySource([np.zeros((100, 96), np.float32)])))


@pytest.mark.parametrize("raw, key", [
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"crop_frames": 100}, "crop_frames"),
    ({"patch": "hybrid", "crop_frames": 98}, "crop_frames"),
    ({"preset": "myna-huge"}, "preset"),
    ({"temperature": 0.0}, "temperature"),
    ({"patch": "diagonal"}, "patch"),
])
def test_bad_params_name_the_key(raw, key):
    with pytest.raises(ParamsError, match=rf"^{key}="):
        resolve(MynaParams, raw)


def test_vertical_accepts_even_crops():
    assert resolve(MynaParams, {"patch": "vertical", "crop_frames": 98}).crop_frames == 98


@pytest.mark.parametrize("name", ["myna-22m", "myna-85m"])
def test_paper_preset_parameter_counts(name):
    preset = PRESETS[name]
    with torch.device("meta"):
        enc = SimpleViT(**preset.model, patch="square")
    millions = count_parameters(enc) / 1e6
    assert millions == pytest.approx(preset.paper_params, rel=0.02)


# --- training ----------------------------------------------------------------------------------

def structured_tracks(n_tracks: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each track: its own fixed set of active mel bands (a 'timbre') with frame noise."""
    tracks = []
    for _ in range(n_tracks):
        profile = np.zeros(128, np.float32)
        profile[rng.choice(128, size=12, replace=False)] = 5.0
        frames = profile[None, :] * rng.uniform(0.5, 1.5, size=(160, 1)) + rng.random((160, 128))
        tracks.append(frames.astype(np.float32))
    return tracks


def test_a_few_cpu_steps_lower_the_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sources = Sources(features=ArraySource(structured_tracks(8, rng)))
    recipe = tiny_recipe(crop_frames=64, mask_ratio=0.5)
    recipe.prepare(sources)
    model = recipe.build_model()                                   # SogCLR, one moving average per track
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def batch_of_pairs() -> dict[str, torch.Tensor]:
        examples = [recipe.sample(sources, t, rng) for t in range(len(sources.features))]
        batch = {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in ("view1", "view2")}
        return {**batch, "index": torch.arange(len(examples))}

    held_out = batch_of_pairs()

    def held_out_loss() -> float:
        """Decoupled InfoNCE of the held-out pairs: a stateless measure of what SogCLR optimises."""
        torch.manual_seed(123)                                     # same masks before and after
        with torch.no_grad():
            z1, z2 = (model.head(model.encoder.pooled(held_out[v], "square", 0.5)) for v in ("view1", "view2"))
            return float(decoupled_infonce(z1, z2, 0.1))

    before = held_out_loss()
    for _ in range(12):
        loss = model(batch_of_pairs())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.5 * before
