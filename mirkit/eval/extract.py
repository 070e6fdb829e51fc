"""The ``extract`` stage: embed every track of a manifest with a model folder's frozen encoder
(:mod:`mirkit.eval.encoder`, which holds the chunking rule and the frozen-mode facts) into an
embeddings store (:mod:`mirkit.eval.embeddings`), one store per layer, resuming after the last
committed track.

Input features come from the feature store when it holds a track with the model's exact feature
parameters and an unchanged audio file, else from the audio (:class:`FeatureSource`); either way
they are the values ``mirkit mels`` would have stored, so both paths give the same embeddings.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirkit.device import DEVICES
from mirkit.errors import InputError
from mirkit.eval.embeddings import track_row
from mirkit.eval.encoder import MIN_TAIL, FrozenEncoder, features_of_wave, finite_embeddings, load_frozen
from mirkit.models.base import POOLINGS
from mirkit.params import ParamsError, param


@dataclass
class ExtractParams:
    """Section ``extract`` of params.yaml."""

    model: str = param("models/pretrain", help="model folder (config.json + model.safetensors) or training run folder")
    manifest: str = param("data/samples/manifest.csv", help="labelled manifest whose tracks are embedded")
    features: str = param("data/features.zarr", help="feature store to reuse; missing tracks are computed from audio")
    out: str = param("data/embeddings/pretrained.zarr", help="embeddings store (read by `mirkit probe`)")
    layer: int | str = param(-1, help="-1 = last block after the final norm; 0 = block input; 1..depth; all = every "
                                      "layer from one forward pass: -1 in `out`, layer k in `out`/layer_k "
                                      "(`mirkit probe` then probes every layer)")
    pooling: str | None = param(None, choices=POOLINGS, help="null = the model's default pooling")
    frames: bool = param(True, help="also store per-frame embeddings at the model's native rate")
    min_tail: float = param(MIN_TAIL, ge=0.0, le=1.0,
                            help="a remainder of at least this share of a window adds an end-aligned chunk")
    batch_size: int = param(32, ge=1, help="windows per forward pass")
    device: str = param("auto", choices=DEVICES)
    random_init: bool = param(False, help="same architecture, freshly initialised with `seed` (baseline)")
    seed: int = param(0, help="initialisation seed when random_init is true")

    def check(self) -> None:
        if isinstance(self.layer, str) and self.layer != "all" or isinstance(self.layer, int) and self.layer < -1:
            raise ParamsError(f"extract.layer={self.layer!r}: give a layer number (-1 = last) or 'all'")


# ------------------------------------------------------------------------------------ the stage
@dataclass
class ExtractReport:
    status: str = "created"          # created | resumed | replaced (store of another model/setting) | repaired
    damage: str = ""                  # why a store could not be resumed and was rebuilt (status repaired)
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


class FeatureSource:
    """Input features of a track: from the feature store when it holds the track with the model's
    exact spec (and an unchanged file), else computed from audio without touching the store."""

    def __init__(self, frozen: FrozenEncoder, store_url: str | None):
        from mirkit.data import store
        from mirkit.data.features import FrontEnd
        self.frozen, self.set, self.note = frozen, None, ""
        self.why: dict[str, int] = {}     # reason features were computed from audio -> tracks
        want = json.dumps(frozen.config.features, sort_keys=True, default=str)
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


def compute_features(frozen: FrozenEncoder, path: str | Path, offset: float, duration: float | None,
                     source: FeatureSource) -> np.ndarray:
    from mirkit.data.audio import load_audio
    wave = load_audio(path, frozen.spec.sample_rate, offset, duration)
    return features_of_wave(frozen, wave, source.front_end())


def open_writer(out: str, frames: bool, dim: int, meta: dict[str, Any], manifest_ids: set[str]):
    """The embeddings writer (call it holding the store's writer lock). A store written with other
    settings (or holding tracks no longer in the manifest) is replaced rather than mixed; a store
    that fails its full check (:func:`store_damage`: index, checksums, NaN) is rebuilt, never resumed.
    Returns ``(writer, status, damage)``, status one of created / resumed / replaced / repaired."""
    import zarr

    from mirkit.eval.embeddings import EmbeddingsWriter
    status, damage = "created", ""
    try:
        existing = dict(zarr.open_group(store=str(out), mode="r").attrs)
    except Exception:   # no store yet (or no readable root: rebuilt below)  # noqa: BLE001
        existing = {}
    if "committed" in existing:
        status = "resumed"
        tracks = existing.get("tracks")
        stale = {str(t.get("track_id")) for t in tracks if isinstance(t, dict)} - manifest_ids \
            if isinstance(tracks, list) else set()
        if stale:
            status = "replaced"
    if status == "resumed":
        damage = store_damage(out)
        if damage:
            status = "repaired"
        else:
            try:
                return EmbeddingsWriter(out, dim, frames=frames, flush_every=16, **meta), status, damage
            except ValueError:
                status = "replaced"
    writer = EmbeddingsWriter(out, dim, frames=frames, flush_every=16, fresh=status != "created", **meta)
    return writer, status, damage


def store_damage(out: str) -> str:
    """Why the embeddings store ``out`` cannot be resumed ("" when it is sound): its index, every
    committed row decoded with its checksum, values finite. Costs a read of the store, far less
    than embedding it again."""
    from mirkit.errors import InputError
    from mirkit.eval.embeddings import Embeddings, scan
    try:
        problems = scan(Embeddings(out))
    except InputError as exc:
        return str(exc)
    return "; ".join(problems[:3])


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
    from mirkit.eval.layered import drop_layers, layer_url
    if p.layer == "all":   # -1 first: replacing the main store must not wipe layer stores written after it
        layers = [-1] + [k for k in frozen.resolve_layers("all", p.pooling)[0] if k != -1]
        outs = {k: layer_url(p.out, k) for k in layers}
    else:
        drop_layers(p.out)   # a single-layer store keeps no layer stores of an earlier `layer: all` run
        outs = {int(p.layer): p.out}
    return write_stores(frozen, tracks, p, outs, Path(p.manifest).parent, on_progress)


def write_stores(frozen: FrozenEncoder, tracks: list[Any], p: ExtractParams, outs: dict[int, str],
                 manifest_dir: Path, on_progress: Callable[[int, int, str], None] | None = None) -> ExtractReport:
    """Embed ``tracks`` into one embeddings store per layer (``outs``: layer -> store), all layers
    from the same forward passes; ``p`` gives pooling, frames, batching and the feature store.
    Each store resumes after its last committed track.

    Each store is written under its writer lock (:func:`mirkit.data.store.writer_lock`, as ``mels``
    holds its feature store) for the whole run: a second ``extract`` into the same store refuses at
    once with a ``StoreBusy`` naming the holder, instead of replacing or mixing into the first's work."""
    from mirkit.data.store import writer_lock
    with contextlib.ExitStack() as locks:
        for out in outs.values():
            locks.enter_context(writer_lock(str(out)))
        return _write_stores(frozen, tracks, p, outs, manifest_dir, on_progress)


def _write_stores(frozen: FrozenEncoder, tracks: list[Any], p: ExtractParams, outs: dict[int, str],
                  manifest_dir: Path, on_progress: Callable[[int, int, str], None] | None = None) -> ExtractReport:
    from mirkit.data.audio import AudioError
    try:
        layers, pooling = frozen.resolve_layers(list(outs), p.pooling)
    except InputError as exc:   # name the stage's keys
        raise ParamsError(f"extract: {exc}") from None
    dim, frame_dim, fpc = frozen.probe_shapes(layers[0], pooling)
    if p.frames and frame_dim != dim:
        raise ParamsError(f"extract.pooling={pooling}: chunk embeddings have {dim} dims but frame embeddings "
                          f"{frame_dim}; store them separately (frames=false)")
    frame_rate = frozen.frame_rate / fpc
    writers, status, damage = {}, "created", []
    ids = {t.track_id for t in tracks}
    for layer in layers:
        meta = {"layer": layer, "pooling": pooling, "model": frozen.model_info,
                "frame_rate": frame_rate if p.frames else None, "window_frames": frozen.window,
                "window_seconds": frozen.window / frozen.frame_rate, "min_tail": p.min_tail,
                "feature_set": frozen.feature_set, "timing": frozen.timing}
        writers[layer], st, why = open_writer(str(outs[layer]), p.frames, dim, meta, ids)
        status = st if status == "created" else status
        if why:
            damage.append(why)
    source = FeatureSource(frozen, p.features)
    report = ExtractReport(status=status, damage="; ".join(damage), n_tracks=len(tracks), dim=dim, frame_rate=frame_rate if p.frames else None,
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
