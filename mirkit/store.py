"""Zarr v3 frame stores: features (float) and tokens (int), one layout for both.

Layout of one named set inside a store (a path or any fsspec URL such as ``memory://`` or ``s3://``)::

    <store>/<set>/frames       (total_frames, n_bins)  chunked along time, sharded
    <set>/track_id, source, fingerprint   (str, one row per track)
    <set>/start, n_frames                 (int64, one row per track)
    <set> attrs: spec (the exact parameters), n_bins, frame_rate, dtype,
                 n_tracks / total_frames   <- the commit point

Appends write frames and index rows first and move the commit point last (one atomic metadata
write), so a killed run never exposes a half-written track: on re-open everything past the commit
point is truncated away and the run continues, ending byte-equal to an uninterrupted one.
A set whose stored ``spec`` differs from the requested one is replaced, never mixed.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import zarr

FORMAT = "mirkit.frames/1"
_INDEX_STR = ("track_id", "source", "fingerprint")
_INDEX_INT = ("start", "n_frames")

warnings.filterwarnings("ignore", message=".*(not part of the Zarr format 3|vlen-utf8|StringDType|VariableLengthUTF8).*")


class StoreError(RuntimeError):
    """A store or set is missing, unreadable or of an unexpected format."""


@dataclass(frozen=True)
class TrackRecord:
    track_id: str
    source: str
    fingerprint: str
    start: int
    n_frames: int


def _canonical(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def open_root(url: str, mode: str = "r") -> zarr.Group:
    """Open (or, with mode 'a', create) the root group of a store at a path or fsspec URL."""
    try:
        return zarr.open_group(str(url), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{url}: no Zarr store here ({exc.__class__.__name__})") from None


class FrameSet:
    """One named set: random access to each track's ``(n_frames, n_bins)`` frames.

    Implements the ``CropSource`` protocol of :mod:`mirkit.recipes.base`. Picklable (it reopens
    the store lazily), so DataLoader workers can share it.
    """

    def __init__(self, url: str, name: str, mode: str = "r"):
        self.url, self.name, self.mode = str(url), name, mode
        self._group: zarr.Group | None = None
        self._load()

    # -- opening -----------------------------------------------------------------------------
    def _load(self) -> None:
        root = open_root(self.url, self.mode)
        if self.name not in root:
            raise StoreError(f"{self.url}: no set named '{self.name}' (has: {', '.join(sorted(root.group_keys())) or 'none'})")
        self._group = root[self.name]
        attrs = dict(self._group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{self.url}/{self.name}: not a mirkit frame set (format={attrs.get('format')!r})")
        self.attrs: dict[str, Any] = attrs
        self.spec: dict[str, Any] = attrs["spec"]
        self.n_bins: int = int(attrs["n_bins"])
        self.frame_rate: float = float(attrs["frame_rate"])
        n = int(attrs["n_tracks"])
        g = self._group
        if n:
            cols = {k: g[k][:n] for k in _INDEX_STR + _INDEX_INT}
            self.tracks = [TrackRecord(str(cols["track_id"][i]), str(cols["source"][i]), str(cols["fingerprint"][i]),
                                       int(cols["start"][i]), int(cols["n_frames"][i])) for i in range(n)]
        else:
            self.tracks = []
        self._by_id = {t.track_id: i for i, t in enumerate(self.tracks)}
        self._frames = g["frames"]
        self._cache: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = state["_frames"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._cache is None:
            self._frames = open_root(self.url, "r")[self.name]["frames"]

    # -- CropSource --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def total_frames(self) -> int:
        return int(self.attrs["total_frames"])

    def n_frames(self, track: int) -> int:
        return self.tracks[track].n_frames

    def index_of(self, track_id: str) -> int | None:
        return self._by_id.get(track_id)

    def read(self, track: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Frames ``[start, start+length)`` of a track; zero rows where the range leaves the track."""
        rec = self.tracks[track]
        length = rec.n_frames - start if length is None else length
        out_dtype = np.int32 if np.issubdtype(self._frames.dtype, np.integer) else np.float32
        out = np.zeros((max(length, 0), self.n_bins), dtype=out_dtype)
        lo, hi = max(start, 0), min(start + length, rec.n_frames)
        if hi > lo:
            src = self._cache if self._cache is not None else self._frames
            out[lo - start: hi - start] = src[rec.start + lo: rec.start + hi]
        return out

    def load_into_memory(self) -> "FrameSet":
        """Read all committed frames once (for small stores and training speed)."""
        self._cache = np.asarray(self._frames[: self.total_frames])
        return self

    def iter_frames(self, block: int = 65536) -> Iterable[np.ndarray]:
        """All committed frames in blocks (for statistics over the whole set)."""
        for lo in range(0, self.total_frames, block):
            yield np.asarray(self._frames[lo: min(lo + block, self.total_frames)])

    # -- writing -----------------------------------------------------------------------------
    def append(self, items: Sequence[tuple[str, str, str, np.ndarray]]) -> None:
        """Append tracks ``(track_id, source, fingerprint, frames (n, n_bins))`` and commit them."""
        if self.mode == "r":
            raise StoreError(f"{self.url}/{self.name}: opened read-only")
        if not items:
            return
        g = self._group
        n0, f0 = len(self.tracks), self.total_frames
        sizes = [int(f.shape[0]) for *_, f in items]
        for tid, _, _, f in items:
            if f.ndim != 2 or f.shape[1] != self.n_bins:
                raise StoreError(f"{tid}: frames of shape {f.shape} do not fit a set of {self.n_bins} bins")
        frames = np.concatenate([f for *_, f in items]).astype(self._frames.dtype, copy=False)
        f1, n1 = f0 + frames.shape[0], n0 + len(items)
        self._frames.resize((f1, self.n_bins))
        self._frames[f0:f1] = frames
        starts = f0 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        columns = {"track_id": [i[0] for i in items], "source": [i[1] for i in items],
                   "fingerprint": [i[2] for i in items], "start": starts, "n_frames": np.asarray(sizes, np.int64)}
        for key, values in columns.items():
            arr = g[key]
            arr.resize((n1,))
            arr[n0:n1] = np.asarray(values, dtype=arr.dtype if key in _INDEX_INT else str)
        # the commit point: one atomic metadata write
        g.attrs.update({"n_tracks": n1, "total_frames": f1})
        self.attrs.update({"n_tracks": n1, "total_frames": f1})
        for k, (tid, src, fp, _) in enumerate(items):
            self.tracks.append(TrackRecord(tid, src, fp, int(starts[k]), sizes[k]))
            self._by_id[tid] = n0 + k

    def truncate_uncommitted(self) -> None:
        """Drop whatever a killed run wrote past the commit point."""
        g = self._group
        n, f = len(self.tracks), self.total_frames
        if self._frames.shape[0] != f:
            self._frames.resize((f, self.n_bins))
        for key in _INDEX_STR + _INDEX_INT:
            if g[key].shape[0] != n:
                g[key].resize((n,))


def create_or_open(url: str, name: str, spec: dict[str, Any], n_bins: int, frame_rate: float,
                   dtype: str = "float16", chunk_frames: int = 512, shard_chunks: int = 64,
                   attrs: dict[str, Any] | None = None) -> tuple[FrameSet, str]:
    """Open set ``name`` for appending, creating it if needed.

    Returns the set and what happened: ``"created"``, ``"resumed"`` or ``"replaced"`` (the stored
    spec differed from ``spec``: the old data is deleted rather than mixed with new). ``attrs``
    are extra top-level attributes written at creation (e.g. what a reader needs at a glance).
    """
    root = open_root(url, "a")
    status = "created"
    if name in root:
        existing = dict(root[name].attrs)
        if existing.get("format") == FORMAT and _canonical(existing.get("spec", {})) == _canonical(spec) \
                and existing.get("dtype") == dtype:
            fs = FrameSet(url, name, mode="a")
            fs.truncate_uncommitted()
            return fs, "resumed"
        del root[name]
        status = "replaced"
    g = root.create_group(name)
    g.create_array("frames", shape=(0, n_bins), dtype=dtype, chunks=(chunk_frames, n_bins),
                   shards=(chunk_frames * shard_chunks, n_bins), fill_value=0)
    for key in _INDEX_STR:
        g.create_array(key, shape=(0,), dtype=str, chunks=(4096,))
    for key in _INDEX_INT:
        g.create_array(key, shape=(0,), dtype="int64", chunks=(4096,), fill_value=0)
    g.attrs.update({**(attrs or {}), "format": FORMAT, "spec": json.loads(_canonical(spec)), "n_bins": int(n_bins),
                    "frame_rate": float(frame_rate), "dtype": dtype, "n_tracks": 0, "total_frames": 0})
    return FrameSet(url, name, mode="a"), status


def delete_set(url: str, name: str) -> None:
    """Remove a set (to rebuild it from scratch)."""
    root = open_root(url, "a")
    if name in root:
        del root[name]


def set_names(url: str) -> list[str]:
    """Names of the frame sets in a store."""
    root = open_root(url, "r")
    return sorted(k for k in root.group_keys() if root[k].attrs.get("format") == FORMAT)


def open_set(url: str, name: str) -> FrameSet:
    """Open a committed set read-only (raises :class:`StoreError` naming what is missing)."""
    return FrameSet(url, name, mode="r")
