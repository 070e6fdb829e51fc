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

Writers (docs/reliability.md): one process writes a store at a time. :func:`writer_lock` holds an
exclusive ``flock`` on ``<store>/.mirkit-writer.lock`` (holder pid, host and start time inside); a
second stage run on the same store refuses at once with a :class:`StoreBusy` naming the holder, and
single calls (:func:`create_or_open`, :meth:`FrameSet.append`, :func:`delete_set`) wait a little for
it. The kernel drops the lock when its holder dies, so a lock left by ``kill -9`` is recovered by
the next writer. Appends re-read the commit point from disk under the lock (never in-memory counts).
Stores at non-local URLs (``s3://``, ``memory://``) are not locked: write them with one process per
shard store (``--shard i/n``).

Readers verify what they open (:meth:`FrameSet._verify_index`): the index against the arrays'
shapes, start offsets, and that every chunk holding committed rows exists (a deleted chunk would
otherwise read as the fill value, zeros). :func:`scan_set` decodes everything (``mirkit verify``).

Checksums (docs/reliability.md): every chunk of every array is written through
:data:`CHECKSUM_CODECS`, Zarr v3's ``crc32c`` codec after ``zstd`` (the codec of the Zarr v3 spec;
shard indexes carry their own crc32c). A flipped byte fails the checksum when the chunk is decoded,
which happens on every read, so readers and ``mirkit verify`` report it naming the set, the array and
the tracks the chunk holds. Float frames are also checked finite on every read (a NaN never leaves
the store). Sets written before checksums open with a warning (:func:`checksummed`): ``mirkit
verify`` says so, and rebuilding them (delete the set, re-run the stage) adds them.

Scale-out (docs/architecture.md, "Scale-out"): a folder holding the shard stores ``shard-<i>-of-<n>.zarr`` (and no
set of its own) reads as one store: :func:`open_set` returns a :class:`ShardedSet` that concatenates
the shards in shard order. :func:`shard_of` decides which shard a track belongs to.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import socket
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from mirkit.errors import InputError

FORMAT = "mirkit.frames/1"
_INDEX_STR = ("track_id", "source", "fingerprint")
_INDEX_INT = ("start", "n_frames")

warnings.filterwarnings("ignore", message=".*(not part of the Zarr format 3|vlen-utf8|StringDType|VariableLengthUTF8).*")
warnings.filterwarnings("ignore", message=r".*\.mirkit-writer\.lock is not recognized.*")   # our lock file
# a chunk equal to the fill value must still be written: readers treat a missing chunk as damage
zarr.config.set({"array.write_empty_chunks": True})

#: the compressors of every mirkit array: zstd (Zarr's default) then a crc32c checksum of the stored bytes
CHECKSUM_CODECS = (ZstdCodec(level=0), Crc32cCodec())

LOCK_FILE = ".mirkit-writer.lock"
#: seconds a single store call waits for another writer before giving up
LOCK_WAIT = 30.0


class StoreError(InputError):
    """A store or set is missing, unreadable, damaged or of an unexpected format."""


class StoreBusy(StoreError):
    """Another process is writing the store."""


def checksummed(arr: zarr.Array) -> bool:
    """Whether the chunks of ``arr`` carry a crc32c checksum (arrays written before mirkit stored
    checksums do not; inside a shard the per-chunk codecs are what counts)."""
    return any(isinstance(c, Crc32cCodec) for c in arr.compressors)


_WARNED: set[str] = set()


def warn_unchecked(where: str, arrays: Iterable[tuple[str, zarr.Array]]) -> list[str]:
    """Names of the arrays without checksums; warns once per ``where`` when there are any."""
    bare = [k for k, a in arrays if not checksummed(a)]
    if bare and where not in _WARNED:
        _WARNED.add(where)
        warnings.warn(f"{where}: written without chunk checksums ({', '.join(bare)}): a flipped byte cannot be "
                      f"detected; rebuild it (delete it and re-run the stage) to add them", stacklevel=3)
    return bare


def decode_problem(exc: Exception) -> str:
    """A short reason for a chunk that failed to decode."""
    text = f"{exc.__class__.__name__}: {exc}"
    if "checksum" in str(exc).lower():
        return f"checksum mismatch, the stored bytes changed ({text})"
    return text


# -- the writer lock -------------------------------------------------------------------------------
_HELD: dict[str, list[int]] = {}   # resolved store path -> [fd, depth, pid]


def broken_metadata(url: str) -> str | None:
    """The first ``zarr.json`` under a local store that is not a valid Zarr v3 document, with the reason
    (None when every one parses, or the store is not local). Zarr reads these files lazily and raises
    JSON or validation errors that name no file; this names it."""
    from zarr.core.metadata.v3 import ArrayV3Metadata
    root = _local_path(url)
    if root is None or not root.is_dir():
        return None
    for path in sorted(root.rglob("zarr.json")):
        try:
            doc = json.loads(path.read_bytes())
            if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") not in ("array", "group"):
                raise ValueError("not a Zarr v3 array or group document")
            if doc["node_type"] == "array":
                ArrayV3Metadata.from_dict(dict(doc))
        except Exception as exc:  # noqa: BLE001 - any failure to parse is the damage being reported
            return f"{path}: damaged Zarr metadata ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})"
    return None


@contextmanager
def metadata_checked(url: str, error: type[InputError] | None = None) -> Iterator[None]:
    """Turn the error zarr raises on a garbage ``zarr.json`` (JSON, validation, type errors) into one
    :class:`StoreError` (or ``error``) naming the file; any other failure propagates unchanged."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError):
        reason = broken_metadata(url)
        if reason is None:
            raise
        raise (error or StoreError)(f"{reason}; restore it, or delete the store and re-run") from None


def _local_path(url: str) -> Path | None:
    url = str(url)
    url = url.removeprefix("file://")
    return None if "://" in url else Path(url)


def lock_holder(url: str) -> dict[str, Any] | None:
    """What the lock file of a store says about its writer (None when there is none)."""
    root = _local_path(url)
    try:
        text = (root / LOCK_FILE).read_text() if root is not None else ""
    except OSError:
        return None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None


def _acquire(root: Path, url: str, wait: float) -> int:
    if root.exists() and not root.is_dir():
        raise StoreError(f"{url}: exists and is a file, not a store folder; pass a folder path (e.g. features.zarr)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{url}: cannot create the store folder ({exc.strerror})") from None
    path = root / LOCK_FILE
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                h = lock_holder(url) or {}
                raise StoreBusy(f"{url}: another mirkit process is writing this store (pid {h.get('pid', '?')} on "
                                f"{h.get('host', '?')}, since {h.get('since', '?')}); wait for it to finish, or write "
                                f"in parallel with --shard i/n (one store per shard)") from None
            time.sleep(0.05)
            continue
        try:   # the previous holder may have removed the file between our open and our flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        # a non-empty file here was left by a killed writer: the kernel released its flock, we take over
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd


@contextmanager
def writer_lock(url: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the store's writer lock (re-entrant within a process); raises :class:`StoreBusy` when
    another process still holds it after ``wait`` seconds. A no-op for non-local URLs."""
    root = _local_path(url)
    if root is None:
        yield
        return
    key = str(root.resolve())
    held = _HELD.get(key)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    fd = _acquire(root, str(url), wait)
    _HELD[key] = [fd, 1, os.getpid()]
    try:
        yield
    finally:
        del _HELD[key]
        try:
            (root / LOCK_FILE).unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


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
        with metadata_checked(url):
            return zarr.open_group(str(url), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{url}: no Zarr store here ({exc.__class__.__name__})") from None


class _TrackIndex:
    """Lookups shared by single and sharded sets (``tracks``, ``_by_id`` and ``attrs`` are set by them)."""

    tracks: list[TrackRecord]
    attrs: dict[str, Any]
    _by_id: dict[str, int]

    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def total_frames(self) -> int:
        return int(self.attrs["total_frames"])

    def n_frames(self, track: int) -> int:
        return self.tracks[track].n_frames

    def index_of(self, track_id: str) -> int | None:
        return self._by_id.get(track_id)


class FrameSet(_TrackIndex):
    """One named set: random access to each track's ``(n_frames, n_bins)`` frames.

    Implements the ``CropSource`` protocol of :mod:`mirkit.recipes.base`. Picklable (it reopens
    the store lazily), so DataLoader workers can share it.
    """

    def __init__(self, url: str, name: str, mode: str = "r"):
        self.url, self.name, self.mode = str(url), name, mode
        self._group: Any = None   # zarr.Group once opened
        with metadata_checked(self.url):
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
        where = f"{self.url}/{self.name}"
        try:
            self.spec: dict[str, Any] = dict(attrs["spec"])
            self.n_bins: int = _count(attrs["n_bins"], "n_bins", where, positive=True)
            self.frame_rate: float = float(attrs["frame_rate"])
            n = _count(attrs["n_tracks"], "n_tracks", where)
            total = _count(attrs["total_frames"], "total_frames", where)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: damaged attributes ({exc.__class__.__name__}: {exc}); "
                             f"run `mirkit verify {self.url}`") from None
        g = self._group
        missing = [k for k in ("frames",) + _INDEX_STR + _INDEX_INT if k not in g]
        if missing:
            raise StoreError(f"{where}: damaged: array(s) {', '.join(missing)} missing "
                             f"(an interrupted creation or a deleted folder); delete the set and re-run")
        self._frames = g["frames"]
        self._verify_shapes(n, total)
        self.checksums = not warn_unchecked(where, ((k, g[k]) for k in ("frames",) + _INDEX_STR + _INDEX_INT))
        if n:
            cols = {k: _read(g[k], 0, n, f"{where}: damaged index: '{k}'", self.url) for k in _INDEX_STR + _INDEX_INT}
            self.tracks = [TrackRecord(str(cols["track_id"][i]), str(cols["source"][i]), str(cols["fingerprint"][i]),
                                       int(cols["start"][i]), int(cols["n_frames"][i])) for i in range(n)]
            _verify_index(where, cols, total)
        else:
            self.tracks = []
        self._by_id = {t.track_id: i for i, t in enumerate(self.tracks)}
        self._cache: np.ndarray | None = None
        self._track_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._track_budget = self._track_bytes = 0

    def _verify_shapes(self, n: int, total: int) -> None:
        """The cheap checks on open: the commit point against the arrays, and every chunk that holds
        committed rows present (a missing one would read as zeros)."""
        where, g = f"{self.url}/{self.name}", self._group
        shape = self._frames.shape
        if len(shape) != 2 or shape[1] != self.n_bins:
            raise StoreError(f"{where}: damaged: frames array of shape {shape} in a set of {self.n_bins} bins")
        if shape[0] < total:
            raise StoreError(f"{where}: damaged: total_frames={total} but the frames array holds {shape[0]} rows")
        for key in _INDEX_STR + _INDEX_INT:
            if g[key].shape[0] < n:
                raise StoreError(f"{where}: damaged: n_tracks={n} but the '{key}' array holds {g[key].shape[0]} rows")
        for key, rows in (("frames", total), *((k, n) for k in _INDEX_STR + _INDEX_INT)):
            gone = missing_chunks(g[key], rows)
            if gone:
                raise StoreError(f"{where}: damaged: {len(gone)} chunk file(s) of '{key}' missing "
                                 f"(first: {gone[0]}); they would read as zeros. Re-create the set "
                                 f"(delete it and re-run the stage)")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = state["_frames"] = None
        state["_track_cache"], state["_track_bytes"] = OrderedDict(), 0   # each process fills its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._cache is None:
            self._frames = open_root(self.url, "r")[self.name]["frames"]

    # -- CropSource --------------------------------------------------------------------------
    def read(self, track: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Frames ``[start, start+length)`` of a track; zero rows where the range leaves the track."""
        rec = self.tracks[track]
        length = rec.n_frames - start if length is None else length
        out_dtype = np.int32 if np.issubdtype(self._frames.dtype, np.integer) else np.float32
        out = np.zeros((max(length, 0), self.n_bins), dtype=out_dtype)
        lo, hi = max(start, 0), min(start + length, rec.n_frames)
        if hi > lo:
            if self._cache is not None:
                out[lo - start: hi - start] = self._cache[rec.start + lo: rec.start + hi]
            elif self._track_budget:
                out[lo - start: hi - start] = self._cached_track(track)[lo:hi]
            else:
                out[lo - start: hi - start] = self._rows(rec.start + lo, rec.start + hi, rec.track_id)
        return out

    def cache_tracks(self, max_bytes: int) -> FrameSet:
        """Keep recently read tracks in RAM, least recently used out first, at most ``max_bytes``
        (0 turns it off). A Zarr call costs ~2 ms whatever its size, so reading a whole track once
        and slicing every later crop of it (the views of one example, later epochs) is much cheaper;
        a set smaller than the budget ends up entirely in RAM after one epoch."""
        self._track_cache, self._track_bytes, self._track_budget = OrderedDict(), 0, int(max_bytes)
        return self

    def _cached_track(self, track: int) -> np.ndarray:
        hit = self._track_cache.get(track)
        if hit is not None:
            self._track_cache.move_to_end(track)
            return hit
        rec = self.tracks[track]
        frames = self._rows(rec.start, rec.start + rec.n_frames, rec.track_id)
        if frames.nbytes <= self._track_budget // 4:   # a very long track is read, not cached
            self._track_cache[track] = frames
            self._track_bytes += frames.nbytes
            while self._track_bytes > self._track_budget:
                _, old = self._track_cache.popitem(last=False)
                self._track_bytes -= old.nbytes
        return frames

    def load_into_memory(self) -> FrameSet:
        """Read all committed frames once (for small stores and training speed)."""
        self._cache = self._rows(0, self.total_frames)
        return self

    def iter_frames(self, block: int = 65536) -> Iterable[np.ndarray]:
        """All committed frames in blocks (for statistics over the whole set)."""
        for lo in range(0, self.total_frames, block):
            yield self._rows(lo, min(lo + block, self.total_frames))

    def _rows(self, lo: int, hi: int, track_id: str | None = None) -> np.ndarray:
        what = f"frames of track {track_id!r}" if track_id is not None else f"frames {lo}..{hi}"
        where = f"{self.url}/{self.name}: {what}"
        rows = _read(self._frames, lo, hi, where, self.url)
        if np.issubdtype(rows.dtype, np.floating) and not np.isfinite(rows).all():   # never hand out a NaN
            if track_id is None:
                what = f"frames {lo}..{hi} ({', '.join(repr(t) for t in self.tracks_in(lo, hi)[:3])})"
                where = f"{self.url}/{self.name}: {what}"
            raise StoreError(f"{where}: {int((~np.isfinite(rows)).sum())} NaN/inf value(s) in the store (damaged); "
                             f"run `mirkit verify {self.url}`")
        return rows

    def tracks_in(self, lo: int, hi: int) -> list[str]:
        """Ids of the tracks holding any of the frames ``[lo, hi)``."""
        starts = np.fromiter((t.start for t in self.tracks), np.int64, len(self.tracks))
        first = max(int(np.searchsorted(starts, lo, side="right")) - 1, 0)
        return [t.track_id for t in self.tracks[first:] if t.start < hi and t.start + t.n_frames > lo]

    # -- writing -----------------------------------------------------------------------------
    def append(self, items: Sequence[tuple[str, str, str, np.ndarray]]) -> None:
        """Append tracks ``(track_id, source, fingerprint, frames (n, n_bins))`` and commit them."""
        if self.mode == "r":
            raise StoreError(f"{self.url}/{self.name}: opened read-only")
        if not items:
            return
        with writer_lock(self.url, wait=LOCK_WAIT):
            self._sync()
            self._append(items)

    def _sync(self) -> None:
        """Reload the index when another writer moved the commit point since we read it."""
        attrs = dict(open_root(self.url, "r")[self.name].attrs)
        if (attrs.get("n_tracks"), attrs.get("total_frames")) != (len(self.tracks), self.total_frames):
            self._load()

    def _append(self, items: Sequence[tuple[str, str, str, np.ndarray]]) -> None:
        g = self._group
        n0, f0 = len(self.tracks), self.total_frames
        sizes = [int(f.shape[0]) for *_, f in items]
        seen = set()
        for tid, _, _, f in items:
            if f.ndim != 2 or f.shape[1] != self.n_bins:
                raise StoreError(f"{tid}: frames of shape {f.shape} do not fit a set of {self.n_bins} bins")
            if tid in self._by_id or tid in seen:
                raise StoreError(f"{self.url}/{self.name}: track {tid!r} is already stored")
            seen.add(tid)
        frames = np.concatenate([f for *_, f in items]).astype(self._frames.dtype, copy=False)
        if np.issubdtype(frames.dtype, np.floating) and not np.isfinite(frames).all():
            bad = next(tid for tid, _, _, f in items if not np.isfinite(f.astype(frames.dtype)).all())
            raise StoreError(f"{self.url}/{self.name}: frames of track {bad!r} are not finite as {frames.dtype}")
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
        """Drop whatever a killed run wrote past the commit point (call with the writer lock held)."""
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
    with writer_lock(url, wait=LOCK_WAIT):
        return _create_or_open(url, name, spec, n_bins, frame_rate, dtype, chunk_frames, shard_chunks, attrs)


def _create_or_open(url: str, name: str, spec: dict[str, Any], n_bins: int, frame_rate: float, dtype: str,
                    chunk_frames: int, shard_chunks: int, attrs: dict[str, Any] | None) -> tuple[FrameSet, str]:
    root = open_root(url, "a")
    status = "created"
    if name in root:
        existing = dict(root[name].attrs)
        if existing.get("format") == FORMAT and _canonical(existing.get("spec", {})) == _canonical(spec) \
                and existing.get("dtype") == dtype:
            try:
                fs = FrameSet(url, name, mode="a")
            except StoreError:
                if existing.get("n_tracks"):   # committed work: never delete it silently
                    raise
                fs = None                       # nothing committed (an interrupted creation): rebuild
            if fs is not None:
                fs.truncate_uncommitted()
                return fs, "resumed"
        del root[name]
        status = "replaced"
    g = root.create_group(name)
    g.create_array("frames", shape=(0, n_bins), dtype=dtype, chunks=(chunk_frames, n_bins),
                   shards=(chunk_frames * shard_chunks, n_bins), fill_value=0, compressors=CHECKSUM_CODECS)
    for key in _INDEX_STR:
        g.create_array(key, shape=(0,), dtype=str, chunks=(4096,), compressors=CHECKSUM_CODECS)
    for key in _INDEX_INT:
        g.create_array(key, shape=(0,), dtype="int64", chunks=(4096,), fill_value=0, compressors=CHECKSUM_CODECS)
    g.attrs.update({**(attrs or {}), "format": FORMAT, "spec": json.loads(_canonical(spec)), "n_bins": int(n_bins),
                    "frame_rate": float(frame_rate), "dtype": dtype, "n_tracks": 0, "total_frames": 0})
    return FrameSet(url, name, mode="a"), status


def delete_set(url: str, name: str) -> None:
    """Remove a set (to rebuild it from scratch)."""
    with writer_lock(url, wait=LOCK_WAIT):
        root = open_root(url, "a")
        if name in root:
            del root[name]


def _own_set_names(root: zarr.Group) -> list[str]:
    return sorted(k for k in root.group_keys() if root[k].attrs.get("format") == FORMAT)


def has_own_sets(url: str) -> bool:
    """Whether ``url`` is a Zarr store holding frame sets itself (as opposed to a shard folder)."""
    try:
        return bool(_own_set_names(open_root(url, "r")))
    except StoreError:
        return False


def set_names(url: str) -> list[str]:
    """Names of the frame sets in a store, or in any shard store of a shard folder."""
    try:
        root = open_root(url, "r")
    except StoreError:
        found = find_shards(url)
        if not found:
            raise
        return sorted({name for shards in found.values() for u in shards.values() for name in set_names(u)})
    with metadata_checked(url):
        return _own_set_names(root)


def open_set(url: str, name: str) -> FrameSet | ShardedSet:
    """Open a committed set read-only (raises :class:`StoreError` naming what is missing).

    ``url`` is a store, or a folder of shard stores written by ``mirkit mels --shard i/n``: then the
    result is a :class:`ShardedSet` with the same read API.
    """
    try:
        return FrameSet(url, name, mode="r")
    except StoreError:
        urls = complete_shards(url)  # only looked at when ``url`` is not a store of its own
        if urls is None:
            raise
    return ShardedSet(url, name, urls)


# -- verification ----------------------------------------------------------------------------------
#: attempts at decoding a chunk: Zarr rewrites local chunk files in place, so a reader racing a live
#: writer can catch a chunk half-written; a retry reads it whole. Failing every time means damage.
READ_TRIES = 3


def _read(arr: zarr.Array, lo: int, hi: int, what: str, url: str) -> np.ndarray:
    for attempt in range(READ_TRIES):
        try:
            return np.asarray(arr[lo:hi])
        except Exception as exc:  # noqa: BLE001 - zarr and its codecs raise many types for a damaged chunk
            if attempt == READ_TRIES - 1:
                raise StoreError(f"{what} unreadable ({decode_problem(exc)}); run `mirkit verify {url}`") from None
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
def _count(value: Any, key: str, where: str, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        raise StoreError(f"{where}: damaged: {key}={value!r} is not a {'positive' if positive else 'non-negative'} "
                         f"integer")
    return value


def _verify_index(where: str, cols: dict[str, np.ndarray], total: int) -> None:
    """Start offsets must be the running sum of the track lengths, ending at ``total``; ids unique."""
    sizes = np.asarray(cols["n_frames"], np.int64)
    starts = np.asarray(cols["start"], np.int64)
    expect = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    bad = np.nonzero((sizes < 0) | (starts != expect))[0]
    if len(bad):
        i = int(bad[0])
        raise StoreError(f"{where}: damaged index: track {i} ({cols['track_id'][i]!r}) has start={starts[i]}, "
                         f"n_frames={sizes[i]}; expected start={expect[i]} ({len(bad)} track(s) wrong). Re-create "
                         f"the set")
    if int(sizes.sum()) != total:
        raise StoreError(f"{where}: damaged index: the tracks hold {int(sizes.sum())} frames, total_frames={total}")
    ids = [str(t) for t in cols["track_id"]]
    if "" in ids or len(set(ids)) != len(ids):
        raise StoreError(f"{where}: damaged index: empty or repeated track ids")


def missing_chunks(arr: zarr.Array, rows: int) -> list[str]:
    """Store keys of the chunks (shards) that must hold rows ``[0, rows)`` of ``arr`` but do not exist."""
    if rows <= 0:
        return []
    from zarr.core.sync import sync
    per = (arr.shards or arr.chunks)[0]
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    prefix = arr.store_path.path
    expected = {f"{prefix}/{encode((i,) + (0,) * (arr.ndim - 1))}" for i in range(-(-rows // per))}
    store = arr.store_path.store

    async def listed() -> set[str]:
        return {k async for k in store.list_prefix(prefix + "/")}

    return sorted(expected - sync(listed()))


def scan_set(fs: FrameSet, block: int = 65536) -> list[str]:
    """Full check of an opened set: decode every committed frame (each chunk's checksum verified);
    float sets must be finite, token sets within ``[0, codebook_size)``; the index arrays decoded
    too. Returns the problems found (empty when sound), each naming the array and the tracks."""
    problems: list[str] = []
    limit = fs.attrs.get("codebook_size")
    g = fs._group
    for key in _INDEX_STR + _INDEX_INT:
        try:
            np.asarray(g[key][: len(fs)])
        except Exception as exc:  # noqa: BLE001 - every decoding failure is a finding
            problems.append(f"index array '{key}' unreadable ({decode_problem(exc)})")
    per = fs._frames.chunks[0]
    block = max(per, block - block % per)
    for lo in range(0, fs.total_frames, block):
        hi = min(lo + block, fs.total_frames)
        try:
            x = np.asarray(fs._frames[lo:hi])
        except Exception:  # noqa: BLE001 - narrowed down chunk by chunk below
            for a in range(lo, hi, per):
                b = min(a + per, hi)
                try:
                    np.asarray(fs._frames[a:b])
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"'frames' rows {a}..{b} of track(s) {_names(fs.tracks_in(a, b))} unreadable "
                                    f"({decode_problem(exc)})")
            continue
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            rows = lo + np.nonzero(~np.isfinite(x).all(axis=1))[0]
            bad = sorted({t for r in rows[:1000] for t in fs.tracks_in(int(r), int(r) + 1)})
            problems.append(f"'frames' of track(s) {_names(bad)}: {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
        elif np.issubdtype(x.dtype, np.integer) and x.size and (x.min() < 0 or (limit and x.max() >= limit)):
            problems.append(f"'frames' {lo}..{hi}: codes outside [0, {limit})")
    return problems


def _names(ids: Sequence[str]) -> str:
    return ", ".join(repr(t) for t in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


# -- shards ----------------------------------------------------------------------------------------
_SHARD_STORE = re.compile(r"^shard-(\d+)-of-(\d+)\.zarr$")


def shard_of(track_id: str, n: int) -> int:
    """The shard ``0..n-1`` of a track: SHA-1 of its id, mod ``n``.

    Stable across processes, machines and Python versions (Python's ``hash`` of a str is salted per
    process), so independent jobs agree on the partition without talking to each other.
    """
    return int.from_bytes(hashlib.sha1(track_id.encode("utf-8")).digest()[:8], "big") % n


def shard_name(i: int, n: int) -> str:
    """``shard-<i>-of-<n>``: the tag of shard ``i`` of ``n`` (store folder and file-name suffix)."""
    return f"shard-{i}-of-{n}"


def shard_url(url: str, i: int, n: int) -> str:
    """The store of shard ``i`` of ``n`` inside the folder ``url``."""
    return f"{str(url).rstrip('/')}/{shard_name(i, n)}.zarr"


def find_shards(url: str) -> dict[int, dict[int, str]]:
    """The shard stores present in the folder ``url``: ``{n: {i: store url}}`` ({} when none)."""
    import fsspec  # only needed on this path; a plain store never lists its folder

    url = str(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}
    found: dict[int, dict[int, str]] = {}
    for entry in entries:
        m = _SHARD_STORE.match(str(entry).rstrip("/").rsplit("/", 1)[-1])
        if m:
            i, n = int(m.group(1)), int(m.group(2))
            found.setdefault(n, {})[i] = shard_url(url, i, n)
    return found


def complete_shards(url: str) -> list[str] | None:
    """Store urls of all ``n`` shards of the folder ``url`` in shard order; None when it holds none.

    Raises :class:`StoreError` when shards are missing or stores of different ``n`` are mixed.
    """
    found = find_shards(url)
    if not found:
        return None
    if len(found) > 1:
        splits = ", ".join(f"{len(v)} of {n}" for n, v in sorted(found.items()))
        raise StoreError(f"{url}: shard stores of different splits ({splits}); keep one split, remove the others")
    (n, shards), = found.items()
    missing = [i for i in range(n) if i not in shards]
    if missing:
        names = ", ".join(f"{shard_name(i, n)}.zarr" for i in missing)
        raise StoreError(f"{url}: missing {len(missing)} of {n} shard store(s): {names} "
                         f"(run `mirkit mels --shard i/{n}` for each)")
    return [shards[i] for i in range(n)]


class ShardedSet(_TrackIndex):
    """Set ``name`` across the shard stores of a folder, read as one set (shards in order 0..n-1).

    Same read API as :class:`FrameSet` (the ``CropSource`` protocol plus ``tracks``, ``index_of``,
    ``iter_frames``, ``load_into_memory``); picklable. ``tracks[k].start`` counts frames in the
    concatenation, the order :meth:`iter_frames` yields them in. Read-only.
    """

    def __init__(self, url: str, name: str, shard_urls: Sequence[str]):
        self.url, self.name, self.mode = str(url), name, "r"
        self.shards = [FrameSet(u, name, mode="r") for u in shard_urls]
        n = len(self.shards)
        first = self.shards[0]
        for i, part in enumerate(self.shards):
            tag = part.attrs.get("shard")
            if tag is not None and tag != f"{i}/{n}":
                raise StoreError(f"{part.url}: holds shard {tag} by its attrs, not {i}/{n} as its name says")
            differing = sorted(k for k in first.spec.keys() | part.spec.keys() if first.spec.get(k) != part.spec.get(k))
            if part.attrs.get("dtype") != first.attrs.get("dtype"):
                differing.append("dtype")
            if differing:
                raise StoreError(f"{part.url}/{name}: computed with other parameters than {first.url}/{name} "
                                 f"(differs in {', '.join(differing)}); re-run that shard with the same parameters")
        self.spec: dict[str, Any] = first.spec
        self.n_bins: int = first.n_bins
        self.frame_rate: float = first.frame_rate
        self.tracks: list[TrackRecord] = []
        self._where: list[tuple[int, int]] = []
        offset = 0
        for k, part in enumerate(self.shards):
            self.tracks += [TrackRecord(t.track_id, t.source, t.fingerprint, offset + t.start, t.n_frames)
                            for t in part.tracks]
            self._where += [(k, j) for j in range(len(part))]
            offset += part.total_frames
        self._by_id = {t.track_id: i for i, t in enumerate(self.tracks)}
        attrs = {k: v for k, v in first.attrs.items() if k != "shard"}
        self.attrs: dict[str, Any] = {**attrs, "shards": n, "n_tracks": len(self.tracks), "total_frames": offset}

    def read(self, track: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Frames ``[start, start+length)`` of a track; zero rows where the range leaves the track."""
        k, j = self._where[track]
        return self.shards[k].read(j, start, length)

    def cache_tracks(self, max_bytes: int) -> ShardedSet:
        """Per-shard LRU track caches sharing ``max_bytes`` evenly (see :meth:`FrameSet.cache_tracks`)."""
        for part in self.shards:
            part.cache_tracks(max_bytes // len(self.shards))
        return self

    def load_into_memory(self) -> ShardedSet:
        """Read all committed frames of every shard once."""
        for part in self.shards:
            part.load_into_memory()
        return self

    def iter_frames(self, block: int = 65536) -> Iterable[np.ndarray]:
        """All committed frames, shard after shard, in blocks of at most ``block`` rows."""
        for part in self.shards:
            yield from part.iter_frames(block)
