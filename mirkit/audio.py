"""Decode (soundfile), downmix and resample (torchaudio) audio, with one clear error per bad file."""

from __future__ import annotations

from mirkit.errors import InputError

import functools
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mirkit.binaries import load_torchaudio

T = load_torchaudio().transforms

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


class AudioError(InputError):
    """A file that cannot be used, with the reason (the message names no path; callers add it)."""


def fingerprint(path: str | Path, offset: float = 0.0, duration: float | None = None) -> str:
    """Cheap change detector: size + mtime (+ the clip boundaries)."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{offset:g}:{duration if duration is not None else ''}"


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> T.Resample:
    """One cached resampler per rate pair (its sinc kernel is computed once)."""
    return T.Resample(orig, new)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio's default windowed-sinc, Hann, 6 zero crossings)."""
    if orig_sr == new_sr:
        return wave
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with torch.no_grad():
        return _resampler(int(orig_sr), int(new_sr))(x).numpy()


def read_audio(path: str | Path, offset: float = 0.0, duration: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``[offset, offset+duration)`` of a file as float32 mono at its own rate.

    Raises :class:`AudioError` for unreadable, empty, non-audio, zero-length, non-finite or
    silent input.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except OSError as exc:
        raise AudioError(f"unreadable path ({exc.strerror or exc})") from None
    if path.is_dir():
        raise AudioError("is a directory, not an audio file")
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            start = int(round(offset * sr))
            if start:
                f.seek(min(start, f.frames))
            frames = -1 if duration is None else int(round(duration * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except PermissionError:
        raise AudioError("permission denied") from None
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"not decodable as audio ({str(exc).strip() or exc.__class__.__name__})") from None
    except OSError as exc:
        raise AudioError(f"unreadable ({exc.strerror or exc})") from None
    if data.shape[0] == 0:
        raise AudioError("zero-length audio (no samples" + (" after the offset)" if offset else ")"))
    if not np.isfinite(data).all():
        raise AudioError("contains NaN or infinite samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.any(mono):
        raise AudioError("digital silence (every sample is zero)")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def load_audio(path: str | Path, sample_rate: int, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode, downmix and resample to ``sample_rate``; float32 mono."""
    wave, sr = read_audio(path, offset, duration)
    return resample(wave, sr, sample_rate)


def find_audio(root: str | Path) -> list[Path]:
    """Audio files under a folder (recursive), sorted for a deterministic order."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."))
