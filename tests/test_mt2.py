"""CPSD (STONE), the ``mt2`` recipe (two class tokens) and the key-signature readout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memory_source import MemorySource
from torch import nn

import mirkit.objectives.contrastive as contrastive_objective
import mirkit.recipes.mt2 as mt2
from mirkit.eval.key_profile import KEY_SIGNATURES, KeyReadout, reference_features
from mirkit.models.base import Encoder, EncoderOutput, count_parameters
from mirkit.objectives.cpsd import cpsd_loss, cpsd_terms, key_phasor
from mirkit.params import ParamsError, resolve
from mirkit.recipes.base import Sources
from mirkit.recipes.mt2 import MT2Params, MT2Recipe, draw_offsets

MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])
HARMONICS = [(h, int(round(12 * np.log2(h)))) for h in range(1, 7)]   # (partial, bins above f0)


pytestmark = pytest.mark.usefixtures("one_thread")


def stone_scale(power: np.ndarray) -> np.ndarray:
    """STONE's CQT scaling: dB with an 80 dB floor, then /80 + 1."""
    db = 10 * np.log10(power)
    return (np.maximum(db, db.max() - 80) / 80 + 1).astype(np.float32)


def harmonic_cqt(notes_per_frame: list[list[int]], n_bins: int = 99, floor: float = 1e-8) -> np.ndarray:
    """CQT-like ``(frames, bins)`` array: each note (a bin index) with 1/h partials over a noise
    floor of ``floor`` (power; a note's fundamental has power 1)."""
    power = np.full((len(notes_per_frame), n_bins), floor)
    for f, notes in enumerate(notes_per_frame):
        for n in notes:
            for h, up in HARMONICS:
                if n + up < n_bins:
                    power[f, n + up] += 1.0 / h
    return stone_scale(power)


def oracle_profiles(views: torch.Tensor) -> torch.Tensor:
    """The true pitch-class profile of ``(batch, 84, frames)`` crops in crop coordinates, peaked."""
    power = 10 ** (8 * (views.double() - 1))
    b, bins, t = power.shape
    chroma = power.reshape(b, bins // 12, 12, t).sum(dim=(1, 3))
    return torch.softmax(60 * chroma / chroma.amax(dim=-1, keepdim=True), dim=-1).float()


def stack(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def recipe_for(**kw) -> MT2Recipe:
    return MT2Recipe(resolve(MT2Params, {"preset": "vit1d-micro", "segment_frames": 16, "proj_dims": [64, 32], **kw}))


# --- CPSD --------------------------------------------------------------------------------------
def test_cpsd_is_zero_for_equivariant_outputs_and_grows_with_errors():
    q = torch.tensor([0, 3, 7, 11, 5])
    d = torch.tensor([1, -4, 5, 2, -7])
    y1 = nn.functional.one_hot(q, 12).float()
    y3 = nn.functional.one_hot((q - d) % 12, 12).float()     # view 3 cropped d bins higher
    assert cpsd_loss(y1, y1, y3, d).item() < 1e-10
    assert key_phasor(y1).abs().allclose(torch.ones(5))
    uniform = torch.full_like(y1, 1 / 12)
    previous = 0.0
    for noise in (0.1, 0.3, 0.6):                              # blending towards uniform
        loss = cpsd_loss(y1, y1, (1 - noise) * y3 + noise * uniform, d).item()
        assert loss > previous
        previous = loss
    # a profile shifted the wrong way, and a disagreement between segments 1 and 2
    assert cpsd_loss(y1, y1, nn.functional.one_hot((q + d) % 12, 12).float(), d).item() > 1.0
    terms = cpsd_terms(y1, nn.functional.one_hot((q + 1) % 12, 12).float(), y3, d)
    assert terms["cpsd_pos"].item() > 0.5 and terms["cpsd_equi1"].item() < 1e-10


def test_recipe_crops_and_cpsd_sign_agree():
    """A CQT-like track cropped by the recipe: the true profiles give ~0 loss, the other sign does not."""
    notes = [[45], [45, 57], [45]] * 40                          # one pitch class (+ octave), with partials
    recipe = recipe_for(segment_frames=32)
    sources = Sources(MemorySource([harmonic_cqt(notes)]))
    rng = np.random.default_rng(0)
    batch = stack([recipe.sample(sources, 0, rng) for _ in range(48)])
    d = batch["shift"]
    assert (d != 0).all() and (d % 12 != 0).all() and len(set(d.tolist())) > 8
    # content moves DOWN in bin index in view 3: view3[b] == view1[b + d]
    for i in range(8):
        di = int(d[i])
        v1, v3 = batch["view1"][i], batch["view3"][i]
        if di > 0:
            torch.testing.assert_close(v3[: 84 - di], v1[di:])
        else:
            torch.testing.assert_close(v3[-di:], v1[: 84 + di])
    y1, y2, y3 = (oracle_profiles(batch[k]) for k in ("view1", "view2", "view3"))
    assert cpsd_loss(y1, y2, y3, d).item() < 1e-3
    assert cpsd_loss(y1, y2, y3, -d).item() > 1.0


def stone_shift_probabilities() -> dict[int, float]:
    """P(d) for STONE's draw, by enumerating its 12 x 11 equally likely (original, to_transpose) pairs."""
    counts: dict[int, int] = {}
    for original in range(1, 13):
        for to_transpose in range(1, 12):
            d = (original + to_transpose) % 12 - original
            counts[d] = counts.get(d, 0) + 1
    return {d: c / 132 for d, c in counts.items()}


def test_offsets_follow_stones_distribution():
    """STONE: view 1/2 offset in 1..12, view 3 offset in 0..11, d in -11..10 (never 0, 11 or |d| > 11)."""
    p = stone_shift_probabilities()
    assert sorted(p) == list(range(-11, 0)) + list(range(1, 11))
    assert p[-1] == 12 / 132 and p[-11] == 2 / 132 and p[1] == 10 / 132 and p[10] == 1 / 132
    rng = np.random.default_rng(0)
    n = 66_000
    pairs = np.array([draw_offsets(rng) for _ in range(n)])
    o1, o2 = pairs[:, 0], pairs[:, 1]
    assert o1.min() == 1 and o1.max() == 12 and o2.min() == 0 and o2.max() == 11
    np.testing.assert_allclose(np.bincount(o1, minlength=13)[1:] / n, 1 / 12, atol=0.004)
    d, counts = np.unique(o2 - o1, return_counts=True)
    assert d.tolist() == sorted(p)
    expected = np.array([p[int(k)] for k in d])
    chi2 = float((((counts - n * expected) ** 2) / (n * expected)).sum())
    assert chi2 < 45.3          # 99.9 % quantile of chi-square with 20 degrees of freedom


# --- model and objectives ----------------------------------------------------------------------
def test_mt2_tiny_encoder_size_and_two_class_tokens():
    with torch.device("meta"):
        encoder = MT2Recipe(resolve(MT2Params, {})).build_encoder()
    assert encoder.n_cls == 2 and encoder.in_bins == 84
    assert abs(count_parameters(encoder) - 5.4e6) / 5.4e6 < 0.02
    assert encoder.poolings[0] == "cls-mean"


def test_mt2_uses_the_shared_nt_xent(monkeypatch):
    assert mt2.nt_xent is contrastive_objective.nt_xent
    calls = []

    def spy(z1, z2, temperature=0.1):
        calls.append(temperature)
        return contrastive_objective.nt_xent(z1, z2, temperature)

    monkeypatch.setattr(mt2, "nt_xent", spy)
    recipe = recipe_for(temperature=0.2)
    batch = stack([recipe.sample(Sources(MemorySource([harmonic_cqt([[40]] * 40)])), 0,
                                 np.random.default_rng(i)) for i in range(3)])
    out = recipe.build_model()(batch)
    assert calls == [0.2] and set(out) >= {"loss", "cpsd", "ntxent", "cpsd_pos"}
    assert out["loss"].item() == pytest.approx(out["cpsd"].item() + out["ntxent"].item(), rel=1e-5)


@pytest.mark.parametrize("objectives,n_cls,keys", [("both", 2, {"cpsd", "ntxent"}), ("cpsd", 1, {"cpsd"}),
                                                   ("ntxent", 1, {"ntxent"})])
def test_single_objective_ablations_have_one_class_token(objectives, n_cls, keys):
    recipe = recipe_for(objectives=objectives)
    sample = recipe.sample(Sources(MemorySource([harmonic_cqt([[40]] * 40)])), 0, np.random.default_rng(0))
    assert ("view3" in sample) == (objectives != "ntxent")
    model = recipe.build_model()
    assert model.encoder.n_cls == n_cls
    out = model(stack([sample, sample, sample]))
    assert {"cpsd", "ntxent"} & set(out) == keys


def _tonal_tracks(n_tracks: int, n_frames: int, seed: int, floor: float = 1e-8) -> list[np.ndarray]:
    """Each track in one major key: frames hold three scale notes (changing every 4 frames)."""
    rng = np.random.default_rng(seed)
    tracks = []
    for _ in range(n_tracks):
        tonic = int(rng.integers(12))
        notes = []
        for _ in range(0, n_frames, 4):
            chord = (12 * rng.integers(2, 5, size=3) + (tonic + rng.choice(MAJOR_SCALE, size=3)) % 12 + 3).tolist()
            notes += [chord] * 4
        tracks.append(harmonic_cqt(notes[:n_frames], floor=floor))
    return tracks


def test_short_training_lowers_cpsd_and_ntxent():
    torch.manual_seed(0)
    recipe = recipe_for()
    sources = Sources(MemorySource(_tonal_tracks(24, 48, seed=0)))
    recipe.prepare(sources)
    model = recipe.build_model()
    eval_batch = stack([recipe.sample(sources, t, np.random.default_rng(t)) for t in range(24)])
    with torch.no_grad():
        before = model(eval_batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(1)
    for _ in range(40):
        batch = stack([recipe.sample(sources, int(t), rng) for t in rng.choice(24, size=8, replace=False)])
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = model(eval_batch)
    assert after["cpsd"] < 0.6 * before["cpsd"], (before["cpsd"], after["cpsd"])
    assert after["ntxent"] < 0.85 * before["ntxent"], (before["ntxent"], after["ntxent"])


def constant_profile_plateau() -> float:
    """CPSD of the best input-independent profile under STONE's shifts, from its closed form:
    ``z1 = z2 = z3 = r`` gives ``(1 - r^2)^2 + 2 (1 + r^4 - 2 r^2 E cos(2 pi 7 d / 12))``,
    minimal at ``r^2 = (1 + 2 E cos) / 3``."""
    e_cos = sum(pr * np.cos(2 * np.pi * 7 * d / 12) for d, pr in stone_shift_probabilities().items())
    r2 = (1 + 2 * e_cos) / 3
    return float((1 - r2) ** 2 + 2 * (1 + r2 ** 2 - 2 * r2 * e_cos))


def test_constant_profile_plateau_matches_a_fitted_constant_profile():
    """The collapse value quoted in docs/training.md (2.777: E cos = -1/11 under STONE's shifts) is what
    the best constant profile reaches."""
    plateau = constant_profile_plateau()
    assert plateau == pytest.approx(2.777, abs=1e-3)
    d = torch.tensor([(o + t) % 12 - o for o in range(1, 13) for t in range(1, 12)])   # STONE's 132 pairs
    logits = torch.zeros(12, requires_grad=True)
    with torch.no_grad():
        logits[0] = 1.0                                  # break the symmetry of the uniform profile
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(1000):
        y = torch.softmax(logits, -1).expand(len(d), 12)
        loss = cpsd_loss(y, y, y, d)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() == pytest.approx(plateau, abs=0.02)


def held_out_cpsd(recipe, train_tracks: list[np.ndarray], valid_tracks: list[np.ndarray], steps: int) -> float:
    """Held-out CPSD of ``recipe``'s model after ``steps`` AdamW steps (batch 8) on ``train_tracks``."""
    torch.manual_seed(0)
    train, valid = Sources(MemorySource(train_tracks)), Sources(MemorySource(valid_tracks))
    recipe.prepare(train)
    model = recipe.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = stack([recipe.sample(train, int(t), rng) for t in rng.integers(0, len(train_tracks), size=8)])
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    n = len(valid_tracks)
    held_out = stack([recipe.sample(valid, t % n, np.random.default_rng(1000 + t)) for t in range(64)])
    with torch.no_grad():
        return float(model.eval()(held_out)["cpsd"])


def _cpsd_after_training(frame_norm: bool, floor: float, steps: int = 300) -> float:
    """Held-out CPSD of a vit1d-micro CPSD-only model after ``steps`` AdamW steps on tonal tracks."""
    torch.manual_seed(0)
    return held_out_cpsd(recipe_for(objectives="cpsd", frame_norm=frame_norm),
                         _tonal_tracks(84, 48, seed=0, floor=floor), _tonal_tracks(18, 48, seed=1, floor=floor), steps)


def test_frame_norm_lets_cpsd_leave_the_constant_profile_plateau():
    """STONE-scaled input over a -40 dB noise floor (values 0.5..1, like the sample clips' 0.55..1.06):
    without STONE's per-frame normalisation the ViT-1D's CPSD stays on the constant-profile
    plateau; with it, CPSD falls far below (docs/training.md, "MT2")."""
    plateau = constant_profile_plateau()
    assert _cpsd_after_training(frame_norm=True, floor=1e-4) < 0.4 * plateau
    assert _cpsd_after_training(frame_norm=False, floor=1e-4) > 0.95 * plateau


# --- params ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("objectives", "all"), ("c", 6), ("ntxent_weight", -1),
                                       ("proj_dims", []), ("crop_bins", 4), ("preset", "big")])
def test_bad_params_are_rejected_naming_the_key(key, value):
    with pytest.raises(ParamsError, match=key):
        resolve(MT2Params, {key: value}, section="pretrain")


def test_prepare_rejects_an_offset_range_beyond_the_stored_bins():
    recipe_for().prepare(Sources(MemorySource([np.zeros((10, 99), np.float32)])))     # 84 + 12 <= 99
    with pytest.raises(ParamsError, match="crop_bins=88"):
        recipe_for(crop_bins=88).prepare(Sources(MemorySource([np.zeros((10, 99), np.float32)])))
    assert recipe_for().feature_set == "cqt22k"


# --- key readout -------------------------------------------------------------------------------
class ChromaOracle(Encoder):
    """Stand-in for a perfectly trained token 1: its class token is the crop's log chroma."""

    def __init__(self):
        super().__init__()
        self.dim, self.depth, self.crop_offset = 12, 0, 0

    def encode(self, x, layers=(-1,), attention=False):
        crop = x[:, self.crop_offset:self.crop_offset + 84]
        power = 10 ** (8 * (crop.double() - 1))
        chroma = power.reshape(x.shape[0], 7, 12, x.shape[-1]).sum(dim=(1, 3))
        cls = torch.log(chroma / chroma.amax(dim=-1, keepdim=True)).float()[:, None]
        h = torch.cat([cls, torch.zeros(x.shape[0], x.shape[-1], 12)], dim=1)
        return EncoderOutput(hidden={-1: h}, n_cls=1, grid=(1, x.shape[-1]))


def test_key_readout_calibrates_on_c_major_and_follows_transpositions():
    head = nn.Linear(12, 12)
    with torch.no_grad():
        head.weight.copy_(5 * torch.eye(12))
        head.bias.zero_()
    readout = KeyReadout.from_head(ChromaOracle(), head, chunk_frames=64)   # calibrated on the synthetic C-major cadence
    for tonic in (2, 9):
        k, name = readout.estimate(reference_features(tonic))
        assert (k, name) == (tonic, KEY_SIGNATURES[tonic])
    assert readout.estimate(reference_features(0))[0] == 0
    fixed = KeyReadout.from_head(ChromaOracle(), head, chunk_frames=64, offset=(readout.offset + 3) % 12)
    assert fixed.estimate(reference_features(0))[0] == 9                  # a given offset is used as is
    with pytest.raises(ValueError, match="no key profiles"):
        KeyReadout.from_model(recipe_for(objectives="ntxent").build_model(), chunk_frames=16)


def test_key_readout_reads_the_chroma_front_end_of_a_chroma_model(monkeypatch):
    """With ``key_frontend: chroma`` the CPSD profile is the front end's logits, not a head on the class
    token: the readout must read those (an oracle front end here: the crop's log chroma)."""
    model = recipe_for(key_frontend="chroma").build_model()
    assert model.key_head is None and model.has_key_profiles
    oracle = ChromaOracle()
    monkeypatch.setattr(model.encoder, "key_logits",
                        lambda x: 5 * oracle.encode(x).cls_tokens(-1)[:, 0])
    readout = KeyReadout.from_model(model, chunk_frames=64)
    for tonic in (0, 4, 10):
        assert readout.estimate(reference_features(tonic))[0] == tonic
    frames = reference_features(7)
    chunk = torch.from_numpy(frames[:64].T.copy())[None]
    with torch.no_grad():
        direct = model.profiles_of(chunk)[0].numpy()
    np.testing.assert_allclose(readout.raw_profile(frames[:64]), direct, atol=1e-6)


def test_frame_norm_is_part_of_the_encoder_and_its_stored_arguments():
    """The per-frame LayerNorm lives in the encoder (extraction sees it) and in the arguments a model
    folder stores; a folder written before it (no ``frame_norm``) rebuilds the old encoder."""
    from mirkit.models.registry import resolve_args
    encoder = recipe_for().build_encoder()
    assert isinstance(encoder.frame_norm, nn.LayerNorm) and encoder.init_args["frame_norm"] is True
    x = torch.rand(2, 84, 16) * 0.5 + 0.5
    tokens = encoder.frame_tokens(x)
    torch.testing.assert_close(tokens, encoder.frame_tokens(3 * x - 1), atol=1e-3, rtol=0)   # standardised per frame
    assert resolve_args("vit1d", {k: v for k, v in encoder.init_args.items() if k != "frame_norm"})["frame_norm"] is False
    assert recipe_for(frame_norm=False).build_encoder().frame_norm is None
