"""The embeddings store: per-chunk (and optionally per-frame) embeddings of labelled tracks.

Layout (a Zarr v3 group at a local path or an fsspec URL such as ``s3://`` or ``memory://``)::

    chunks       float32 (n_chunks_total, dim)   one row per non-overlapping crop of the model
    chunk_track  int32   (n_chunks_total,)       position of the row's track in attrs["tracks"]
    frames       float32 (n_frames_total, dim)   optional per-frame embeddings (native frame rate)
    frame_track  int32   (n_frames_total,)
    frame_time   float32 (n_frames_total,)       seconds, centre of each frame, measured from the
                                                 start of the AUDIO FILE (manifest offset included),
                                                 so annotation files (beats, chords) align directly
    attrs: tracks (manifest rows: track_id, split, label columns), dim, layer, pooling, model,
           frame_rate, timing (output frame rate, receptive field: mirkit.models.timing), committed = {"tracks", "chunks", "frames"}

Checksums: every array is written through :data:`mirkit.data.store.CHECKSUM_CODECS` (zstd + crc32c),
so a flipped byte fails its chunk's checksum on read; readers name the array and the track, and
never return NaN/inf (each read is checked finite). Stores written before checksums open with a
warning; ``mirkit verify`` says so and re-running ``extract`` into a new store adds them.

Kill safety: tracks are buffered and flushed in groups; a flush writes the array rows FIRST and
only then rewrites ``attrs["committed"]`` and ``attrs["tracks"]`` in one attrs update. Rows past the
committed counts are garbage from an interrupted flush: re-opening the writer truncates the arrays
to the committed counts and resumes after the last committed track (``writer.done``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from mirkit.errors import InputError

ROW_CHUNK = 4096   # rows per Zarr chunk of the 2-D arrays
# chunks equal to the fill value (track 0's ids) must be written: readers treat a missing chunk as damage
zarr.config.set({"array.write_empty_chunks": True})


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


class EmbeddingsError(InputError):
    """An embeddings store is missing, of another kind, or damaged."""


def _open(url: str, mode: str) -> zarr.Group:
    return zarr.open_group(store=str(url), mode=mode)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, float) and v != v:   # NaN (empty CSV cell) -> null
            v = None
        out[str(k)] = v
    return out


class EmbeddingsWriter:
    """Append tracks to an embeddings store; resumes a store left by an interrupted run.

    ``meta`` holds the store attrs besides ``tracks`` (``layer``, ``pooling``, ``model``,
    ``frame_rate``); on resume they must match what the store already holds.
    """

    def __init__(self, url: str, dim: int, *, frames: bool = False, flush_every: int = 64, fresh: bool = False,
                 **meta: Any) -> None:
        """``fresh``: start over in place (arrays and attrs replaced; the folder itself, with the
        writer lock file a caller may hold in it, stays)."""
        self.url, self.dim, self.with_frames, self.flush_every = str(url), int(dim), frames, flush_every
        self.group = _open(self.url, "a")
        attrs = dict(self.group.attrs)
        if "committed" in attrs and not fresh:
            self._resume(attrs, meta)
        else:
            self._create(meta)
        self._buffer: list[tuple[dict, np.ndarray, np.ndarray | None, np.ndarray | None]] = []

    # -- set-up ---------------------------------------------------------------------------------
    def _create(self, meta: dict[str, Any]) -> None:
        """A fresh store in place: the commit point first (nothing committed), then every array
        replaced, then the new attrs as a whole (nothing of an older store's attrs survives)."""
        from mirkit.data.store import CHECKSUM_CODECS
        g = self.group
        if "committed" in g.attrs:
            g.attrs.update({"committed": {"tracks": 0, "chunks": 0, "frames": 0}, "tracks": []})
        for name in list(g.array_keys()):
            del g[name]
        arrays = [("chunks", 2, "float32"), ("chunk_track", 1, "int32")]
        if self.with_frames:
            arrays += [("frames", 2, "float32"), ("frame_track", 1, "int32"), ("frame_time", 1, "float32")]
        for name, ndim, dtype in arrays:
            shape, chunks = ((0, self.dim), (ROW_CHUNK, self.dim)) if ndim == 2 else ((0,), (ROW_CHUNK * 16,))
            g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=CHECKSUM_CODECS)
        self.tracks: list[dict] = []
        self.n_chunks = self.n_frames = 0
        g.attrs.put({**meta, "dim": self.dim, "tracks": [],
                     "committed": {"tracks": 0, "chunks": 0, "frames": 0}})

    def _resume(self, attrs: dict[str, Any], meta: dict[str, Any]) -> None:
        if attrs.get("dim") != self.dim:
            raise EmbeddingsError(f"{self.url}: store has dim {attrs.get('dim')}, writer was asked for {self.dim}")
        for key, value in meta.items():
            if key in attrs and attrs[key] != _roundtrip(value):
                raise EmbeddingsError(f"{self.url}: attr '{key}' is {attrs[key]!r} in the store, "
                                 f"{value!r} now; write to a new store")
        if self.with_frames != ("frames" in self.group):
            raise EmbeddingsError(f"{self.url}: frames={'frames' in self.group} in the store, {self.with_frames} now")
        committed = attrs["committed"]
        self.tracks = list(attrs["tracks"])[: committed["tracks"]]
        self.n_chunks, self.n_frames = committed["chunks"], committed["frames"]
        # drop rows written by a flush that never committed
        self.group["chunks"].resize((self.n_chunks, self.dim))
        self.group["chunk_track"].resize((self.n_chunks,))
        if self.with_frames:
            self.group["frames"].resize((self.n_frames, self.dim))
            self.group["frame_track"].resize((self.n_frames,))
            self.group["frame_time"].resize((self.n_frames,))

    @property
    def done(self) -> set[str]:
        """Track ids already committed (skip them when resuming)."""
        return {str(t["track_id"]) for t in self.tracks}

    # -- appending ------------------------------------------------------------------------------
    def append(self, track: dict[str, Any], chunks: np.ndarray, frames: np.ndarray | None = None,
               frame_times: np.ndarray | None = None) -> None:
        """Buffer one track: ``chunks`` (n_chunks, dim), optional ``frames`` (n_frames, dim) + times."""
        if "track_id" not in track:
            raise ValueError("track row needs a 'track_id'")
        chunks = np.asarray(chunks, dtype=np.float32).reshape(-1, self.dim)
        if not np.isfinite(chunks).all() or (frames is not None and not np.isfinite(frames).all()):
            raise EmbeddingsError(f"track {track['track_id']}: embeddings contain NaN/inf; not stored")
        if self.with_frames:
            if frames is None or frame_times is None:
                raise ValueError(f"track {track['track_id']}: this store keeps frames; pass frames and frame_times")
            frames = np.asarray(frames, dtype=np.float32).reshape(-1, self.dim)
            frame_times = np.asarray(frame_times, dtype=np.float32).reshape(-1)
            if len(frames) != len(frame_times):
                raise ValueError(f"track {track['track_id']}: {len(frames)} frames but {len(frame_times)} times")
        self._buffer.append((_jsonable(track), chunks, frames if self.with_frames else None,
                             frame_times if self.with_frames else None))
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows, then commit the track list (the commit point)."""
        if not self._buffer:
            return
        g, first = self.group, len(self.tracks)
        chunk_rows = np.concatenate([b[1] for b in self._buffer])
        chunk_ids = np.concatenate([np.full(len(b[1]), first + i, np.int32) for i, b in enumerate(self._buffer)])
        n0, n1 = self.n_chunks, self.n_chunks + len(chunk_rows)
        g["chunks"].resize((n1, self.dim))
        g["chunk_track"].resize((n1,))
        g["chunks"][n0:n1] = chunk_rows
        g["chunk_track"][n0:n1] = chunk_ids
        f1 = self.n_frames
        if self.with_frames:
            per_track = [(b[2], b[3]) for b in self._buffer if b[2] is not None and b[3] is not None]
            frame_rows = np.concatenate([f for f, _ in per_track])
            frame_ids = np.concatenate([np.full(len(f), first + i, np.int32) for i, (f, _) in enumerate(per_track)])
            times = np.concatenate([t for _, t in per_track])
            f0, f1 = self.n_frames, self.n_frames + len(frame_rows)
            for name, size in (("frames", (f1, self.dim)), ("frame_track", (f1,)), ("frame_time", (f1,))):
                g[name].resize(size)
            g["frames"][f0:f1] = frame_rows
            g["frame_track"][f0:f1] = frame_ids
            g["frame_time"][f0:f1] = times
        self._commit(self.tracks + [b[0] for b in self._buffer], n1, f1)
        self.tracks.extend(b[0] for b in self._buffer)
        self.n_chunks, self.n_frames = n1, f1
        self._buffer.clear()

    def _commit(self, tracks: list[dict], n_chunks: int, n_frames: int) -> None:
        """The commit point: one attrs write makes the new rows visible."""
        self.group.attrs.update({"tracks": tracks,
                                 "committed": {"tracks": len(tracks), "chunks": n_chunks, "frames": n_frames}})

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> EmbeddingsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _roundtrip(value: Any) -> Any:
    import json
    return json.loads(json.dumps(value))


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def scan(emb: Embeddings, block: int = 65536) -> list[str]:
    """Full check of an opened store: decode every committed row (each chunk's checksum verified);
    values must be finite. Each problem names the array and the track(s) hit."""
    arrays = [("chunks", emb._n_chunks, emb._chunk_track)]
    if emb.has_frames:
        arrays += [("frames", emb._n_frames, emb._frame_track), ("frame_time", emb._n_frames, emb._frame_track)]
    return [problem for key, n, owner in arrays for problem in scan_array(emb, key, n, owner, block)]


def scan_array(emb: Embeddings, key: str, n: int, track_of_row: np.ndarray, block: int = 65536) -> list[str]:
    """Problems of the first ``n`` rows of one array, chunk by chunk where a block fails."""
    from mirkit.data.store import decode_problem

    def tracks(rows: np.ndarray) -> str:
        ids = [str(emb.tracks[t].get("track_id")) for t in np.unique(track_of_row[rows])]
        return ", ".join(repr(t) for t in ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")

    arr, problems = emb.group[key], []
    per = arr.chunks[0]
    block = max(per, block - block % per)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        try:
            x = np.asarray(arr[lo:hi])
        except Exception:  # noqa: BLE001 - narrowed down chunk by chunk
            for a in range(lo, hi, per):
                b = min(a + per, hi)
                try:
                    np.asarray(arr[a:b])
                except Exception as exc:  # noqa: BLE001 - every decoding failure is a finding
                    problems.append(f"'{key}' rows {a}..{b} of track(s) {tracks(np.arange(a, b))} unreadable "
                                    f"({decode_problem(exc)})")
            continue
        bad = ~np.isfinite(x)
        if bad.any():
            rows = lo + np.nonzero(bad.reshape(len(x), -1).any(axis=1))[0]
            problems.append(f"'{key}' of track(s) {tracks(rows)}: "
                            f"{int(bad.sum())} NaN/inf value(s)")
    return problems


def _offsets(track_of_row: np.ndarray, n_tracks: int) -> np.ndarray:
    counts = np.bincount(track_of_row, minlength=n_tracks)
    return np.concatenate([[0], np.cumsum(counts)])


class Embeddings:
    """Read-only view of an embeddings store (only committed tracks are visible)."""

    def __init__(self, url: str) -> None:
        self.url = str(url)
        from mirkit.data.store import metadata_checked
        with metadata_checked(self.url, EmbeddingsError):
            self._open()

    def _open(self) -> None:
        try:
            self.group = _open(self.url, "r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise EmbeddingsError(f"{self.url}: no embeddings store here") from None
        attrs = dict(self.group.attrs)
        if "committed" not in attrs:
            raise EmbeddingsError(f"{self.url}: not an embeddings store (no 'committed' attr)")
        self.attrs = attrs
        try:
            committed = attrs["committed"]
            n_tracks, n_chunks, n_frames = (_count(committed[k]) for k in ("tracks", "chunks", "frames"))
            self.tracks: list[dict[str, Any]] = list(attrs["tracks"])[:n_tracks]
            self.dim: int = _count(attrs["dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingsError(f"{self.url}: damaged attributes ({exc.__class__.__name__}: {exc}); "
                                  f"re-run `mirkit extract`") from None
        if len(self.tracks) != n_tracks:
            raise EmbeddingsError(f"{self.url}: damaged: committed {n_tracks} tracks but lists {len(self.tracks)}")
        self.layer = attrs.get("layer")
        self.pooling = attrs.get("pooling")
        self.model = attrs.get("model")
        self.frame_rate = attrs.get("frame_rate")
        self._n_chunks, self._n_frames = n_chunks, n_frames
        self.has_frames = "frames" in self.group
        self._chunk_track = self._index("chunks", "chunk_track", n_chunks)
        self._chunk_off = _offsets(self._chunk_track, len(self.tracks))
        if self.has_frames:
            self._frame_track = self._index("frames", "frame_track", n_frames, "frame_time")
            self._frame_off = _offsets(self._frame_track, len(self.tracks))
        from mirkit.data.store import warn_unchecked
        self.checksums = not warn_unchecked(self.url, ((k, self.group[k]) for k in self.group.array_keys()))
        self._chunks_cache: np.ndarray | None = None
        self._frames_cache: tuple[np.ndarray, np.ndarray] | None = None

    def _index(self, rows: str, owner: str, n: int, *more: str) -> np.ndarray:
        """The track of each of the first ``n`` rows, after checking the arrays hold them (every chunk
        file present: a missing one would read as zeros) and that each track owns a run of rows."""
        from mirkit.data.store import missing_chunks
        g = self.group
        for key in (rows, owner, *more):
            if key not in g:
                raise EmbeddingsError(f"{self.url}: damaged: array '{key}' missing")
            if g[key].shape[0] < n or (g[key].ndim == 2 and g[key].shape[1] != self.dim):
                raise EmbeddingsError(f"{self.url}: damaged: '{key}' has shape {g[key].shape}, committed {n} rows "
                                      f"of dim {self.dim}")
            gone = missing_chunks(g[key], n)
            if gone:
                raise EmbeddingsError(f"{self.url}: damaged: {len(gone)} chunk file(s) of '{key}' missing "
                                      f"(first: {gone[0]}); re-run `mirkit extract` into a new store")
        try:
            track = np.asarray(g[owner][:n])
        except Exception as exc:
            raise EmbeddingsError(f"{self.url}: '{owner}' unreadable ({exc.__class__.__name__}: {exc})") from None
        if n and (track.min() < 0 or track.max() >= len(self.tracks) or (np.diff(track) < 0).any()):
            raise EmbeddingsError(f"{self.url}: damaged: '{owner}' does not map rows to tracks 0..{len(self.tracks) - 1} "
                                  f"in order")
        return track

    def __len__(self) -> int:
        return len(self.tracks)

    def split(self, name: str) -> list[int]:
        """Positions of the tracks whose manifest ``split`` is ``name``."""
        return [i for i, t in enumerate(self.tracks) if t.get("split") == name]

    def _get(self, key: str, a: int, b: int, what: str) -> np.ndarray:
        """Rows ``[a, b)`` of an array, decoded (checksums verified) and finite, else an
        :class:`EmbeddingsError` naming the array and ``what`` (the track)."""
        from mirkit.data.store import decode_problem
        try:
            x = np.asarray(self.group[key][a:b])
        except Exception as exc:  # noqa: BLE001 - zarr and its codecs raise many types for a damaged chunk
            raise EmbeddingsError(f"{self.url}: '{key}' of {what} unreadable ({decode_problem(exc)}); "
                                  f"run `mirkit verify {self.url}` and re-run `mirkit extract`") from None
        if not np.isfinite(x).all():
            raise EmbeddingsError(f"{self.url}: '{key}' of {what}: {int((~np.isfinite(x)).sum())} NaN/inf value(s) "
                                  f"in the store (damaged); re-run `mirkit extract`")
        return x

    def _track_name(self, i: int) -> str:
        return f"track {self.tracks[i].get('track_id')!r}"

    def chunks(self, i: int) -> np.ndarray:
        """``(n_chunks, dim)`` embeddings of track ``i``."""
        a, b = self._chunk_off[i], self._chunk_off[i + 1]
        return self._get("chunks", a, b, self._track_name(i))

    def frames(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n_frames, dim)`` per-frame embeddings of track ``i`` and their times (seconds)."""
        if not self.has_frames:
            raise EmbeddingsError(f"{self.url}: this store has no per-frame embeddings")
        a, b = self._frame_off[i], self._frame_off[i + 1]
        if self._frames_cache is not None:
            return self._frames_cache[0][a:b], self._frames_cache[1][a:b]
        return self._get("frames", a, b, self._track_name(i)), self._get("frame_time", a, b, self._track_name(i))

    def _rows_of(self, key: str, n: int, track_of_row: np.ndarray) -> np.ndarray:
        """All ``n`` committed rows of an array; a failure is narrowed to the track(s) it hits."""
        try:
            return self._get(key, 0, n, "all tracks")
        except EmbeddingsError:
            for problem in scan_array(self, key, n, track_of_row):
                raise EmbeddingsError(f"{self.url}: {problem}; re-run `mirkit extract`") from None
            raise

    def load_frames(self) -> None:
        """Read all per-frame embeddings into memory once (two reads instead of two per track);
        later :meth:`frames` calls slice them."""
        if self.has_frames and self._frames_cache is None:
            self._frames_cache = (self._rows_of("frames", self._n_frames, self._frame_track),
                                  self._rows_of("frame_time", self._n_frames, self._frame_track))

    def chunk_rows(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """All chunks of the given tracks at once: ``(rows, dim)`` and the row -> position in
        ``indices`` map (what late fusion averages over). Reads the chunk array once."""
        if self._chunks_cache is None:
            self._chunks_cache = self._rows_of("chunks", self._n_chunks, self._chunk_track)
        idx = np.asarray(list(indices), dtype=np.int64)
        pos = np.full(len(self.tracks), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        mask = pos[self._chunk_track] >= 0
        return self._chunks_cache[mask], pos[self._chunk_track[mask]]

