"""Named spectrogram feature sets computed with nnAudio, and the presets of the four recipes.

| preset      | recipe       | what                                                                 |
|-------------|--------------|----------------------------------------------------------------------|
| mel16k      | myna         | 16 kHz, n_fft 2048, hop 512, 128 Slaney mels, mel POWER (Myna feeds raw power; its patch LayerNorm scales) |
| mel16k-db   | contrastive  | 16 kHz, n_fft 1024, hop 512, 128 mels, dB with top_db 100 (Deezer multi-view SSL front end) |
| cqt22k      | mt2          | 22.05 kHz CQT (nnAudio CQT1992v2; STONE: VQT gamma 0), fmin 27.5 Hz, 99 bins, 12 bins/octave, hop 512, dB top_db 80 then /80+1 (STONE) |
| wave24k     | (MERT import)| 24 kHz waveform cut into frames of 320 samples (75 Hz, one "bin" per sample): no transform, for encoders with their own waveform front end (MERT) |
| mel24k      | muse-lq      | 24 kHz, n_fft 2048, hop 240 (100 Hz), 128 HTK mels without filter normalisation (torchaudio's defaults), dB without top_db (MusicFM ``MelSTFT``) |

Frames are returned as ``(n_frames, n_bins)`` (time-major, the store's layout).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mirkit.params import ParamsError, param

#: bump when the computation changes so stored sets are recomputed rather than mixed
FEATURES_VERSION = 2

#: mel filterbanks: nnAudio's (Myna, Deezer) and torchaudio's default one (MusicFM, hence MuSE-LQ)
MEL_FILTERS = ("slaney", "htk")


@dataclass
class FeatureSpec:
    """Exact parameters of one feature set (stored with the data as its ``spec``)."""

    kind: str = param("mel", choices=("mel", "cqt", "wave"),
                      help="wave = the waveform itself, hop_length samples per frame (bins = hop_length)")
    sample_rate: int = param(16000, ge=4000, le=192000)
    hop_length: int = param(512, ge=16, le=65536, help="samples between frames")
    n_fft: int = param(2048, ge=16, le=65536, help="mel only")
    n_mels: int = param(128, ge=1, le=1024, help="mel only")
    mel_filters: str = param("slaney", choices=MEL_FILTERS,
                             help="mel only: slaney = nnAudio/librosa filters (Slaney scale, area-normalised); "
                                  "htk = torchaudio's defaults (HTK scale, peak 1, as MusicFM)")
    fmin: float = param(0.0, ge=0.0)
    fmax: float | None = param(None, help="mel only; null = Nyquist")
    n_bins: int = param(99, ge=1, le=1024, help="cqt only")
    bins_per_octave: int = param(12, ge=1, le=120, help="cqt only")
    scale: str = param("power", choices=("power", "log1p", "db", "db-stone"))
    top_db: float | None = param(None, gt=0.0, help="dB floor below each track's maximum")
    dtype: str = param("float32", choices=("float16", "float32"))

    def check(self) -> None:
        from mirkit import limits
        nyquist = self.sample_rate / 2
        if self.kind == "wave":
            return
        if self.kind == "mel":
            if self.fmax is not None and not self.fmin < self.fmax <= nyquist:
                raise ParamsError(f"fmax={self.fmax}: must be in (fmin, {nyquist:g}] for sample_rate {self.sample_rate}")
            if self.hop_length > self.n_fft:
                raise ParamsError(f"hop_length={self.hop_length}: must be <= n_fft ({self.n_fft}) or samples are skipped")
        else:
            top = self.fmin * 2 ** ((self.n_bins - 1) / self.bins_per_octave)
            if self.fmin <= 0 or top >= nyquist:
                raise ParamsError(f"n_bins={self.n_bins}: the top CQT bin ({top:.0f} Hz) must lie below Nyquist "
                                  f"({nyquist:g} Hz) and fmin must be > 0")
        limits.check_bytes(f"{self.kind} kernels (n_fft={self.n_fft}, fmin={self.fmin:g}, n_bins={self.bins})",
                           self.kernel_bytes, "choose a smaller n_fft / n_bins or a higher fmin")

    @property
    def kernel_samples(self) -> int:
        """Length of the analysis window: n_fft, or nnAudio CQT1992v2's kernel for the lowest bin
        (next power of two of Q * sample_rate / fmin, Q = 1 / (2^(1/bins_per_octave) - 1))."""
        if self.kind == "mel":
            return self.n_fft
        if self.kind == "wave":
            return self.hop_length
        q = 1.0 / (2 ** (1.0 / self.bins_per_octave) - 1)
        return 2 ** math.ceil(math.log2(math.ceil(q * self.sample_rate / self.fmin)))

    @property
    def min_samples(self) -> int:
        """Shortest input (samples at ``sample_rate``): centred frames reflect-pad half a window,
        which needs more input than the padding."""
        return self.kernel_samples // 2 + 1

    @property
    def kernel_bytes(self) -> int:
        """Memory of the front end's fixed kernels (mel filterbank + window, or the CQT kernels)."""
        if self.kind == "mel":
            return 4 * (self.n_mels + 1) * (self.n_fft // 2 + 1)
        if self.kind == "wave":
            return 0
        return 8 * self.n_bins * self.kernel_samples

    def work_bytes(self, n_samples: int) -> int:
        """Rough peak memory of computing the features of ``n_samples`` (the complex STFT / CQT
        response, the power and the scaled output, float32)."""
        frames = self.n_frames(n_samples)
        if self.kind == "wave":
            return 4 * n_samples * 3
        inner = self.n_fft // 2 + 1 if self.kind == "mel" else self.n_bins
        return 8 * frames * inner * 2 + 4 * frames * self.bins * 3 + 4 * n_samples * 2

    @property
    def bins(self) -> int:
        if self.kind == "wave":
            return self.hop_length
        return self.n_mels if self.kind == "mel" else self.n_bins

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def n_frames(self, n_samples: int) -> int:
        """Frames for a signal of ``n_samples`` (centred frames: 1 + n // hop; waveform frames: n // hop,
        the last incomplete frame dropped)."""
        if self.kind == "wave":
            return n_samples // self.hop_length
        return 1 + n_samples // self.hop_length

    def to_dict(self) -> dict:
        """The spec as stored with the data. ``mel_filters`` is left out at its original value
        (slaney), so sets and checkpoints written before the field existed keep an equal spec."""
        d = dataclasses.asdict(self)
        if d["mel_filters"] == "slaney":
            del d["mel_filters"]
        d["features_version"] = FEATURES_VERSION
        return d

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


PRESETS: dict[str, FeatureSpec] = {
    "mel16k": FeatureSpec(kind="mel", sample_rate=16000, n_fft=2048, hop_length=512, n_mels=128, scale="power"),
    "mel16k-db": FeatureSpec(kind="mel", sample_rate=16000, n_fft=1024, hop_length=512, n_mels=128, scale="db",
                             top_db=100.0, dtype="float16"),
    "cqt22k": FeatureSpec(kind="cqt", sample_rate=22050, hop_length=512, fmin=27.5, n_bins=99, bins_per_octave=12,
                          scale="db-stone", top_db=80.0, dtype="float16"),
    "mel24k": FeatureSpec(kind="mel", sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128, mel_filters="htk",
                          scale="db", dtype="float16"),
    "wave24k": FeatureSpec(kind="wave", sample_rate=24000, hop_length=320, scale="power", dtype="float32"),
}


def spec_from_dict(d: dict, source: str = "config.json") -> FeatureSpec:
    """A stored spec as a :class:`FeatureSpec` (checked by :func:`validate_spec`, errors name ``source``)."""
    return validate_spec(d, source)


def validate_spec(spec: Any, source: str = "config.json", key: str = "features") -> FeatureSpec:
    """A stored feature spec (a checkpoint's ``config.json``, a store's attrs) as a checked
    :class:`FeatureSpec`: typed, bounded (window, hop, bins and kernel memory), no unknown keys.

    Raises :class:`~mirkit.params.ParamsError` (an ``InputError``) naming ``source`` and the key.
    """
    if not isinstance(spec, dict):
        raise ParamsError(f"{source}: '{key}' must be a mapping of feature parameters, got {type(spec).__name__}")
    from mirkit.params import resolve
    try:
        return resolve(FeatureSpec, {k: v for k, v in spec.items() if k != "features_version"}, section=key)
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None


class FrontEnd(nn.Module):
    """Waveform ``(batch, samples)`` -> scaled features ``(batch, frames, bins)``."""

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec
        spec.check()   # bounded before any kernel is allocated
        self.transform: nn.Module | None = None
        if spec.kind == "mel":
            self.transform = MelFFT(spec)
        elif spec.kind == "cqt":
            # STONE uses nnAudio's VQT with gamma=0 (the multi-rate 2010 algorithm); the single-rate
            # 1992 kernel gives the same CQT (correlation > 0.9999, peaks within 1 %) about 6x faster on CPU.
            from nnAudio.features.cqt import CQT1992v2
            self.transform = CQT1992v2(sr=spec.sample_rate, hop_length=spec.hop_length, fmin=spec.fmin,
                                       n_bins=spec.n_bins, bins_per_octave=spec.bins_per_octave,
                                       pad_mode="reflect", output_format="Magnitude", verbose=False)

    def check_input(self, n_samples: int) -> None:
        """Raise :class:`~mirkit.data.audio.AudioError` when a signal of ``n_samples`` is too short for the
        window / CQT kernel, or would need more memory than :func:`mirkit.limits.budget`."""
        from mirkit.data.audio import AudioError
        from mirkit.limits import budget, human
        sr = self.spec.sample_rate
        if n_samples < self.spec.min_samples:
            window = "CQT kernel" if self.spec.kind == "cqt" else "STFT window"
            raise AudioError(f"too short for these features: {n_samples} samples ({n_samples / sr:.3f} s at "
                             f"{sr} Hz); the {window} of {self.spec.kernel_samples} samples needs at least "
                             f"{self.spec.min_samples}")
        need = self.spec.work_bytes(n_samples)
        if need > budget():
            raise AudioError(f"too long to compute at once: {n_samples / sr:.0f} s would need about {human(need)} "
                             f"(budget {human(budget())}, MIRKIT_MAX_BYTES); cut it into clips with "
                             f"offset/duration in the manifest")

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        self.check_input(wave.shape[-1])
        if self.transform is None:                              # waveform frames: (batch, frames, hop)
            n = self.spec.n_frames(wave.shape[-1])
            return wave.float()[..., : n * self.spec.hop_length].reshape(*wave.shape[:-1], n, self.spec.hop_length)
        x = self.transform(wave.float())                       # (batch, bins, frames)
        n = self.spec.n_frames(wave.shape[-1])
        x = x[..., :n].clamp_min(0)
        return scale(x, self.spec).transpose(1, 2)


class MelFFT(nn.Module):
    """Mel power spectrogram: periodic Hann window, centred reflect padding, power 2, then a mel
    filterbank. The STFT is one ``torch.stft`` call (much cheaper on CPU than nnAudio's convolution
    kernels), which is what both references compute:

    * ``mel_filters="slaney"``: nnAudio's ``MelSpectrogram`` filters (Slaney scale, area-normalised),
      as Myna feeds them (tested equal to ``nnAudio.features.mel.MelSpectrogram``);
    * ``mel_filters="htk"``: torchaudio's ``MelSpectrogram`` defaults (HTK scale, unnormalised
      triangles of peak 1), as MusicFM's ``MelSTFT`` (tested equal to ``torchaudio.transforms.MelSpectrogram``).
    """

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        fmax = spec.fmax or spec.sample_rate / 2
        if spec.mel_filters == "htk":
            from mirkit.data.binaries import load_torchaudio
            torchaudio = load_torchaudio()
            basis = torchaudio.functional.melscale_fbanks(spec.n_fft // 2 + 1, spec.fmin, fmax, spec.n_mels,
                                                          spec.sample_rate, norm=None, mel_scale="htk").T
        else:
            from nnAudio.features.mel import MelSpectrogram
            basis = MelSpectrogram(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                                   hop_length=spec.hop_length, fmin=spec.fmin, fmax=fmax, center=True,
                                   pad_mode="reflect", power=2.0, verbose=False).mel_basis
        self.mel_basis: torch.Tensor
        self.window: torch.Tensor
        self.register_buffer("mel_basis", basis.clone().float(), persistent=False)
        self.register_buffer("window", torch.hann_window(spec.n_fft, periodic=True), persistent=False)
        self.n_fft, self.hop = spec.n_fft, spec.hop_length

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)
        return self.mel_basis @ (stft.real ** 2 + stft.imag ** 2)


def scale(x: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Amplitude scaling of ``(batch, bins, frames)``; top_db is relative to each item's maximum."""
    if spec.scale == "power":
        return x
    if spec.scale == "log1p":
        return torch.log1p(x)
    db = 10.0 * torch.log10(x.clamp_min(1e-10))
    if spec.top_db is not None:
        peak = db.amax(dim=(-2, -1), keepdim=True)
        db = torch.maximum(db, peak - spec.top_db)
    if spec.scale == "db-stone":
        return db / spec.top_db + 1.0 if spec.top_db else db
    return db
