"""The frozen encoder and its windowing: a checkpoint's encoder run over whole tracks, chunk by chunk
and frame by frame.

One code path (:meth:`FrozenEncoder.embed_tracks`) serves the ``extract`` stage
(:mod:`mirkit.eval.extract`), the Python API (:mod:`mirkit.api`), ``mirkit inspect`` and the online
probes (:mod:`mirkit.eval.online_probe`), so all of them give the same numbers for the same features.

Chunking rule (docs/architecture.md, embeddings store: "per chunk, optionally per frame"; the chunk length is the recipe's
training crop, ``crop_frames``, as in the Deezer papers' and Myna's evaluation):

* a track of ``n`` input frames is cut into ``n // W`` non-overlapping windows of ``W`` frames;
* a remainder of ``r`` frames (``0 < r < W``) is covered by one more window **aligned to the
  track's end** (start ``n - W``, so it overlaps the previous one). Its per-frame embeddings are
  always used, but only for the columns mostly past the last full window (no column is repeated),
  so frames cover the whole track. It counts as a chunk only when ``r >= min_tail * W`` (default
  one half): a shorter tail would add a chunk that mostly repeats the previous one and
  over-weights it in late fusion;
* a track shorter than one window is one window, padded at the end with the track's own minimum
  feature value (its silence floor, whatever the amplitude scale: 0 for power, the ``top_db``
  floor for dB); only the columns that start inside the track are kept as frames.

Frame times are the centre of each embedding frame in seconds: a column covering input frames
``[a, a + k)`` (``k`` = ``frames_per_col``) is centred on frame ``a + (k - 1) / 2``, and input frame
``i`` is centred on ``i / frame_rate`` (centred STFT/CQT frames). The stage adds the manifest
``offset`` so times are measured from the start of the audio file.

Frozen means: ``eval()`` mode, ``torch.inference_mode``, no masking/token dropping, bf16 autocast
on CUDA (fp32 on CPU); outputs are returned as float32.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirkit.device import pick
from mirkit.errors import InputError
from mirkit.models.base import Encoder, layer_list
from mirkit.models.config import ModelConfig

#: default share of a window the tail must fill to count as a chunk
MIN_TAIL = 0.5


# ------------------------------------------------------------------------------------ windows
@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one track start, and how many of them are chunks."""

    n_frames: int
    window: int
    starts: tuple[int, ...]
    n_chunks: int


def plan_windows(n_frames: int, window: int, min_tail: float = MIN_TAIL) -> WindowPlan:
    """The chunking rule of this module's docstring."""
    if n_frames < 1 or window < 1:
        raise ValueError(f"need at least one frame and a positive window (got {n_frames}, {window})")
    full = n_frames // window
    if full == 0:
        return WindowPlan(n_frames, window, (0,), 1)
    starts = [i * window for i in range(full)]
    rest = n_frames - full * window
    n_chunks = full
    if rest:
        starts.append(n_frames - window)
        if rest >= min_tail * window:
            n_chunks += 1
    return WindowPlan(n_frames, window, tuple(starts), n_chunks)


def cut_window(feats: np.ndarray, start: int, window: int, fill: float) -> np.ndarray:
    """``(bins, window)`` float32 crop of ``(n_frames, bins)`` features, padded with ``fill``."""
    out = np.full((window, feats.shape[1]), fill, dtype=np.float32)
    piece = feats[start: start + window]
    out[: len(piece)] = piece
    return np.ascontiguousarray(out.T)


def kept_columns(plan: WindowPlan, w: int, n_cols: int, frames_per_col: float) -> tuple[np.ndarray, np.ndarray]:
    """Columns of window ``w`` kept as frames, and the input frame each of them starts at: all
    columns starting inside the track, except that the end-aligned tail window only contributes
    the columns more than half of whose frames lie past the last full window (so no column
    repeats one already kept, and the gap between kept columns never exceeds one column)."""
    full = plan.n_frames // plan.window
    col_start = plan.starts[w] + np.arange(n_cols) * frames_per_col
    lo = full * plan.window - frames_per_col / 2 if 1 <= full == w else -np.inf
    keep = (col_start > lo) & (col_start < plan.n_frames)
    return np.nonzero(keep)[0], col_start[keep]


# ------------------------------------------------------------------------------------ the model
@dataclass
class TrackEmbeddings:
    """Embeddings of one track: chunks ``(n_chunks, dim)``; frames ``(n, dim)`` and their times
    (seconds from the start of the features, i.e. of the decoded audio) when asked for."""

    chunks: np.ndarray
    frames: np.ndarray | None = None
    frame_times: np.ndarray | None = None


@dataclass
class _Pending:
    key: Any
    plan: WindowPlan
    pooled: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    left: int = 0


class FrozenEncoder:
    """A model folder's encoder, frozen, with the facts needed to embed whole tracks.

    ``feature_set``/``spec``: the input features the model was trained on; ``window``: the
    training crop length in input frames; ``frame_rate``: input frames per second; ``timing``:
    output frame rate and receptive field (:mod:`mirkit.models.timing`).
    """

    def __init__(self, encoder: Encoder, config: ModelConfig, device: torch.device,
                 model_info: dict[str, Any] | None = None):
        from mirkit.data.features import spec_from_dict
        from mirkit.models.timing import timing
        self.encoder = encoder.to(device).eval()
        for prm in self.encoder.parameters():
            prm.requires_grad_(False)
        self.config, self.device = config, device
        self.feature_set: str = config.feature_set
        self.spec = spec_from_dict(config.features)
        self.window: int = int(config.window_frames)
        from mirkit.limits import MAX_FRAMES
        if not 0 < self.window <= MAX_FRAMES:   # bounded before a window of it is allocated
            from mirkit.params import ParamsError
            raise ParamsError(f"config.json: window_frames={config.window_frames!r}: must be in 1..{MAX_FRAMES}")
        self.frame_rate: float = self.spec.frame_rate
        self.timing = timing(encoder, config.features, self.window)
        self.model_info = model_info or {}

    # -- checks ---------------------------------------------------------------------------
    def resolve(self, layer: int, pooling: str | None) -> tuple[int, str]:
        """Validate a layer and pooling for this encoder (``None`` = its default pooling)."""
        [layer], pooling = self.resolve_layers(layer, pooling)
        return layer, pooling

    def resolve_layers(self, layers: int | Sequence[int] | str, pooling: str | None) -> tuple[list[int], str]:
        """Validate layers (a number, a list or ``"all"``) and a pooling (``None`` = the default)."""
        enc = self.encoder
        wanted = layer_list(enc.depth, layers)
        pooling = pooling or enc.poolings[0]
        if pooling not in enc.poolings:
            raise InputError(f"pooling={pooling!r}: this {type(enc).__name__} supports "
                             f"{', '.join(enc.poolings)} (default {enc.poolings[0]})")
        return wanted, pooling

    # -- forward --------------------------------------------------------------------------
    def run(self, x: np.ndarray, layers: Sequence[int], pooling: str,
            frames: bool) -> tuple[np.ndarray, np.ndarray | None, float]:
        """Windows ``(batch, bins, W)`` -> pooled ``(batch, n_layers, dim)``, tokens
        ``(batch, n_layers, cols, dim)`` (when ``frames``) and the input frames each column covers."""
        enc, dev = self.encoder, self.device
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pooled, tokens, fpc = enc.embed_layers(torch.from_numpy(x).to(dev), layers, pooling, frames)
            p = torch.stack([pooled[k] for k in layers], dim=1).float().cpu().numpy()
            t = torch.stack([tokens[k] for k in layers], dim=1).float().cpu().numpy() if frames else None
        return p, t, float(fpc)

    def probe_shapes(self, layer: int = -1, pooling: str | None = None) -> tuple[int, int, float]:
        """``(chunk dim, frame dim, frames_per_col)`` from one silent window."""
        layer, pooling = self.resolve(layer, pooling)
        x = np.zeros((1, self.spec.bins, self.window), np.float32)
        pooled, tokens, fpc = self.run(x, [layer], pooling, True)
        assert tokens is not None
        return pooled.shape[-1], tokens.shape[-1], fpc

    def embed_tracks(self, items: Iterable[tuple[Hashable, np.ndarray]], layer: int | Sequence[int] | str = -1,
                     pooling: str | None = None, frames: bool = True, batch_size: int = 32,
                     min_tail: float = MIN_TAIL) -> Iterator[tuple[Hashable, TrackEmbeddings]]:
        """Embed tracks given as ``(key, features (n_frames, bins))``; yields ``(key, embeddings)``
        in input order. Windows of consecutive tracks share forward passes of ``batch_size``.
        ``layer``: one layer (arrays ``(n, dim)``) or a list / ``"all"`` (arrays ``(n_layers, n, dim)``,
        all layers from the same forward pass)."""
        layers, pooling = self.resolve_layers(layer, pooling)
        single = isinstance(layer, int)
        queue: deque[_Pending] = deque()
        batch: list[tuple[_Pending, int, np.ndarray]] = []

        def flush() -> None:
            if not batch:
                return
            pooled, tokens, fpc = self.run(np.stack([b[2] for b in batch]), layers, pooling, frames)
            for k, (item, w, _) in enumerate(batch):
                item.pooled[w] = pooled[k]
                if tokens is not None:
                    item.tokens[w] = (tokens[k], fpc)
                item.left -= 1
            batch.clear()

        def finished() -> Iterator[tuple[Hashable, TrackEmbeddings]]:
            while queue and queue[0].left == 0:
                item = queue.popleft()
                yield item.key, self._assemble(item, frames, single)

        for key, feats in items:
            feats = np.asarray(feats, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] != self.spec.bins:
                raise ValueError(f"{key}: features of shape {feats.shape}; expected (frames, {self.spec.bins})")
            plan = plan_windows(feats.shape[0], self.window, min_tail)
            n = len(plan.starts)
            item = _Pending(key, plan, [None] * n, [None] * n, n)
            queue.append(item)
            fill = float(feats.min())
            for w, start in enumerate(plan.starts):
                batch.append((item, w, cut_window(feats, start, self.window, fill)))
                if len(batch) >= batch_size:
                    flush()
                    yield from finished()
        flush()
        yield from finished()

    def _assemble(self, item: _Pending, frames: bool, single: bool) -> TrackEmbeddings:
        plan = item.plan
        chunks = np.stack(item.pooled[: plan.n_chunks], axis=1)           # (n_layers, n_chunks, dim)
        if not frames:
            return TrackEmbeddings(chunks[0] if single else chunks)
        rows, starts = [], []
        for w, (tokens, fpc) in enumerate(item.tokens):                   # tokens (n_layers, cols, dim)
            cols, col_start = kept_columns(plan, w, tokens.shape[1], fpc)
            rows.append(tokens[:, cols])
            starts.append(col_start + (fpc - 1) / 2)
        times = (np.concatenate(starts) / self.frame_rate).astype(np.float64)
        out = np.concatenate(rows, axis=1)
        return TrackEmbeddings(chunks[0] if single else chunks, out[0] if single else out, times)


def load_frozen(model_dir: str | Path, device: str | torch.device = "auto", random_init: bool = False,
                seed: int = 0) -> FrozenEncoder:
    """The encoder of a model folder (or a training run folder's current step), frozen on ``device``
    (raises ``CheckpointError``). Imports only models and features, never a recipe."""
    from mirkit.train import checkpoint
    encoder, config, folder = checkpoint.load_encoder(model_dir, weights=not random_init, seed=seed)
    dev = device if isinstance(device, torch.device) else pick(device)
    prov = config.provenance
    info = {"path": str(model_dir), "architecture": config.architecture, "preset": config.preset or "",
            "recipe": prov.get("recipe", ""), "random_init": bool(random_init), "step": config.step}
    for key in ("source", "licence", "source_sha256"):   # imported weights: where from, under which terms
        if prov.get(key):
            info[key] = prov[key]
    if random_init:
        info["seed"] = int(seed)
    else:
        info["weights_sha1"] = _file_digest(folder / checkpoint.MODEL_FILE)
    return FrozenEncoder(encoder, config, dev, info)


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def features_of_wave(frozen: FrozenEncoder, wave: np.ndarray, front) -> np.ndarray:
    """Features of a mono waveform at the spec's rate, rounded through the spec's storage dtype so
    they equal what `mirkit mels` would have stored."""
    from mirkit.data.audio import AudioError
    with torch.inference_mode():
        x = front(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None].to(frozen.device))[0]
    with np.errstate(over="ignore"):
        stored = x.cpu().numpy().astype(frozen.spec.dtype)
    if not np.isfinite(stored).all():   # checked as stored: a loud clip overflows float16 to inf
        raise AudioError(f"features contain NaN/inf as {frozen.spec.dtype} (audio too loud or damaged; "
                         f"peak amplitude {float(np.abs(wave).max()):.3g})")
    return stored.astype(np.float32)


def finite_embeddings(emb: TrackEmbeddings) -> bool:
    """Whether every chunk and frame embedding is finite (NaN/inf are never reported as results)."""
    return bool(np.isfinite(emb.chunks).all() and (emb.frames is None or np.isfinite(emb.frames).all()))
