"""Python API: load an encoder by folder or name, embed one recording, many files, any layers.

Example (the same block is in README.md, fenced as ``python api-example``; the tests run it)::

    import numpy as np
    import mirkit

    enc = mirkit.load_encoder("models/pretrain")            # any model folder or training run folder
    wave = np.random.default_rng(0).standard_normal(44100 * 5).astype("float32")
    chunks = enc.embed(wave, sample_rate=44100)               # (n_chunks, dim) numpy array
    out = enc.embed(wave, sample_rate=44100, frames=True)     # dict: chunks, frames, times
    print(chunks.shape, out["frames"].shape, out["times"][:3])

The chunking rule, frame times and frozen-model settings are those of ``mirkit extract``
(:mod:`mirkit.eval.extract`): both go through :meth:`mirkit.eval.encoder.FrozenEncoder.embed_tracks`, so the
API and the stage give the same embeddings for the same audio. Loading imports only
:mod:`mirkit.models` and :mod:`mirkit.data.features` (no recipe, no objective).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirkit.errors import InputError
from mirkit.eval.encoder import MIN_TAIL, FrozenEncoder, features_of_wave, load_frozen
from mirkit.eval.extract import ExtractParams, write_stores
from mirkit.models.config import ModelConfig

Layers = int | Sequence[int] | str


class MirkitEncoder:
    """A frozen mirkit encoder with its input front end. Build it with :func:`load_encoder`.

    Attributes: ``architecture``, ``preset`` (named size), ``recipe`` (that trained it, if any),
    ``sample_rate`` (of the model's features), ``window_seconds`` (chunk length), ``layers`` (valid
    ``layer`` values), ``all_layers`` (the order of ``layer="all"``), ``poolings`` (first = default), ``timing`` (output frame rate and receptive
    field, :mod:`mirkit.models.timing`), ``config`` (the model folder's config.json, a :class:`mirkit.models.config.ModelConfig`).
    """

    def __init__(self, frozen: FrozenEncoder):
        from mirkit.data.features import FrontEnd
        self.frozen = frozen
        self.front = FrontEnd(frozen.spec).to(frozen.device)
        enc = frozen.encoder
        self.config: ModelConfig = frozen.config
        self.architecture: str = frozen.config.architecture
        self.preset: str = frozen.model_info.get("preset", "")
        self.recipe: str = frozen.model_info.get("recipe", "")
        self.sample_rate: int = frozen.spec.sample_rate
        self.window_seconds: float = frozen.window / frozen.frame_rate
        self.layers: tuple[int, ...] = (-1, *range(enc.depth + 1))
        #: the order of ``layer="all"`` outputs: block input, each block, then the last block normed
        self.all_layers: list[int] = [*range(enc.depth + 1), -1]
        self.poolings: tuple[str, ...] = tuple(enc.poolings)
        self.timing: dict[str, float] = dict(frozen.timing)

    def __repr__(self) -> str:
        return (f"MirkitEncoder(architecture={self.architecture!r}, preset={self.preset!r}, "
                f"device={self.frozen.device}, window={self.window_seconds:.2f} s, "
                f"frame_rate={self.timing['frame_rate']:.2f} Hz, poolings={self.poolings})")

    def features(self, audio: Any, sample_rate: int | None = None) -> np.ndarray:
        """The model's input features ``(frames, bins)`` of a path or waveform (see :meth:`embed`)."""
        return features_of_wave(self.frozen, self._wave(audio, sample_rate), self.front)

    def embed(self, audio: Any, sample_rate: int | None = None, layer: Layers = -1, pooling: str | None = None,
              frames: bool = False, return_tensors: str = "np", batch_size: int = 32,
              min_tail: float = MIN_TAIL) -> Any:
        """Embeddings of one recording.

        ``audio``: a file path, or a waveform (numpy array or torch tensor), 1-D ``(samples,)`` or
        2-D ``(channels, samples)`` (downmixed), float in [-1, 1] or integer PCM (int16, int32, int8,
        uint8: scaled as libsndfile reads such files, :func:`pcm_to_float`), at ``sample_rate`` (required for waveforms;
        resampled to the model's rate). ``layer``: -1 (last, normed), 0 (block input), 1..depth, or
        a list of them / ``"all"`` (every layer from one forward pass; arrays get a leading layer
        axis in that order, ``"all"`` = 0..depth then -1). ``pooling``: one of ``self.poolings``
        (``None`` = the model's default).

        Returns the chunk embeddings ``(n_chunks, dim)``, or with ``frames=True`` a dict with
        ``chunks``, ``frames`` ``(n_frames, dim)`` and ``times`` (seconds, centre of each frame,
        from the start of the audio). ``return_tensors``: ``"np"`` (numpy) or ``"pt"`` (torch).
        """
        _check_tensors(return_tensors)
        feats = self.features(audio, sample_rate)
        [(_, emb)] = list(self.frozen.embed_tracks([(0, feats)], layer, pooling, frames, batch_size, min_tail))
        _check_finite(emb, "the input")
        return _package(emb, frames, return_tensors)

    def embed_files(self, files: str | Path | Sequence[str | Path], layers: Layers = -1,
                    pooling: str | None = None, frames: bool = False, batch_size: int = 32,
                    features: str | None = None, out: str | Path | None = None,
                    min_tail: float = MIN_TAIL, return_tensors: str = "np",
                    on_progress: Callable[[int, int, str], None] | None = None) -> Any:
        """Embeddings of many files, windows of consecutive files sharing forward passes.

        ``files``: a list of audio paths, a manifest CSV (``path``, ``offset``/``duration``, labels)
        or a folder of audio files. ``layers``/``pooling``/``frames``: as in :meth:`embed`.
        ``features``: a feature store (``mirkit mels``) to read the files' features from when it
        holds them with this model's exact spec (others are computed from audio).

        Without ``out``: returns ``{track id: result of embed()}`` (a list of paths gives each path
        as its id). With ``out``: writes embeddings stores that ``mirkit probe`` reads, resuming an
        interrupted run, and returns the extract report: one store at ``out`` for a single layer,
        else ``out/layer_<n>.zarr`` per layer (``layer_last.zarr`` for -1). Unreadable audio is
        skipped there and listed in ``report.failures``; without ``out`` it raises ``AudioError``.
        """
        from mirkit.eval.extract import FeatureSource
        _check_tensors(return_tensors)
        tracks, manifest_dir = _tracks(files)
        if out is not None:
            wanted, _ = self.frozen.resolve_layers(layers, pooling)
            if isinstance(layers, int):
                outs = {wanted[0]: str(out)}
            else:
                os.makedirs(out, exist_ok=True)
                outs = {i: str(Path(out) / f"layer_{'last' if i == -1 else i}.zarr") for i in wanted}
            p = ExtractParams(model="", manifest="", features=str(features or ""), out=str(out), pooling=pooling,
                              frames=frames, min_tail=min_tail, batch_size=batch_size)
            return write_stores(self.frozen, tracks, p, outs, manifest_dir, on_progress)
        source = FeatureSource(self.frozen, str(features) if features else None)
        ids = [t.track_id for t in tracks]

        def inputs():
            for t in tracks:
                yield t.track_id, source.get(t)[0]

        result = {}
        for i, (key, emb) in enumerate(self.frozen.embed_tracks(inputs(), layers, pooling, frames, batch_size,
                                                                min_tail), start=1):
            _check_finite(emb, str(key))
            result[key] = _package(emb, frames, return_tensors)
            if on_progress:
                on_progress(i, len(ids), str(key))
        return result

    def save_pretrained(self, folder: str | Path, probe: dict[str, Any] | str | Path | None = None) -> Path:
        """Write this encoder as a model folder (config.json, model.safetensors, README.md model card),
        atomically. ``probe``: probe results to show in the card (a dict ``{task: {metric: value}}``
        or the path of a ``mirkit probe`` metrics JSON)."""
        import json

        from mirkit.train.checkpoint import save_model_folder
        if isinstance(probe, (str, Path)):
            probe = json.loads(Path(probe).read_text())
        config = self.config
        if probe:
            config = replace(config, provenance={**config.provenance, "probe": probe})
        save_model_folder(folder, self.frozen.encoder, config)   # architecture and sizes: from the encoder
        return Path(folder)

    # -- input --------------------------------------------------------------------------------
    def _wave(self, audio: Any, sample_rate: int | None) -> np.ndarray:
        from mirkit.data.audio import AudioError, check_rate, check_wave, load_audio, resample
        rate = self.sample_rate
        if isinstance(audio, (str, Path)):
            try:
                return load_audio(audio, rate)
            except AudioError as exc:
                raise AudioError(f"{audio}: {exc}") from None
        if sample_rate is None:
            raise InputError("a waveform needs its sample_rate (e.g. enc.embed(wave, sample_rate=44100))")
        sample_rate = check_rate(sample_rate)
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        wave = pcm_to_float(np.asarray(audio))
        if wave.ndim == 2:
            wave = wave.mean(axis=0)
        if wave.ndim != 1 or wave.size == 0:
            raise InputError(f"waveform of shape {np.shape(audio)}: expected (samples,) or (channels, samples)")
        try:   # the same checks as decoded files (empty, NaN/inf, digital silence)
            wave = check_wave(wave)
        except AudioError as exc:
            raise AudioError(f"waveform: {exc}") from None
        return resample(wave, sample_rate, rate)


#: integer PCM -> float in [-1, 1): libsndfile's normalisation (what ``soundfile.read(dtype="float32")``
#: returns for a file of that sample format): signed n-bit samples divided by 2**(n-1); unsigned 8-bit
#: (the WAV convention) centred on 128 first
PCM_SCALE = {np.dtype(np.int16): (0, 2.0 ** 15), np.dtype(np.int32): (0, 2.0 ** 31),
             np.dtype(np.int8): (0, 2.0 ** 7), np.dtype(np.uint8): (128, 2.0 ** 7)}


def pcm_to_float(wave: np.ndarray) -> np.ndarray:
    """A waveform as float32: floats as they are, integer PCM (int16, int32, int8, uint8) scaled to
    [-1, 1) as libsndfile does; other types (int64, uint16, bool, complex, object) are refused."""
    wave = np.asarray(wave)
    if wave.dtype.kind == "f":
        return wave.astype(np.float32, copy=False)
    if wave.dtype in PCM_SCALE:
        offset, scale = PCM_SCALE[wave.dtype]
        return ((wave.astype(np.float64) - offset) / scale).astype(np.float32)
    raise InputError(f"waveform of dtype {wave.dtype}: give float samples in [-1, 1] or integer PCM "
                     f"(int16, int32, int8 or uint8)")


def _check_tensors(return_tensors: str) -> None:
    if return_tensors not in ("np", "pt"):
        raise InputError(f"return_tensors={return_tensors!r}: choose 'np' or 'pt'")


def _check_finite(emb: Any, what: str) -> None:
    """NaN/inf embeddings are never returned as results (as in ``mirkit extract``)."""
    from mirkit.data.audio import AudioError
    from mirkit.eval.encoder import finite_embeddings
    if not finite_embeddings(emb):
        raise AudioError(f"{what}: embeddings contain NaN/inf: the input is outside what the model handles")


def _package(emb: Any, frames: bool, return_tensors: str) -> Any:
    conv = (lambda a: torch.from_numpy(np.asarray(a))) if return_tensors == "pt" else (lambda a: a)
    if not frames:
        return conv(emb.chunks)
    return {"chunks": conv(emb.chunks), "frames": conv(emb.frames), "times": conv(emb.frame_times)}


def _tracks(files: str | Path | Sequence[str | Path]) -> tuple[list[Any], Path]:
    """Tracks of a manifest, a folder or a list of paths, and the folder their rows are relative to."""
    from mirkit.data.manifest import Track, load_tracks
    if isinstance(files, (str, Path)):
        path = Path(files)
        if path.is_file() and path.suffix.lower() != ".csv":      # one audio file
            return [Track(str(files), path.resolve())], Path.cwd()
        return load_tracks(path), path if path.is_dir() else path.parent
    tracks = [Track(str(f), Path(f).resolve()) for f in files]
    if len({t.track_id for t in tracks}) != len(tracks):
        raise InputError("embed_files: a file is listed twice")
    return tracks, Path.cwd()


def load_encoder(path: str | Path = "models/pretrain", device: str | torch.device | None = None,
                 random_init: bool = False, seed: int = 0) -> MirkitEncoder:
    """Load a model folder, a training run folder (its current step) or a model installed by name
    (``mirkit import ... --out``'s default folder, :func:`mirkit.train.checkpoint.models_home`) as a frozen
    encoder (``device`` None = CUDA when available).

    ``random_init=True`` gives the same architecture freshly initialised with ``seed`` (the
    baseline of the probe comparison). Raises :class:`mirkit.train.checkpoint.CheckpointError` with the
    reason when the folder is missing, truncated or does not fit its config.
    """
    return MirkitEncoder(load_frozen(path, device or "auto", random_init, seed))


def embed_files(model: str | Path | MirkitEncoder, files: str | Path | Sequence[str | Path], **kwargs: Any) -> Any:
    """:meth:`MirkitEncoder.embed_files` of a model given by folder, name or as a loaded encoder."""
    enc = model if isinstance(model, MirkitEncoder) else load_encoder(model, kwargs.pop("device", None))
    return enc.embed_files(files, **kwargs)


def list_encoders() -> list[dict[str, Any]]:
    """The registered architectures' named sizes: name, architecture, description, CPU-sized."""
    from mirkit.models.registry import SIZES
    return [{"name": n, "architecture": s.architecture, "description": s.description, "cpu_sized": s.cpu_sized}
            for n, s in SIZES.items()]
