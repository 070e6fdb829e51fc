"""Key-signature readout of a CPSD-trained class token (STONE inference, applied to MT2's token 1).

STONE's inference (``shared/notes/anchors-mt2.md`` §1.4–1.5): the 12-way softmax profile of
non-overlapping windows cropped at bin offset 0 is averaged over the track and its argmax is read
as a key signature. CPSD fixes the profile only up to a rotation, so STONE calibrates it on a
recording in C major. Here the reference is **synthesised in numpy** (an I-IV-V-I cadence of
harmonic tones) and passed through mirkit's own ``cqt22k`` front end, so nothing is downloaded;
a real C-major recording's features (``reference=``) or a known ``offset=`` can be given instead.

Direction: transposing a track UP by ``k`` semitones moves its content up ``k`` CQT bins, which is
a crop ``k`` bins lower, so (see :mod:`mirkit.objectives.cpsd`) the profile's peak moves from
``q`` to ``q + k``. Hence the key-signature index is ``(argmax - offset) mod 12``, with ``offset``
the argmax on the C-major reference. Twelve classes: a major key and its relative minor share one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from mirkit.errors import InputError
from mirkit.models.base import Encoder

#: index k = key signature whose major tonic is k semitones above C
KEY_SIGNATURES = ("C major / A minor", "Db major / Bb minor", "D major / B minor", "Eb major / C minor",
                  "E major / C# minor", "F major / D minor", "F# major / D# minor", "G major / E minor",
                  "Ab major / F minor", "A major / F# minor", "Bb major / G minor", "B major / G# minor")


# --- synthetic reference ---------------------------------------------------------------------
def cadence_audio(tonic: int = 0, sample_rate: int = 22050, chord_seconds: float = 1.5) -> np.ndarray:
    """A major-key I-IV-V-I cadence (bass + triad, harmonic tones with 1/h partials) as float32
    mono audio; ``tonic`` in semitones above C (0 = C major)."""
    t = np.arange(int(chord_seconds * sample_rate)) / sample_rate
    envelope = np.minimum(1.0, t / 0.02) * np.exp(-1.5 * t)
    chords = []
    for root in (0, 5, 7, 0):                                   # I, IV, V, I
        midi = [48 + tonic + root] + [60 + tonic + root + i for i in (0, 4, 7)]
        tone = np.zeros_like(t)
        for m in midi:
            f0 = 440.0 * 2 ** ((m - 69) / 12)
            for h in range(1, 7):
                if h * f0 < sample_rate / 2:
                    tone += np.sin(2 * np.pi * h * f0 * t) / h
        chords.append(tone * envelope)
    audio = np.concatenate(chords)
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


@lru_cache(maxsize=2)
def _front_end(feature_set: str):
    from mirkit.data.features import PRESETS, FrontEnd
    return FrontEnd(PRESETS[feature_set])


def reference_features(tonic: int = 0, feature_set: str = "cqt22k") -> np.ndarray:
    """``(frames, bins)`` features of :func:`cadence_audio` through mirkit's front end."""
    front = _front_end(feature_set)
    wave = cadence_audio(tonic, front.spec.sample_rate)
    return front(torch.from_numpy(wave)[None])[0].numpy()


# --- profiles --------------------------------------------------------------------------------
#: ``(batch, bins, frames)`` inputs -> ``(batch, 12)`` softmax key profiles
Profiles = Callable[[torch.Tensor], torch.Tensor]


def head_profiles(encoder: Encoder, key_head: nn.Module, key_token: int = 0) -> Profiles:
    """Profiles of a linear key head on class token ``key_token`` (MT2's token 1)."""
    def profiles(x: torch.Tensor) -> torch.Tensor:
        cls = encoder.encode(x, layers=(-1,)).cls_tokens(-1)[:, key_token]
        return torch.softmax(key_head(cls).float(), dim=-1)
    return profiles


@torch.no_grad()
def chunk_profiles(profiles: Profiles, frames: np.ndarray, chunk_frames: int,
                   device: torch.device | str = "cpu", batch_size: int = 32) -> torch.Tensor:
    """``(n_chunks, 12)`` profiles of non-overlapping chunks of ``(n_frames, bins)`` frames.

    A trailing partial chunk counts when it is at least half a chunk (or the only one).
    """
    x = torch.as_tensor(np.asarray(frames, dtype=np.float32)).T          # (bins, frames)
    n = x.shape[1]
    starts = list(range(0, max(n - chunk_frames, 0) + 1, chunk_frames))
    tail = starts[-1] + chunk_frames if n > chunk_frames else n
    chunks = [x[:, s:s + chunk_frames] for s in starts if s + chunk_frames <= n]
    if n - tail >= chunk_frames // 2 or not chunks:
        chunks.append(x[:, tail:] if chunks else x)
    return torch.cat([profiles(torch.stack(group).to(device)).float().cpu()
                      for group in _same_length_batches(chunks, batch_size)])


def _same_length_batches(chunks: list[torch.Tensor], size: int):
    i = 0
    while i < len(chunks):
        j = i
        while j < len(chunks) and j - i < size and chunks[j].shape == chunks[i].shape:
            j += 1
        yield chunks[i:j]
        i = j


@dataclass
class KeyReadout:
    """Calibrated key-signature estimates from a model's 12-way key profiles.

    ``profiles``: inputs to profiles (:func:`head_profiles` for a linear key head; an MT2 model's own
    ``profiles_of`` through :meth:`from_model`, which also covers the chroma key front end).
    ``offset``: profile index that means C major / A minor; ``None`` calibrates on ``reference``
    frames, or on the synthesised C-major cadence when no reference is given.
    """

    profiles: Profiles
    chunk_frames: int
    offset: int | None = None
    reference: np.ndarray | None = None
    feature_set: str = "cqt22k"
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if self.offset is None:
            ref = self.reference if self.reference is not None else reference_features(0, self.feature_set)
            self.offset = int(np.argmax(self.raw_profile(ref)))

    @classmethod
    def from_head(cls, encoder: Encoder, key_head: nn.Module, chunk_frames: int, key_token: int = 0,
                  **kwargs: Any) -> KeyReadout:
        """From an encoder and a linear key head on its class token ``key_token``."""
        device = next(key_head.parameters()).device
        return cls(head_profiles(encoder, key_head, key_token), chunk_frames, device=device, **kwargs)

    @classmethod
    def from_model(cls, model: Any, chunk_frames: int, **kwargs: Any) -> KeyReadout:
        """From a trained :class:`mirkit.recipes.mt2.MT2Model`: its linear key head, or its chroma key
        front end (``key_frontend: chroma``), whichever produced the CPSD profiles in training."""
        if not getattr(model, "has_key_profiles", False):
            raise InputError("this model has no key profiles (trained without the CPSD objective)")
        return cls(model.profiles_of, chunk_frames, device=next(model.parameters()).device, **kwargs)

    def raw_profile(self, frames: np.ndarray) -> np.ndarray:
        """Uncalibrated profile: chunk profiles averaged over the track."""
        return chunk_profiles(self.profiles, frames, self.chunk_frames, self.device).mean(dim=0).numpy()

    def profile(self, frames: np.ndarray) -> np.ndarray:
        """Calibrated profile: index k = :data:`KEY_SIGNATURES` [k]."""
        return np.roll(self.raw_profile(frames), -int(self.offset or 0))

    def estimate(self, frames: np.ndarray) -> tuple[int, str]:
        """Key-signature index and name of one track's ``(frames, bins)`` features."""
        k = int(np.argmax(self.profile(frames)))
        return k, KEY_SIGNATURES[k]
