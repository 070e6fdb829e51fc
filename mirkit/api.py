"""Python API: embed audio with a mirkit checkpoint in three lines.

Example (the same block is in README.md, fenced as ``python api-example``; the tests run it)::

    import numpy as np
    import mirkit

    enc = mirkit.load_encoder("models/pretrain")            # any mirkit checkpoint directory
    wave = np.random.default_rng(0).standard_normal(44100 * 5).astype("float32")
    chunks = enc.embed(wave, sample_rate=44100)               # (n_chunks, dim) numpy array
    out = enc.embed(wave, sample_rate=44100, frames=True)     # dict: chunks, frames, times
    print(chunks.shape, out["frames"].shape, out["times"][:3])

The chunking rule, frame times and frozen-model settings are those of ``mirkit extract``
(:mod:`mirkit.extract`): both go through :meth:`mirkit.extract.FrozenEncoder.embed_tracks`, so the
API and the stage give the same embeddings for the same audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirkit.extract import MIN_TAIL, FrozenEncoder, features_of_wave, load_frozen


class MirkitEncoder:
    """A frozen mirkit encoder with its input front end. Build it with :func:`load_encoder`.

    Attributes: ``recipe``, ``preset``, ``sample_rate`` (of the model's features), ``window_seconds``
    (chunk length), ``layers`` (valid ``layer`` values), ``poolings`` (first = default).
    """

    def __init__(self, frozen: FrozenEncoder):
        from mirkit.features import FrontEnd
        self.frozen = frozen
        self.front = FrontEnd(frozen.spec).to(frozen.device)
        enc = frozen.encoder
        self.recipe: str = frozen.config["recipe"]
        self.preset: str = frozen.model_info.get("preset", "")
        self.sample_rate: int = frozen.spec.sample_rate
        self.window_seconds: float = frozen.window / frozen.frame_rate
        self.layers: tuple[int, ...] = (-1, *range(enc.depth + 1))
        self.poolings: tuple[str, ...] = tuple(enc.poolings)

    def __repr__(self) -> str:
        return (f"MirkitEncoder(recipe={self.recipe!r}, preset={self.preset!r}, device={self.frozen.device}, "
                f"window={self.window_seconds:.2f} s, poolings={self.poolings})")

    def features(self, audio: Any, sample_rate: int | None = None) -> np.ndarray:
        """The model's input features ``(frames, bins)`` of a path or waveform (see :meth:`embed`)."""
        return features_of_wave(self.frozen, self._wave(audio, sample_rate), self.front)

    def embed(self, audio: Any, sample_rate: int | None = None, layer: int = -1, pooling: str | None = None,
              frames: bool = False, return_tensors: str = "np", batch_size: int = 32,
              min_tail: float = MIN_TAIL) -> Any:
        """Embeddings of one recording.

        ``audio``: a file path, or a waveform (numpy array or torch tensor), 1-D ``(samples,)`` or
        2-D ``(channels, samples)`` (downmixed), at ``sample_rate`` (required for waveforms;
        resampled to the model's rate). ``layer``: -1 (last, normed), 0 (block input) or 1..depth.
        ``pooling``: one of ``self.poolings`` (``None`` = the model's default).

        Returns the chunk embeddings ``(n_chunks, dim)``, or with ``frames=True`` a dict with
        ``chunks``, ``frames`` ``(n_frames, dim)`` and ``times`` (seconds, centre of each frame,
        from the start of the audio). ``return_tensors``: ``"np"`` (numpy) or ``"pt"`` (torch).
        """
        if return_tensors not in ("np", "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: choose 'np' or 'pt'")
        from mirkit.audio import AudioError
        from mirkit.extract import finite_embeddings
        feats = self.features(audio, sample_rate)
        [(_, emb)] = list(self.frozen.embed_tracks([(0, feats)], layer, pooling, frames, batch_size, min_tail))
        if not finite_embeddings(emb):
            raise AudioError("embeddings contain NaN/inf: the input is outside what the model handles")
        conv = (lambda a: torch.from_numpy(np.asarray(a))) if return_tensors == "pt" else (lambda a: a)
        if not frames:
            return conv(emb.chunks)
        return {"chunks": conv(emb.chunks), "frames": conv(emb.frames), "times": conv(emb.frame_times)}

    # -- input --------------------------------------------------------------------------------
    def _wave(self, audio: Any, sample_rate: int | None) -> np.ndarray:
        from mirkit.audio import AudioError, check_rate, check_wave, load_audio, resample
        rate = self.sample_rate
        if isinstance(audio, (str, Path)):
            try:
                return load_audio(audio, rate)
            except AudioError as exc:
                raise AudioError(f"{audio}: {exc}") from None
        if sample_rate is None:
            raise ValueError("a waveform needs its sample_rate (e.g. enc.embed(wave, sample_rate=44100))")
        sample_rate = check_rate(sample_rate)
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim == 2:
            wave = wave.mean(axis=0)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"waveform of shape {np.shape(audio)}: expected (samples,) or (channels, samples)")
        try:   # the same checks as decoded files (empty, NaN/inf, digital silence)
            wave = check_wave(wave)
        except AudioError as exc:
            raise AudioError(f"waveform: {exc}") from None
        return resample(wave, sample_rate, rate)


def load_encoder(path: str | Path = "models/pretrain", device: str | torch.device | None = None,
                 random_init: bool = False, seed: int = 0) -> MirkitEncoder:
    """Load a mirkit checkpoint directory as a frozen encoder (``device`` None = CUDA when available).

    ``random_init=True`` gives the same architecture freshly initialised with ``seed`` (the
    baseline of the probe comparison). Raises :class:`mirkit.checkpoint.CheckpointError` with the
    reason when the checkpoint is missing, truncated or does not fit its config.
    """
    return MirkitEncoder(load_frozen(path, device or "auto", random_init, seed))
