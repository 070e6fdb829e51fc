"""Small audio files for tests: good clips and each kind of bad input the stages must survive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, sr: int, freq: float = 220.0, channels: int = 1, seed: int = 0, amplitude: float = 0.3,
         noise: float = 0.01, overtone: float | None = None) -> np.ndarray:
    """A sine of ``freq`` Hz (float64, mono unless ``channels``), plus ``noise`` x white noise from ``seed``; with
    ``overtone``, a partial at ``overtone * freq`` of amplitude 0.2 gated on and off at 1.5 Hz (a timbre with a
    rhythm, for tests that need embeddings to differ in time)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = amplitude * np.sin(2 * np.pi * freq * t)
    if overtone is not None:
        x = x + 0.2 * np.sin(2 * np.pi * overtone * freq * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)
    if noise:
        x = x + noise * rng.standard_normal(t.shape)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def write_good(folder: Path, n: int, sr: int = 22050, seconds: float = 2.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"good{i:03d}.wav"
        sf.write(p, tone(seconds + 0.25 * (i % 3), sr, 110.0 * (1 + i % 5), seed=i), sr)
        paths.append(p)
    return paths


BAD_CASES = {
    "corrupt.wav": "not decodable",
    "empty.wav": "empty file",
    "text.flac": "not decodable",
    "zero.wav": "zero-length",
    "short.wav": "too short",
    "nan.wav": "NaN",
    "silent.wav": "silence",
    "folder.wav": "directory",
}


def write_bad(folder: Path) -> dict[str, str]:
    """One file per bad-input case; returns file name -> expected words of its reason."""
    folder.mkdir(parents=True, exist_ok=True)
    sr = 16000
    good = folder / "tmp_good.wav"
    sf.write(good, tone(1.0, sr), sr)
    data = good.read_bytes()
    good.unlink()
    (folder / "corrupt.wav").write_bytes(data[:30])   # header cut in the middle
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.flac").write_text("this is not audio\n" * 50)
    sf.write(folder / "zero.wav", np.zeros((0,)), sr)
    sf.write(folder / "short.wav", tone(0.1, sr), sr)
    nan = tone(1.0, sr).astype(np.float32)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, sr, subtype="FLOAT")
    sf.write(folder / "silent.wav", np.zeros(sr), sr)
    (folder / "folder.wav").mkdir()
    return dict(BAD_CASES)


def write_odd_but_valid(folder: Path) -> list[Path]:
    """Valid inputs that need care: 8 kHz, 96 kHz, 6 channels."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, sr, ch in (("rate8k.wav", 8000, 1), ("rate96k.flac", 96000, 1), ("six_channels.wav", 22050, 6)):
        sf.write(folder / name, tone(1.5, sr, channels=ch), sr)
        out.append(folder / name)
    return out
