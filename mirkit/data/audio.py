"""Decode (soundfile), downmix and resample (torchaudio) audio, with one clear error per bad file."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mirkit.data.binaries import load_torchaudio
from mirkit.errors import InputError

T = load_torchaudio().transforms

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")
#: highest sample rate accepted for a waveform (anything above is a mistake, not audio)
MAX_SAMPLE_RATE = 768_000
#: formats whose length comes from decoding a stream, not from a header
_STREAMED = ("OGG", "MPEG")
# libsndfile's wording for some failures misleads; what they mean for a file that exists
_REASONS = (("does not exist or is not a regular file", "format not recognised (not audio, or an unsupported format)"),
            ("Format not recognised", "format not recognised (not audio, or an unsupported format)"),
            ("file is malformed", "damaged or truncated file (its header is readable, its data is not)"))


class AudioError(InputError):
    """A file that cannot be used, with the reason (the message names no path; callers add it)."""


def fingerprint(path: str | Path, offset: float = 0.0, duration: float | None = None) -> str:
    """What identifies a clip's audio: a hash of the file's bytes (+ the clip boundaries).

    Content, not size + modification time, so a copy made by ``cp``, ``rsync`` or ``dvc checkout``
    (same bytes, new time) is recognised and its stored features are reused. BLAKE2b reads at
    about 1 GB/s, small next to decoding the same file."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"b2:{digest.hexdigest()}:{offset:g}:{duration if duration is not None else ''}"


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torch.nn.Module:
    """One cached resampler per rate pair (its sinc kernel is computed once)."""
    return T.Resample(orig, new)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio's default windowed-sinc, Hann, 6 zero crossings)."""
    if orig_sr == new_sr:
        return wave
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    with torch.no_grad():
        return _resampler(int(orig_sr), int(new_sr))(x).numpy()


def check_rate(sample_rate: object) -> int:
    """A sample rate as a positive int (raises :class:`AudioError` otherwise)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float)) \
            or not 0 < sample_rate <= MAX_SAMPLE_RATE or int(sample_rate) != sample_rate:
        raise AudioError(f"sample_rate={sample_rate!r}: must be a whole number of Hz in 1..{MAX_SAMPLE_RATE}")
    return int(sample_rate)


def check_wave(wave: np.ndarray) -> np.ndarray:
    """The checks every waveform passes, decoded or given (file stage and Python API alike): float32
    mono ``(samples,)``, at least one sample, finite, not digital silence."""
    if wave.size == 0:
        raise AudioError("zero-length audio (no samples)")
    if not np.isfinite(wave).all():
        raise AudioError("contains NaN or infinite samples")
    if not np.any(wave):
        raise AudioError("digital silence (every sample is zero)")
    return np.ascontiguousarray(wave, dtype=np.float32)


@contextlib.contextmanager
def _captured_stderr(notes: list[str]) -> Iterator[None]:
    """Collect what C decoders (mpg123, vorbis) print on file descriptor 2 ("Note: Illegal
    Audio-MPEG-Header ...") instead of letting it reach the user's terminal; the text is appended to
    ``notes``. The error raised names the reason in mirkit's words instead."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # no real stderr (captured by a test runner)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                notes.append(" ".join(text.split())[:300])


def _check_decode_size(frames: int, channels: int, sr: int) -> None:
    from mirkit.limits import budget, human
    need = 4 * frames * channels * 2   # the decoded samples and their mono mix / resampled copy
    if need > budget():
        raise AudioError(f"too long to decode at once: {frames / sr:.0f} s x {channels} channel(s) would need about "
                         f"{human(need)} (budget {human(budget())}, MIRKIT_MAX_BYTES); cut it into clips with "
                         f"offset/duration in the manifest")


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    for words, meaning in _REASONS:
        if words in text:
            return meaning
    return text


def read_audio(path: str | Path, offset: float = 0.0, duration: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``[offset, offset+duration)`` of a file as float32 mono at its own rate.

    Raises :class:`AudioError` for unreadable, empty, non-audio, truncated, zero-length, non-finite
    or silent input, and for a negative offset or a duration that is not positive.
    """
    if not offset >= 0:
        raise AudioError(f"offset={offset:g}: must be >= 0 seconds")
    if duration is not None and not duration > 0:
        raise AudioError(f"duration={duration:g}: must be > 0 seconds")
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
    notes: list[str] = []
    try:
        with _captured_stderr(notes), sf.SoundFile(str(path)) as f:
            sr, fmt, total = f.samplerate, f.format, f.frames
            start = round(offset * sr)
            if start:
                f.seek(min(start, f.frames))
            frames = -1 if duration is None else round(duration * sr)
            _check_decode_size(max(0, (f.frames - start) if frames < 0 else min(frames, f.frames - start)),
                               f.channels, sr)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except PermissionError:
        raise AudioError("permission denied") from None
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"not decodable as audio: {_reason(exc)}") from None
    except OSError as exc:
        raise AudioError(f"unreadable ({exc.strerror or exc})") from None
    if data.shape[0] == 0:
        if start and start >= total > 0:
            raise AudioError(f"no samples after the offset ({offset:g} s; the file lasts {total / sr:.3f} s)")
        if fmt in _STREAMED and size > 4096:
            raise AudioError(f"truncated or damaged {fmt.lower()} stream: no samples could be decoded from "
                             f"{size} bytes")
        raise AudioError("zero-length audio (no samples)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return check_wave(mono), int(sr)


def load_audio(path: str | Path, sample_rate: int, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode, downmix and resample to ``sample_rate``; float32 mono."""
    wave, sr = read_audio(path, offset, duration)
    return resample(wave, sr, sample_rate)


def find_audio(root: str | Path) -> list[Path]:
    """Audio files under a folder (recursive), sorted for a deterministic order."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."))
