import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import tone, write_bad, write_odd_but_valid

from mirkit.data.audio import AudioError, find_audio, load_audio, read_audio


@pytest.mark.parametrize("name", ["corrupt.wav", "empty.wav", "text.flac", "zero.wav", "nan.wav",
                                  "silent.wav", "folder.wav"])
def test_each_bad_input_raises_a_clear_reason(tmp_path, name):
    expected = write_bad(tmp_path)[name]
    with pytest.raises(AudioError, match=expected):
        read_audio(tmp_path / name)


def test_missing_file_is_named_not_found(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "nope.wav")


def test_odd_rates_and_channels_are_resampled_and_downmixed(tmp_path):
    for path in write_odd_but_valid(tmp_path):
        wave = load_audio(path, 16000)
        assert wave.ndim == 1 and wave.dtype == np.float32
        assert abs(len(wave) - 1.5 * 16000) <= 2


def test_resampling_keeps_the_pitch(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0, 44100, freq=440.0), 44100)
    wave = load_audio(tmp_path / "a.wav", 16000)
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440.0) < 2.0


def test_offset_and_duration_cut_the_clip(tmp_path):
    sf.write(tmp_path / "a.wav", tone(3.0, 16000), 16000)
    wave = load_audio(tmp_path / "a.wav", 16000, offset=1.0, duration=0.5)
    full = load_audio(tmp_path / "a.wav", 16000)
    assert len(wave) == 8000
    np.testing.assert_allclose(wave, full[16000:24000], atol=1e-6)


def test_find_audio_is_sorted_and_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    for p in ("z.wav", "b/a.flac", "notes.txt"):
        (tmp_path / p).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_audio(tmp_path)] == ["b/a.flac", "z.wav"]
