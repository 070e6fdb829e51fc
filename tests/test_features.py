"""``mel24k`` is MusicFM's front end (torchaudio's MelSpectrogram defaults + AmplitudeToDB), checked
against numbers computed here from the HTK mel formula, not from torchaudio."""

import numpy as np
import pytest
import torch
from audio_fixtures import tone

from mirkit.data import store
from mirkit.data.features import PRESETS, FeatureSpec, FrontEnd, MelFFT, spec_from_dict
from mirkit.data.mels import MelsParams, run

SPEC = PRESETS["mel24k"]


def htk_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def htk_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def htk_edges(n_mels=128, sr=24000):
    """n_mels + 2 edge frequencies equally spaced in HTK mel from 0 Hz to Nyquist."""
    return htk_hz(np.linspace(0.0, htk_mel(sr / 2), n_mels + 2))


def htk_triangles(n_fft=2048, sr=24000, n_mels=128):
    """Unnormalised triangles (peak 1 at each centre) sampled at the FFT bin frequencies."""
    edges, freqs = htk_edges(n_mels, sr), np.arange(n_fft // 2 + 1) * sr / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)


def pure(freq, seconds=2.0, sr=24000):
    """A noiseless sine as a ``(1, samples)`` float32 batch."""
    return torch.from_numpy(tone(seconds, sr, freq, amplitude=0.5, noise=0)).float()[None]


def mean_power(wave):
    return MelFFT(SPEC)(wave)[0].double().mean(dim=1).numpy()


def test_mel24k_spec_is_musicfm_front_end():
    assert (SPEC.sample_rate, SPEC.n_fft, SPEC.hop_length, SPEC.n_mels) == (24000, 2048, 240, 128)
    assert (SPEC.mel_filters, SPEC.scale, SPEC.top_db, SPEC.fmin, SPEC.fmax) == ("htk", "db", None, 0.0, None)


def test_filterbank_is_the_htk_formula():
    ours = MelFFT(SPEC).mel_basis.double().numpy()
    np.testing.assert_allclose(ours, htk_triangles(), atol=5e-5)   # torchaudio builds it in float32
    assert htk_edges()[65] == pytest.approx(2315.3, abs=0.1)   # centre of bin 64 (Slaney: ~2098 Hz)


@pytest.mark.parametrize("k", [30, 64, 100, 126])
def test_a_tone_at_an_htk_centre_peaks_in_that_bin(k):
    centres = htk_edges()[1:-1]
    assert int(np.argmax(mean_power(pure(centres[k])))) == k


@pytest.mark.parametrize("k", [50, 90])
def test_a_tone_halfway_between_two_centres_splits_evenly(k):
    """Unnormalised HTK triangles cross at height 1/2 midway between centres, so both bins get
    the same power; Slaney's area normalisation would favour the narrower (lower) filter."""
    centres = htk_edges()[1:-1]
    p = mean_power(pure((centres[k] + centres[k + 1]) / 2))
    assert abs(10 * np.log10(p[k] / p[k + 1])) < 0.3
    assert p[k] > 10 * max(p[k - 1], p[k + 2])


def test_white_noise_power_follows_the_triangle_areas():
    """E|X_j|^2 = sigma^2 * sum(window^2) for white noise, so bin k gets sigma^2 * sum(w^2) * sum_j fb[k, j]:
    the unnormalised filters widen with frequency and the spectrum tilts up by 10*log10(area_127 / area_0)."""
    wave = torch.randn(1, 24000 * 20, generator=torch.Generator().manual_seed(0))
    areas = htk_triangles().sum(axis=1)
    window_energy = float((torch.hann_window(2048, periodic=True).double() ** 2).sum())
    measured = mean_power(wave)
    np.testing.assert_allclose(measured, areas * window_energy, rtol=0.15)
    tilt = 10 * np.log10(areas[127] / areas[0])
    assert tilt == pytest.approx(12.72, abs=0.01)
    assert 10 * np.log10(measured[127] / measured[0]) == pytest.approx(tilt, abs=0.5)
    # mirkit's stored values are the dB of that power (MusicFM's AmplitudeToDB: 10*log10, no ref, no top_db)
    db = FrontEnd(SPEC)(wave)[0].double().mean(dim=0).numpy()
    assert db[127] - db[0] > 12.0


def test_db_values_are_ten_log10_of_the_power():
    wave = torch.randn(1, 24000, generator=torch.Generator().manual_seed(1)) * 0.1
    power = MelFFT(SPEC)(wave)
    torch.testing.assert_close(FrontEnd(SPEC)(wave), (10 * torch.log10(power.clamp_min(1e-10))).transpose(1, 2))


def test_matches_torchaudio_melspectrogram_as_musicfm_calls_it():
    from mirkit.data.binaries import load_torchaudio
    ta = load_torchaudio()
    wave = torch.randn(2, 24000 * 2, generator=torch.Generator().manual_seed(2)) * 0.1
    reference = ta.transforms.AmplitudeToDB()(ta.transforms.MelSpectrogram(
        sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128)(wave))
    torch.testing.assert_close(FrontEnd(SPEC)(wave), reference.transpose(1, 2), rtol=0, atol=2e-3)


def test_old_slaney_specs_keep_their_stored_form_and_mel24k_changes():
    mel16k = PRESETS["mel16k"].to_dict()
    assert "mel_filters" not in mel16k                       # stores written before the field stay valid
    assert spec_from_dict(mel16k) == PRESETS["mel16k"]
    assert SPEC.to_dict()["mel_filters"] == "htk"
    old_mel24k = FeatureSpec(**{**SPEC.__dict__, "mel_filters": "slaney"})
    assert old_mel24k.to_dict() != SPEC.to_dict() and old_mel24k.digest() != SPEC.digest()


def test_a_store_built_with_the_old_mel24k_is_rebuilt(tmp_path):
    import soundfile as sf
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", np.random.default_rng(0).standard_normal(24000).astype("float32") * 0.1, 24000)
    url = str(tmp_path / "f.zarr")
    old = FeatureSpec(**{**SPEC.__dict__, "mel_filters": "slaney"})
    fs, _ = store.create_or_open(url, "mel24k", old.to_dict(), old.bins, old.frame_rate, old.dtype)
    fs.append([("a.wav", "a.wav", "x", np.zeros((101, 128), np.float16))])
    report = run(MelsParams(input=str(tmp_path / "in"), store=url, feature_sets=["mel24k"], num_workers=0,
                            failures=str(tmp_path / "f.tsv"), summary=str(tmp_path / "s.json")))
    assert report.sets["mel24k"].status == "replaced" and report.sets["mel24k"].stored == 1
    assert store.open_set(url, "mel24k").spec["mel_filters"] == "htk"
