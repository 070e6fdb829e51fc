"""MT2's chroma key front end (``mt2.key_frontend: chroma``, STONE's ChromaNet idea)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_mt2 import _tonal_tracks, constant_profile_plateau, held_out_cpsd, recipe_for

from mirkit.models.chroma_key import ChromaFrontEnd, ChromaKeyViT1D
from mirkit.models.registry import architecture_name, build
from mirkit.params import ParamsError

pytestmark = pytest.mark.usefixtures("one_thread")


def leaky(tracks: list[np.ndarray], leak: float) -> list[np.ndarray]:
    """Spread ``leak`` of each bin's power to both neighbours (a CQT's adjacent-bin leakage)."""
    out = []
    for a in tracks:
        p = np.power(10.0, 8.0 * (a.astype(np.float64) - 1.0))
        q = p.copy()
        q[:, 1:] += leak * p[:, :-1]
        q[:, :-1] += leak * p[:, 1:]
        db = 10 * np.log10(q)
        out.append((np.maximum(db, db.max() - 80) / 80 + 1).astype(np.float32))
    return out


def test_front_end_logits_rotate_with_a_semitone_crop_shift():
    """The octave pool turns a k-bin crop shift into a k-step rotation of the logits (exactly, but for
    the two edge bins of each convolution's zero padding)."""
    torch.manual_seed(0)
    fe = ChromaFrontEnd(84, channels=4, kernel=3, time_pool=1).eval()
    period = torch.rand(1, 12, 1) * 0.5 + 0.5
    x = period.repeat(1, 10, 6)                       # 120 bins, the same pitch-class pattern in every octave
    with torch.no_grad():
        base = fe(x[:, 12:96])
        for k in (1, 5, 7):
            shifted = fe(x[:, 12 + k:96 + k])         # content moves down by k bins
            spread = float(base.max() - base.min())
            err = float((shifted - torch.roll(base, -k, dims=1)).abs().max())
            unrotated = float((shifted - base).abs().max())
            assert err < 0.1 * spread and err < 0.2 * unrotated, (k, err, spread, unrotated)


def test_chroma_key_token_leaves_the_plateau_on_leaky_input():
    """Tonal tracks with 10 % adjacent-bin leakage: the linear key head stays on the constant-profile
    plateau there (docs/training.md, "MT2": 2.92 after 300 steps); the chroma front end falls far below."""
    cpsd = held_out_cpsd(recipe_for(objectives="cpsd", key_frontend="chroma"),
                         leaky(_tonal_tracks(84, 48, seed=0, floor=1e-4), 0.1),
                         leaky(_tonal_tracks(18, 48, seed=1, floor=1e-4), 0.1), steps=150)
    assert cpsd < 0.4 * constant_profile_plateau()


def test_chroma_encoder_is_registered_and_rebuilds_from_its_arguments():
    encoder = recipe_for(key_frontend="chroma").build_encoder()
    assert isinstance(encoder, ChromaKeyViT1D) and architecture_name(encoder) == "vit1d-chroma"
    twin = build("vit1d-chroma", encoder.init_args)
    twin.load_state_dict(encoder.state_dict())
    x = torch.rand(2, 99, 16) * 0.5 + 0.5
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval().encode(x).cls_tokens(-1), twin.eval().encode(x).cls_tokens(-1))


@pytest.mark.parametrize("kw", [dict(key_frontend="chroma", objectives="ntxent"),
                                dict(key_frontend="chroma", crop_bins=80)])
def test_bad_chroma_settings_are_rejected(kw):
    with pytest.raises(ParamsError):
        recipe_for(**kw)
