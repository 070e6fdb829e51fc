"""Frozen embeddings: run a checkpoint's encoder over whole tracks, chunk by chunk and frame by frame.

One code path (:meth:`FrozenEncoder.embed_tracks`) serves both the ``extract`` stage and the Python
API (:mod:`mirkit.api`), so the two give the same numbers for the same audio.

Chunking rule (design.md: "per chunk, optionally per frame"; the chunk length is the recipe's
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

import contextlib
import hashlib
import json
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirkit.device import DEVICES, pick
from mirkit.models.base import POOLINGS, Encoder, layer_list
from mirkit.params import ParamsError, param

#: default share of a window the tail must fill to count as a chunk
MIN_TAIL = 0.5


@dataclass
class ExtractParams:
    """Section ``extract`` of params.yaml."""

    model: str = param("models/pretrain", help="model folder (config.json + model.safetensors) or training run folder")
    manifest: str = param("data/samples/manifest.csv", help="labelled manifest whose tracks are embedded")
    features: str = param("data/features.zarr", help="feature store to reuse; missing tracks are computed from audio")
    out: str = param("data/embeddings/pretrained.zarr", help="embeddings store (read by `mirkit probe`)")
    layer: int = param(-1, ge=-1, help="-1 = last block after the final norm; 0 = block input; 1..depth")
    pooling: str | None = param(None, choices=POOLINGS, help="null = the model's default pooling")
    frames: bool = param(True, help="also store per-frame embeddings at the model's native rate")
    min_tail: float = param(MIN_TAIL, ge=0.0, le=1.0,
                            help="a remainder of at least this share of a window adds an end-aligned chunk")
    batch_size: int = param(32, ge=1, help="windows per forward pass")
    device: str = param("auto", choices=DEVICES)
    random_init: bool = param(False, help="same architecture, freshly initialised with `seed` (baseline)")
    seed: int = param(0, help="initialisation seed when random_init is true")


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

    def __init__(self, encoder: Encoder, config: dict[str, Any], device: torch.device,
                 model_info: dict[str, Any] | None = None):
        from mirkit.data.features import spec_from_dict
        from mirkit.models.timing import timing
        self.encoder = encoder.to(device).eval()
        for prm in self.encoder.parameters():
            prm.requires_grad_(False)
        self.config, self.device = config, device
        self.feature_set: str = config["feature_set"]
        self.spec = spec_from_dict(config["features"])
        self.window: int = int(config["window_frames"])
        from mirkit.limits import MAX_FRAMES
        if not 0 < self.window <= MAX_FRAMES:   # bounded before a window of it is allocated
            from mirkit.params import ParamsError
            raise ParamsError(f"config.json: window_frames={config['window_frames']!r}: must be in 1..{MAX_FRAMES}")
        self.frame_rate: float = self.spec.frame_rate
        self.timing = timing(encoder, config["features"], self.window)
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
            raise ValueError(f"pooling={pooling!r}: this {type(enc).__name__} supports "
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
    prov = config.get("provenance") or {}
    info = {"path": str(model_dir), "architecture": config["architecture"], "preset": config.get("preset") or "",
            "recipe": prov.get("recipe", ""), "random_init": bool(random_init), "step": config.get("step")}
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


# ------------------------------------------------------------------------------------ the stage
@dataclass
class ExtractReport:
    status: str = "created"          # created | resumed | replaced (store of another model/setting)
    n_tracks: int = 0
    skipped: int = 0                  # already in the store
    embedded: int = 0
    from_store: int = 0               # features read from the feature store
    computed: int = 0                 # features computed from audio
    chunks: int = 0
    frames: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    feature_note: str = ""
    recomputed: dict[str, int] = field(default_factory=dict)   # why features came from audio -> tracks
    dim: int = 0
    frame_rate: float | None = None

    @property
    def succeeded(self) -> int:
        return self.skipped + self.embedded


def portable_path(path: str | Path) -> str:
    """A file path as stored in an embeddings store: relative to the working directory when the file lies
    below it (DVC runs every stage from the repository root, so the store's bytes do not depend on where
    the repository is checked out), else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def track_row(track: Any, manifest_dir: Path) -> dict[str, Any]:
    """The manifest row stored with a track's embeddings: id, split, audio path, offset and label
    columns, where a label naming an existing file (beats, chords annotations) becomes a path that
    opens from the working directory (:func:`portable_path`)."""
    row: dict[str, Any] = {"track_id": track.track_id, "split": track.split, "path": portable_path(track.path),
                           "offset": float(track.offset)}
    for key, value in track.labels.items():
        if isinstance(value, str) and value.strip():
            candidate = (manifest_dir / value.strip())
            if candidate.is_file():
                value = portable_path(candidate)
        row[key] = value if value != "" else None
    return row


class FeatureSource:
    """Input features of a track: from the feature store when it holds the track with the model's
    exact spec (and an unchanged file), else computed from audio without touching the store."""

    def __init__(self, frozen: FrozenEncoder, store_url: str | None):
        from mirkit.data import store
        from mirkit.data.features import FrontEnd
        self.frozen, self.set, self.note = frozen, None, ""
        self.why: dict[str, int] = {}     # reason features were computed from audio -> tracks
        want = json.dumps(frozen.config["features"], sort_keys=True, default=str)
        if store_url:
            try:
                fs = store.open_set(store_url, frozen.feature_set)
                if json.dumps(fs.spec, sort_keys=True, default=str) == want:
                    self.set = fs
                else:
                    self.note = f"{store_url}/{frozen.feature_set} has other parameters than the model: computing from audio"
            except store.StoreError as exc:
                self.note = f"{exc}: computing from audio"
        self._front: FrontEnd | None = None

    def get(self, track: Any) -> tuple[np.ndarray, bool]:
        """``(frames, bins)`` float32 and whether they came from the store; raises AudioError."""
        from mirkit.data.store import StoreError
        if self.set is None:
            reason = "no usable feature store"
        else:
            i = self.set.index_of(track.track_id)
            if i is None:
                reason = "not in the feature store"
            elif self._unchanged(track, self.set.tracks[i].fingerprint):
                try:
                    return self.set.read(i), True
                except StoreError as exc:   # a damaged chunk: never read as data; the audio is the truth
                    self.note = f"{exc}: computing from audio"
                    reason = "damaged in the feature store"
            else:
                reason = "audio differs from what was stored"
        feats = compute_features(self.frozen, track.path, track.offset, track.duration, self)
        self.why[reason] = self.why.get(reason, 0) + 1
        return feats, False

    def shared_ids_note(self, track_ids: list[str], manifest: str) -> str:
        """A warning when the store holds features of the model's set but none of the manifest's ids."""
        if self.set is None or not track_ids or not len(self.set):
            return ""
        if any(self.set.index_of(t) is not None for t in track_ids):
            return ""
        return (f"the feature store shares no track id with {manifest} (store: {self.set.tracks[0].track_id!r}, "
                f"manifest: {track_ids[0]!r}): every track is computed from audio. Ids are paths relative to "
                f"the manifest, or to the folder given to `mirkit mels`; keep the manifest in that folder")

    @staticmethod
    def _unchanged(track: Any, stored: str) -> bool:
        from mirkit.data.audio import fingerprint
        try:
            return fingerprint(track.path, track.offset, track.duration) == stored
        except OSError:   # the audio is gone but its features are here: use them
            return True

    def front_end(self):
        from mirkit.data.features import FrontEnd
        if self._front is None:
            self._front = FrontEnd(self.frozen.spec).to(self.frozen.device)
        return self._front


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


def compute_features(frozen: FrozenEncoder, path: str | Path, offset: float, duration: float | None,
                     source: FeatureSource) -> np.ndarray:
    from mirkit.data.audio import load_audio
    wave = load_audio(path, frozen.spec.sample_rate, offset, duration)
    return features_of_wave(frozen, wave, source.front_end())


def open_writer(out: str, frames: bool, dim: int, meta: dict[str, Any], manifest_ids: set[str]):
    """The embeddings writer; a store written with other settings (or holding tracks no longer in
    the manifest) is replaced rather than mixed. Returns ``(writer, status)``."""
    import zarr

    from mirkit.eval.embeddings import EmbeddingsWriter
    status = "created"
    try:
        existing = dict(zarr.open_group(store=str(out), mode="r").attrs)
    except Exception:   # no store yet
        existing = {}
    if "committed" in existing:
        status = "resumed"
        stale = {str(t["track_id"]) for t in existing.get("tracks", [])} - manifest_ids
        if stale:
            status = "replaced"
    if status == "resumed":
        try:
            return EmbeddingsWriter(out, dim, frames=frames, flush_every=16, **meta), status
        except ValueError:
            status = "replaced"
    if status == "replaced":
        zarr.open_group(store=str(out), mode="w")
    return EmbeddingsWriter(out, dim, frames=frames, flush_every=16, **meta), status


def _shown_path(path: Path, manifest_dir: Path) -> str:
    """A track's path as the manifest names it (relative to the manifest) when possible."""
    try:
        return str(Path(path).relative_to(manifest_dir.resolve()))
    except ValueError:
        return str(path)


def run(p: ExtractParams, on_progress: Callable[[int, int, str], None] | None = None) -> ExtractReport:
    """Embed every track of ``p.manifest`` with the model in ``p.model`` into ``p.out``.

    Raises ``CheckpointError`` (bad checkpoint), ``ManifestError`` (bad manifest) or
    ``ParamsError`` (layer/pooling the model does not have) before any work.
    """
    from mirkit.data.manifest import read_manifest
    tracks = read_manifest(p.manifest)
    frozen = load_frozen(p.model, p.device, p.random_init, p.seed)
    return write_stores(frozen, tracks, p, {p.layer: p.out}, Path(p.manifest).parent, on_progress)


def write_stores(frozen: FrozenEncoder, tracks: list[Any], p: ExtractParams, outs: dict[int, str],
                 manifest_dir: Path, on_progress: Callable[[int, int, str], None] | None = None) -> ExtractReport:
    """Embed ``tracks`` into one embeddings store per layer (``outs``: layer -> store), all layers
    from the same forward passes; ``p`` gives pooling, frames, batching and the feature store.
    Each store resumes after its last committed track."""
    from mirkit.data.audio import AudioError
    try:
        layers, pooling = frozen.resolve_layers(list(outs), p.pooling)
    except ValueError as exc:
        raise ParamsError(f"extract: {exc}") from None
    dim, frame_dim, fpc = frozen.probe_shapes(layers[0], pooling)
    if p.frames and frame_dim != dim:
        raise ParamsError(f"extract.pooling={pooling}: chunk embeddings have {dim} dims but frame embeddings "
                          f"{frame_dim}; store them separately (frames=false)")
    frame_rate = frozen.frame_rate / fpc
    writers, status = {}, "created"
    ids = {t.track_id for t in tracks}
    for layer in layers:
        meta = {"layer": layer, "pooling": pooling, "model": frozen.model_info,
                "frame_rate": frame_rate if p.frames else None, "window_frames": frozen.window,
                "window_seconds": frozen.window / frozen.frame_rate, "min_tail": p.min_tail,
                "feature_set": frozen.feature_set, "timing": frozen.timing}
        writers[layer], st = open_writer(str(outs[layer]), p.frames, dim, meta, ids)
        status = st if status == "created" else status
    source = FeatureSource(frozen, p.features)
    report = ExtractReport(status=status, n_tracks=len(tracks), dim=dim, frame_rate=frame_rate if p.frames else None,
                           feature_note=source.note or source.shared_ids_note([t.track_id for t in tracks], p.manifest),
                           recomputed=source.why)
    done_in = {layer: w.done for layer, w in writers.items()}
    done = set.intersection(*done_in.values())
    todo = [t for t in tracks if t.track_id not in done]
    report.skipped = len(tracks) - len(todo)
    count = [0]

    def inputs() -> Iterator[tuple[Any, np.ndarray]]:
        for t in todo:
            try:
                feats, stored = source.get(t)
            except AudioError as exc:
                report.failures.append((_shown_path(t.path, manifest_dir), str(exc)))
                count[0] += 1
                if on_progress:
                    on_progress(count[0], len(todo), t.track_id)
                continue
            report.from_store += stored
            report.computed += not stored
            yield t, feats

    with contextlib.ExitStack() as stack:
        for w in writers.values():
            stack.enter_context(w)
        for key, emb in frozen.embed_tracks(inputs(), layers, pooling, p.frames, p.batch_size, p.min_tail):
            t: Any = key
            count[0] += 1
            if not finite_embeddings(emb):
                report.failures.append((_shown_path(t.path, manifest_dir), "embeddings contain NaN/inf "
                                        "(input outside what the model handles); not stored"))
            else:
                times = emb.frame_times + t.offset if emb.frame_times is not None else None
                for i, (layer, writer) in enumerate(writers.items()):
                    if t.track_id not in done_in[layer]:
                        writer.append(track_row(t, manifest_dir), emb.chunks[i],
                                      emb.frames[i] if emb.frames is not None else None, times)
                report.embedded += 1
                report.chunks += emb.chunks.shape[1]
                report.frames += 0 if emb.frames is None else emb.frames.shape[1]
            if on_progress:
                on_progress(count[0], len(todo), t.track_id)
    return report
