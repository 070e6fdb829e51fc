"""MuSE-LQ: SummaryMixing, Branchformer/Conformer blocks, masking, loss, alignment, training, sizes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from memory_source import MemorySource as ArraySource
from torch import nn

from mirkit.models.branchformer import BranchformerBlock
from mirkit.models.conformer import ConformerBlock
from mirkit.models.muse import MuseEncoder, make_block
from mirkit.models.rotary import RotarySelfAttention
from mirkit.models.summary_mixing import GroupedLinear, SummaryMixing
from mirkit.objectives.masked_prediction import block_mask, mask_frames, masked_prediction_loss, stack_frames
from mirkit.params import ParamsError, resolve
from mirkit.recipes import get
from mirkit.recipes.base import Sources
from mirkit.recipes.muse_lq import MuseLQRecipe

torch.set_num_threads(1)

TINY = dict(dim=32, depth=2, heads=4, conv_dim=8, units=64, kernel_size=5, dropout=0.0,
            sm_local_hidden=[16], sm_local_out=16, sm_summary_hidden=[16], sm_summary_out=16)
SM_SIZES = dict(sm_local_hidden=[16], sm_local_out=16, sm_summary_hidden=[16], sm_summary_out=16, sm_groups=1)


# ---------------------------------------------------------------- in-memory sources
N_CODES = 8


def tokens_of(mel: np.ndarray) -> np.ndarray:
    """Deterministic token per 4-frame step: the loudest of 8 mel bands (16 bins each)."""
    steps = mel.shape[0] // 4
    energy = mel[:steps * 4].reshape(steps, 4, 8, 16).mean(axis=(1, 3))
    return energy.argmax(axis=1).astype(np.int32)[:, None]


def synthetic_sources(n_tracks: int = 8, n_frames: int = 400, segment: int = 120, seed: int = 0) -> Sources:
    """Each track: one loud band (a new one every ``segment`` frames) over -60 dB noise, in dB."""
    rng = np.random.default_rng(seed)
    mels = []
    for _ in range(n_tracks):
        mel = -60.0 + 3.0 * rng.standard_normal((n_frames, 128))
        for start in range(0, n_frames, segment):
            band = rng.integers(N_CODES)
            mel[start:start + segment, band * 16:(band + 1) * 16] += 40.0
        mels.append(mel.astype(np.float32))
    allv = np.concatenate(mels)
    tokens = [tokens_of(m) for m in mels]
    attrs = {"mean": float(allv.mean()), "std": float(allv.std()), "codebook_size": 16,
             "num_codebooks": 1, "stack": 4}
    return Sources(ArraySource(mels, 100.0, {"feature_set": "mel24k"}), ArraySource(tokens, 25.0, attrs))


def recipe(**params: Any) -> MuseLQRecipe:
    return MuseLQRecipe(resolve(MuseLQRecipe.Params, params))


# ---------------------------------------------------------------- SummaryMixing
def test_summary_mixing_equals_its_equation() -> None:
    torch.manual_seed(0)
    sm = SummaryMixing(6, local_hidden=[5], local_out=4, summary_hidden=[7], summary_out=3).eval()
    x = torch.randn(2, 9, 6)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    y, weights = sm(x, padding)
    assert weights is None

    def mlp(seq: nn.Sequential, v: torch.Tensor) -> torch.Tensor:
        for layer in seq:
            if isinstance(layer, nn.Linear):
                v = layer.weight @ v + layer.bias
            else:
                v = F.gelu(v)
        return v

    combiner = sm.combine[0]
    for b in range(2):
        valid = [t for t in range(9) if not padding[b, t]]
        s_bar = sum(mlp(sm.summary, x[b, t]) for t in valid) / len(valid)
        for t in range(9):
            if t in valid:
                expected = F.gelu(combiner.weight @ torch.cat([mlp(sm.local, x[b, t]), s_bar]) + combiner.bias)
            else:
                expected = torch.zeros(3)                       # the combiner outputs summary_out
            torch.testing.assert_close(y[b, t], expected, atol=1e-5, rtol=1e-5)


def test_summary_mixing_ignores_padded_frames() -> None:
    torch.manual_seed(0)
    sm = SummaryMixing(8, [8], 8, [8], 8)
    x = torch.randn(2, 12, 8)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[0, 7:] = True
    x2 = x.clone()
    x2[0, 7:] = 100 * torch.randn(5, 8)
    y1, _ = sm(x, padding)
    y2, _ = sm(x2, padding)
    torch.testing.assert_close(y1, y2)
    # and padding matters: without the mask the padded content changes the valid frames
    assert not torch.allclose(sm(x)[0][0, :7], sm(x2)[0][0, :7])


def test_grouped_linear_is_block_diagonal() -> None:
    torch.manual_seed(0)
    layer = GroupedLinear(6, 4, groups=2)
    dense = torch.zeros(4, 6)
    dense[:2, :3] = layer.weight[0].t()
    dense[2:, 3:] = layer.weight[1].t()
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), x @ dense.t() + layer.bias)


# ---------------------------------------------------------------- attention
def test_rotary_attention_weights_path_matches_fused_path_and_masks_keys() -> None:
    torch.manual_seed(0)
    att = RotarySelfAttention(16, heads=4).eval()
    x = torch.randn(2, 10, 16)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 6:] = True
    with torch.no_grad():
        fused, none = att(x, padding)
        explicit, weights = att(x, padding, need_weights=True)
    assert none is None and weights.shape == (2, 4, 10, 10)
    torch.testing.assert_close(fused[:, :6], explicit[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10))
    assert float(weights[1, :, :, 6:].abs().max()) == 0.0


def test_rotary_attention_is_relative_in_position() -> None:
    """Rotary q/k make scores depend on offsets only: shifting content keeps its own attention."""
    torch.manual_seed(0)
    att = RotarySelfAttention(8, heads=2).eval()
    x = torch.randn(1, 6, 8)
    padded = torch.cat([torch.randn(1, 3, 8), x], dim=1)   # same content three steps later
    _, w1 = att(x, need_weights=True)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[:, :3] = True                                     # hide the prefix as keys
    _, w2 = att(padded, mask, need_weights=True)
    torch.testing.assert_close(w1[0], w2[0, :, 3:, 3:], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- blocks
def _block(kind: str, mixer: str) -> nn.Module:
    block = make_block(kind, mixer, 16, 4, 32, 5, 0.0, 10000.0, [16], 16, [12], 8, 1)
    assert isinstance(block, BranchformerBlock if kind == "branchformer" else ConformerBlock)
    return block


@pytest.mark.parametrize("kind", ["branchformer", "conformer"])
@pytest.mark.parametrize("mixer", ["mhsa", "summary"])
def test_blocks_keep_shape_and_honour_padding(kind: str, mixer: str) -> None:
    torch.manual_seed(0)
    block = _block(kind, mixer)
    x = torch.randn(2, 14, 16)
    padding = torch.zeros(2, 14, dtype=torch.bool)
    padding[0, 9:] = True
    x2 = x.clone()
    x2[0, 9:] = 50 * torch.randn(5, 16)
    block.train()                       # BatchNorm in training mode must skip padded frames too
    y1, _ = block(x, padding)
    y2, _ = block(x2, padding)
    assert y1.shape == x.shape
    torch.testing.assert_close(y1[0, :9], y2[0, :9])
    torch.testing.assert_close(y1[1], y2[1])
    block.eval()                        # padded run == run on the valid frames alone
    full, _ = block(x2, padding)
    alone, _ = block(x[:1, :9])
    torch.testing.assert_close(full[0, :9], alone[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- encoder
@pytest.mark.parametrize("n_frames", [80, 83, 120])
def test_encoder_output_length_and_contract(n_frames: int) -> None:
    torch.manual_seed(0)
    enc = MuseEncoder(block="conformer", attention="mhsa", **TINY).eval()
    out = enc.encode(torch.randn(2, 128, n_frames), layers=(0, 1, 2, -1), attention=True)
    steps = n_frames // 4
    assert set(out.hidden) == {0, 1, 2, -1}
    assert all(h.shape == (2, steps, 32) for h in out.hidden.values())
    assert out.n_cls == 0 and out.grid == (1, steps) and out.frames_per_col == 4
    assert set(out.attentions) == {1, 2, -1} and out.attentions[1].shape == (2, 4, steps, steps)
    assert enc.embed(torch.randn(2, 128, n_frames)).shape == (2, 32)
    with pytest.raises(ValueError, match="layer 3"):
        enc.encode(torch.randn(1, 128, 40), layers=(3,))


def test_summary_encoder_has_no_attention_maps() -> None:
    enc = MuseEncoder(block="branchformer", attention="summary", **TINY).eval()
    out = enc.encode(torch.randn(1, 128, 40), layers=(1, -1), attention=True)
    assert out.attentions == {} and out.hidden[-1].shape == (1, 10, 32)


def test_encoder_step_t_is_driven_by_frames_4t_to_4t_plus_4() -> None:
    """Token t covers frames [4t, 4t+4): perturbing them moves encoder step t most, and only steps
    within the front end's receptive field (step k sees frames 4k-9 .. 4k+9)."""
    torch.manual_seed(0)
    enc = MuseEncoder(block="branchformer", attention="summary", **TINY).eval()
    x = torch.randn(1, 128, 80)
    with torch.no_grad():
        base = enc.encode(x, layers=(0,)).hidden[0]
        for t in (3, 10, 16):
            x2 = x.clone()
            x2[..., 4 * t:4 * t + 4] += 5.0
            change = (enc.encode(x2, layers=(0,)).hidden[0] - base).abs().sum(-1)[0]
            assert int(change.argmax()) == t
            far = [s for s in range(20) if not t - 2 <= s <= t + 3]
            assert float(change[far].max()) == 0.0


def test_stacked_mel_targets_align_with_tokens() -> None:
    x = torch.arange(2 * 3 * 12, dtype=torch.float32).reshape(2, 3, 12)     # (batch, bins, frames)
    stacked = stack_frames(x, 4)
    assert stacked.shape == (2, 3, 12)
    for t in range(3):
        expected = x[:, :, 4 * t:4 * t + 4].transpose(1, 2).reshape(2, 12)  # frame-major
        torch.testing.assert_close(stacked[:, t], expected)


def test_encoder_holds_its_normalisation() -> None:
    enc = MuseEncoder(block="branchformer", attention="summary", mean=-40.0, std=20.0, **TINY)
    assert {"mean", "std"} <= set(enc.state_dict())
    torch.testing.assert_close(enc.normalise(torch.full((1, 128, 4), -20.0)), torch.ones(1, 128, 4))


# ---------------------------------------------------------------- masking and loss
def test_masking_rate_and_block_structure() -> None:
    torch.manual_seed(0)
    valid = torch.ones(64, 100, dtype=torch.bool)
    rates = []
    for _ in range(50):
        mask = block_mask(valid, 10, 0.2)
        blocks = mask.view(64, 10, 10)
        assert bool((blocks.all(-1) | ~blocks.any(-1)).all())               # whole blocks only
        rates.append(mask.float().mean().item())
    assert abs(np.mean(rates) - 0.2) < 0.01


def test_mask_never_empty_and_never_on_padding() -> None:
    torch.manual_seed(0)
    valid = torch.ones(3, 30, dtype=torch.bool)
    valid[:, 25:] = False
    for _ in range(20):
        mask = block_mask(valid, 10, 0.0)
        assert int(mask.sum()) in (5, 10) and not bool(mask[:, 25:].any())
    assert not bool(block_mask(valid, 10, 1.0)[:, 25:].any())


def test_mask_frames_replaces_only_masked_frames() -> None:
    torch.manual_seed(0)
    x = torch.full((1, 4, 10), 7.0)
    mask = torch.tensor([[False, True]])
    out = mask_frames(x, mask, 4, 0.1)
    assert bool((out[..., :4] == 7.0).all()) and bool((out[..., 8:] == 7.0).all())
    assert float(out[..., 4:8].abs().max()) < 1.0


def test_only_masked_positions_contribute_to_loss() -> None:
    torch.manual_seed(0)
    b, t, c, k = 2, 6, 2, 5
    logits, tokens = torch.randn(b, t, c, k), torch.randint(0, k, (b, t, c))
    pred, target = torch.randn(b, t, 8), torch.randn(b, t, 8)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[0, 1:3] = True
    mask[1, 5] = True
    ref = masked_prediction_loss(logits, tokens, pred, target, mask, 1.0, 0.5)
    logits2, tokens2, pred2, target2 = logits.clone(), tokens.clone(), pred.clone(), target.clone()
    logits2[~mask] += 10 * torch.randn_like(logits2[~mask])
    tokens2[~mask] = (tokens2[~mask] + 1) % k
    pred2[~mask] += 3.0
    target2[~mask] -= 3.0
    out = masked_prediction_loss(logits2, tokens2, pred2, target2, mask, 1.0, 0.5)
    for key in ("loss", "loss_ce", "loss_mse", "acc"):
        torch.testing.assert_close(out[key], ref[key])
    torch.testing.assert_close(ref["loss"], ref["loss_ce"] + 0.5 * ref["loss_mse"])
    pred2[mask] += 1.0
    assert not torch.allclose(masked_prediction_loss(logits2, tokens2, pred2, target2, mask)["loss_mse"],
                              ref["loss_mse"])


# ---------------------------------------------------------------- recipe
def test_recipe_registered_and_params_validated() -> None:
    assert get("muse-lq") is MuseLQRecipe and MuseLQRecipe.needs_tokens
    with pytest.raises(ParamsError, match="crop_frames"):
        resolve(MuseLQRecipe.Params, {"crop_frames": 100})
    with pytest.raises(ParamsError, match="attention"):
        resolve(MuseLQRecipe.Params, {"attention": "linear"})


def test_prepare_copies_token_stats_and_sample_aligns() -> None:
    sources = synthetic_sources(n_tracks=2, n_frames=300)
    r = recipe(preset="brn-sum-tiny", crop_frames=200)
    r.prepare(sources)
    p = r.params_dict()
    attrs = sources.tokens.attrs
    assert (p["mean"], p["std"], p["codebook_size"], p["num_codebooks"], p["stack"]) == (
        attrs["mean"], attrs["std"], 16, 1, 4)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(10):
        ex = r.sample(sources, 0, rng)
        assert ex["mel"].shape == (128, 200) and ex["tokens"].shape == (50, 1) and ex["valid"].all()
        np.testing.assert_array_equal(ex["tokens"], tokens_of(ex["mel"].T))     # same time span
        starts.add(int(np.flatnonzero((sources.features.arrays[0] == ex["mel"].T[0]).all(1))[0]))
    assert len(starts) > 1 and all(s % 4 == 0 for s in starts)
    short = synthetic_sources(n_tracks=1, n_frames=120)
    ex = r.sample(short, 0, rng)
    assert ex["valid"].sum() == 30 and ex["mel"].shape == (128, 200)
    model = r.build_model()
    assert float(model.encoder.mean) == attrs["mean"] and model.token_heads[0].out_features == 16


def test_short_training_lowers_both_losses() -> None:
    torch.manual_seed(0)
    sources = synthetic_sources(segment=400)     # one band per track: masked steps are inferable from context
    r = recipe(preset="brn-sum-tiny", crop_frames=160)
    r.prepare(sources)
    model = r.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(80):                          # SummaryMixing merge ends in GELU (reference layout)
        examples = [r.sample(sources, int(rng.integers(len(sources.features))), rng) for _ in range(8)]
        batch = {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append((out["loss_ce"].item(), out["loss_mse"].item()))
    first, last = np.mean(history[:5], axis=0), np.mean(history[-10:], axis=0)
    assert history[0][0] > 0.8 * math.log(16)          # starts near chance over the 16-way vocabulary
    assert last[0] < 0.5 * first[0] and last[1] < 0.5 * first[1]


PAPER_ROWS = {"cnf-att-95m": 95, "cnf-att-330m": 330, "cnf-sum-302m": 302,
              "brn-att-60m": 60, "brn-att-187m": 187, "brn-sum-164m": 164}


@pytest.mark.parametrize("preset", sorted(PAPER_ROWS))
def test_paper_preset_parameter_counts(preset: str) -> None:
    r = recipe(preset=preset)
    assert MuseLQRecipe.presets[preset].paper_params == PAPER_ROWS[preset]
    with torch.device("meta"):
        model = r.build_model()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 / PAPER_ROWS[preset] - 1) < 0.05, f"{preset}: {n / 1e6:.1f}M"


def test_checkpoint_round_trip_is_self_contained(tmp_path) -> None:
    """prepare() stats reach config.json; the reloaded encoder takes raw dB mel and matches."""
    from mirkit.data.features import PRESETS as FEATURES
    from mirkit.train import checkpoint

    sources = synthetic_sources(n_tracks=2, n_frames=200)
    r = recipe(preset="cnf-att-tiny", crop_frames=80)
    r.prepare(sources)
    torch.manual_seed(0)
    model = r.build_model()
    checkpoint.save(tmp_path, model, checkpoint.make_config(r, FEATURES[r.feature_set].to_dict(), 0, {}))
    encoder, config, _ = checkpoint.load_encoder(tmp_path)
    assert config.args["mean"] == sources.tokens.attrs["mean"]
    assert config.provenance["recipe_params"]["codebook_size"] == 16
    x = torch.from_numpy(np.stack([sources.features.arrays[0][:80].T]))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.embed(x), model.encoder.embed(x))


# ---------------------------------------------------------------- SummaryMixing layouts (SamsungLabs)
def _linear_params(i: int, o: int, groups: int = 1) -> int:
    return i * o // groups + o


def test_summary_mixing_layouts_have_the_reference_sizes() -> None:
    """Counted from the layout, not from the modules: combiner to summary_out; Conformer's summary_out = d;
    Branchformer merge (summary_out + d) -> summary_hidden -> d."""
    d, U, k, g = 32, 64, 5, 4
    sm = dict(sm_local_hidden=[8], sm_local_out=12, sm_summary_hidden=[20], sm_summary_out=16, sm_groups=g)
    args = (d, 4, U, k, 0.0, 10000.0) + tuple(sm.values())
    f = _linear_params(d, 8, g) + _linear_params(8, 12, g)
    norms = 2 * d                                                        # one LayerNorm(d)

    brn = make_block("branchformer", "summary", *args)
    s = _linear_params(d, 20, g) + _linear_params(20, 16, g)
    c = _linear_params(12 + 16, 16)
    merge = _linear_params(16 + d, 20) + _linear_params(20, d)
    cgmlp = _linear_params(d, U) + U + (U // 2) * k + U // 2 + _linear_params(U // 2, d)   # up, LN(U/2), dw conv, down
    assert count_params(brn) == f + s + c + merge + cgmlp + 2 * norms
    assert brn.mixer.out_dim == 16 and [type(m) for m in brn.merge] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU]

    cnf = make_block("conformer", "summary", *args)
    s_d = _linear_params(d, 20, g) + _linear_params(20, d, g)             # summary_out = d
    c_d = _linear_params(12 + d, d)
    assert cnf.mixer.out_dim == d
    assert count_params(cnf.mixer) == f + s_d + c_d

    att = make_block("branchformer", "mhsa", *args)
    assert isinstance(att.merge, nn.Linear) and (att.merge.in_features, att.merge.out_features) == (2 * d, d)


def test_branchformer_summary_merge_equals_its_equation() -> None:
    torch.manual_seed(0)
    block = make_block("branchformer", "summary", 16, 4, 32, 5, 0.0, 10000.0, [8], 8, [12], 10, 1).eval()
    x = torch.randn(2, 7, 16)
    y, _ = block(x)
    with torch.no_grad():
        global_branch, _ = block.mixer(block.mixer_norm(x))
        local_branch = block.mlp(block.mlp_norm(x))
        l1, l2 = block.merge[0], block.merge[2]
        h = F.gelu(torch.cat([global_branch, local_branch], -1) @ l1.weight.T + l1.bias)
        expected = x + F.gelu(h @ l2.weight.T + l2.bias)
    assert global_branch.shape[-1] == 10
    torch.testing.assert_close(y, expected)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_rows_encoder_and_full_counts() -> None:
    """Table 2 rows (millions): whole model within 5 %; SummaryMixing's saving per block type."""
    full, encoder = {}, {}
    for preset in PAPER_ROWS:
        with torch.device("meta"):
            model = recipe(preset=preset).build_model()
        full[preset], encoder[preset] = count_params(model) / 1e6, count_params(model.encoder) / 1e6
    assert full["cnf-sum-302m"] == pytest.approx(296.0, abs=0.1) and full["brn-sum-164m"] == pytest.approx(170.5, abs=0.1)
    assert encoder["cnf-sum-302m"] == pytest.approx(287.1, abs=0.1) and encoder["brn-sum-164m"] == pytest.approx(161.5, abs=0.1)
    assert 1 - full["cnf-sum-302m"] / full["cnf-att-330m"] == pytest.approx(0.090, abs=0.002)
    assert 1 - full["brn-sum-164m"] / full["brn-att-187m"] == pytest.approx(0.089, abs=0.002)


# ---------------------------------------------------------------- CSGU fidelity (issue 18.7)
def _reflect_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray, length: int) -> np.ndarray:
    """Depthwise 'same' convolution of x[:, :length] (channels, time) with reflection at both ends, from
    the formula y[c, t] = bias[c] + sum_j w[c, j] x[c, r(t + j - p)], r(i) = |i| below 0, 2(L-1) - i past L-1."""
    p = w.shape[1] // 2
    def r(i: int) -> int:
        return -i if i < 0 else 2 * (length - 1) - i if i >= length else i
    return np.stack([[bias[c] + sum(w[c, j] * x[c, r(t + j - p)] for j in range(w.shape[1]))
                      for t in range(length)] for c in range(x.shape[0])])


def test_csgu_pads_by_reflection_like_speechbrain_conv1d() -> None:
    """SpeechBrain's Conv1d (padding='same', padding_mode='reflect'), used by its CSGU: the first and last
    kernel//2 outputs see reflected frames, not zeros; a padded batch equals each sequence alone."""
    from mirkit.models.branchformer import ConvolutionalGatingMLP
    torch.manual_seed(0)
    mlp = ConvolutionalGatingMLP(dim=8, units=8, kernel_size=7)
    with torch.no_grad():
        mlp.gate_conv.weight.normal_()          # visible weights (the init is ~1e-6)
    conv, w = mlp.gate_conv, mlp.gate_conv.weight[:, 0].detach().numpy()
    bias = conv.bias.detach().numpy()
    x = torch.randn(2, 4, 12)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[1, 9:] = True
    from mirkit.models.branchformer import reflect_pad
    for mask in (None, padding):
        y = conv(reflect_pad(x, 3, mask)).detach().numpy()
        for i, length in enumerate((12, 12 if mask is None else 9)):
            np.testing.assert_allclose(y[i, :, :length], _reflect_reference(x[i].numpy(), w, bias, length),
                                       rtol=1e-5, atol=1e-5)
    zeros = conv(torch.nn.functional.pad(x, (3, 3))).detach().numpy()
    assert np.abs(zeros[0, :, :3] - y[0, :, :3]).max() > 0.1    # the test tells reflection from zeros


def test_csgu_init_starts_the_gate_near_identity() -> None:
    """SpeechBrain's CSGU: conv_init='normal' (weights ~ N(0, 1e-6)) and bias 1, so the gate b ~ 1."""
    from mirkit.models.branchformer import ConvolutionalGatingMLP
    torch.manual_seed(0)
    mlp = ConvolutionalGatingMLP(dim=32, units=256, kernel_size=31)
    w = mlp.gate_conv.weight.detach()
    assert 0.8e-6 < float(w.std()) < 1.2e-6 and abs(float(w.mean())) < 1e-7
    assert torch.equal(mlp.gate_conv.bias.detach(), torch.ones(128))
    with torch.no_grad():
        b = mlp.gate_conv(torch.nn.functional.pad(torch.randn(1, 128, 50), (15, 15), mode="reflect"))
    assert float((b - 1).abs().max()) < 1e-3


# ---------------------------------------------------------------- mel24k precision (issue 18.7)
def test_tokens_come_from_the_float32_mel_as_in_musicfm(tmp_path) -> None:
    """MusicFM quantises its float32 mel; mel24k (the set that feeds the tokens) is stored as float32, so the
    stored frames are the front end's output and the tokens equal those of the float32 mel. float16 storage
    (the former one) rounded most frames and moved 0.16 % of the demo corpus's codes."""
    import soundfile as sf
    from audio_fixtures import tone

    from mirkit.data.audio import load_audio
    from mirkit.data.features import PRESETS, FrontEnd
    from mirkit.data.mels import MelsParams
    from mirkit.data.mels import run as run_mels
    from mirkit.data.quantizer import RandomProjectionQuantizer
    from mirkit.data.store import open_set
    from mirkit.data.tokens import TokensParams, tokenize
    from mirkit.data.tokens import run as run_tokens
    spec = PRESETS["mel24k"]
    assert spec.dtype == "float32"
    (tmp_path / "audio").mkdir()
    rng = np.random.default_rng(1)   # 20 s of tones over enveloped noise: many distinct codes
    t = np.arange(20 * 24000) / 24000
    wave = tone(20.0, 24000, 330.0, seed=1) + 0.2 * rng.standard_normal(t.size) * (1 + np.sin(2 * np.pi * 0.7 * t))
    sf.write(tmp_path / "audio" / "a.wav", (0.5 * wave / np.abs(wave).max()).astype(np.float32), 24000, subtype="FLOAT")
    run_mels(MelsParams(input=str(tmp_path / "audio"), store=str(tmp_path / "f.zarr"), num_workers=0,
                        feature_sets=["mel24k"], failures=str(tmp_path / "f.tsv"), summary=str(tmp_path / "s.json")))
    q = str(tmp_path / "q.safetensors")
    run_tokens(TokensParams(features=str(tmp_path / "f.zarr"), feature_set="mel24k", out=str(tmp_path / "t.zarr"),
                            codebook_size=8192, quantizer=q, metrics=str(tmp_path / "t.json")))
    mel = FrontEnd(spec)(torch.from_numpy(load_audio(tmp_path / "audio" / "a.wav", 24000))[None])[0].numpy()
    stored = open_set(str(tmp_path / "f.zarr"), "mel24k").read(0)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, mel)
    quantizer = RandomProjectionQuantizer.load(q)
    codes = open_set(str(tmp_path / "t.zarr"), "mel24k").read(0)
    np.testing.assert_array_equal(codes, tokenize(mel, quantizer, 4))
    assert (mel.astype(np.float16).astype(np.float32) != mel).mean() > 0.5   # float16 storage would not pass
