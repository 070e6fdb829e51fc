"""Streaming training examples from a feature store much larger than RAM (``pretrain.stream: true``).

What it does (design.md section 4; the pattern of WebDataset / Lhotse Shar / NeMo tarred datasets,
notes/anchors-scale.md, applied to mirkit's concatenated Zarr arrays instead of tar files):

* **Blocks.** The training tracks are grouped by the chunk-aligned frame range their first frame
  falls in (``block_mib`` rounded to whole Zarr shards of the frames array, so a block is read with a
  few whole-object requests: one per shard, whatever the store: a local path or an fsspec URL; a
  block smaller than a shard is rounded to whole chunks instead).
  One block read returns many tracks' frames at once; a track is never split.
* **Lanes.** The global batch of ``B`` slots is cut into ``lanes`` groups of ``B / lanes`` slots. Lane
  ``l`` owns the blocks ``l, l + lanes, l + 2 lanes, ...`` of the store and is an endless stream of its
  own: per epoch it visits its blocks in an order drawn from ``rng([seed, 2, l, epoch])``, ``buffer``
  blocks at a time (the shuffle buffer), and emits every track of those blocks once in an order
  drawn from ``rng([seed, 3, l, epoch, window])`` (``repeat`` times each, with independent crops: a
  read of a long track then feeds several examples, as Myna's two 96-frame crops of a 3-minute
  track use ~3 % of what was read). Slot ``j`` of step ``s`` is position
  ``s * B/lanes + j mod (B/lanes)`` of lane ``j // (B/lanes)``; its views come from ``rng([seed, 1, k])``
  with ``k = s*B + j``, as in the in-memory path. So the examples depend on the parameters only,
  never on the number of DDP ranks or loader workers, and a resumed run computes where every lane
  stands from the step alone (exact resume, no loader state in the checkpoint).
* **Sharding.** Lanes are dealt to DDP ranks in contiguous groups (rank ``r`` owns the lanes of its
  own slots) and, inside a rank, round-robin to loader workers; a process reads only its lanes' blocks.
* **Memory and read-ahead.** A lane holds its current window of ``buffer`` decoded blocks and reads the
  next one on a background thread while the current one is consumed; ``memory_gib`` bounds what one
  rank's loader processes hold together (checked before the first read, with a one-line error).
* Crops are cut by the recipe's own ``sample`` from the decoded blocks (a :class:`BlockSource` is a
  ``CropSource``), so every recipe streams unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from mirkit.data import store
from mirkit.params import ParamsError
from mirkit.recipes.base import Example, Recipe, Sources

MIB = 1 << 20


@dataclass(frozen=True)
class StreamSettings:
    """The streaming knobs of ``pretrain`` (names as in params.yaml, ``stream_*``)."""

    block_mib: float = 16.0     # target bytes of one block read (rounded to whole Zarr shards)
    buffer: int = 4             # blocks per lane in the shuffle buffer
    lanes: int = 8              # independent block streams the global batch is cut into
    memory_gib: float = 4.0     # bound on what one rank's loader processes hold (buffers + read-ahead)
    read_threads: int = 2       # background reader threads per loader process
    repeat: int = 1             # examples per track per pass (independent crops of one read)


# -- where a track lives ------------------------------------------------------------------------
def parts_of(src: Any) -> list[Any]:
    """The single-store sets a source is made of (the shards of a :class:`store.ShardedSet`)."""
    return list(src.shards) if isinstance(src, store.ShardedSet) else [src]


def locate(src: Any) -> list[tuple[int, int]]:
    """``(part, local track index)`` of every track of ``src``, in track order."""
    if isinstance(src, store.ShardedSet):
        return list(src._where)
    return [(0, i) for i in range(len(src))]


def object_frames(src: Any) -> int:
    """Frames per storage object of the frames array (a Zarr shard, else a chunk)."""
    arr = parts_of(src)[0]._frames
    return int((arr.shards or arr.chunks)[0])


def chunk_frames(src: Any) -> int:
    """Frames per chunk (the unit Zarr decodes) of the frames array."""
    return int(parts_of(src)[0]._frames.chunks[0])


def frame_bytes(src: Any) -> int:
    return int(src.n_bins) * int(np.dtype(parts_of(src)[0]._frames.dtype).itemsize)


@dataclass(frozen=True)
class Block:
    """Tracks read together: ``tracks`` (set positions, store order), all in part ``part``."""

    part: int
    tracks: tuple[int, ...]
    frames: int


def plan_blocks(src: Any, tracks: Sequence[int], block_mib: float) -> list[Block]:
    """Group ``tracks`` by the chunk-aligned block (of ~``block_mib``) their first frame lies in."""
    want = max(1, int(block_mib * MIB) // frame_bytes(src))
    unit = object_frames(src) if want >= object_frames(src) else chunk_frames(src)   # whole shards, else chunks
    block_frames = unit * max(1, want // unit)   # never above the target: memory_gib stays a bound
    where = locate(src)
    parts = parts_of(src)
    groups: dict[tuple[int, int], list[int]] = {}
    for t in sorted(set(tracks)):
        part, local = where[t]
        groups.setdefault((part, parts[part].tracks[local].start // block_frames), []).append(t)
    return [Block(key[0], tuple(ts), sum(src.n_frames(t) for t in ts)) for key, ts in sorted(groups.items())]


def read_tracks(src: Any, tracks: Sequence[int]) -> dict[int, np.ndarray]:
    """Frames of ``tracks`` (contiguous runs of one part read with one Zarr call each), as views."""
    where, parts = locate(src), parts_of(src)
    out: dict[int, np.ndarray] = {}
    run: list[int] = []

    def flush() -> None:
        if not run:
            return
        part = parts[where[run[0]][0]]
        recs = [part.tracks[where[t][1]] for t in run]
        lo, hi = recs[0].start, recs[-1].start + recs[-1].n_frames
        # whole storage objects only: a partly read Zarr shard costs a request per chunk (20 ms each on an
        # object store), a whole one a single request (bench/bench_stream.py)
        unit = object_frames(src)
        lo = lo // unit * unit
        hi_read = min(-(-hi // unit) * unit, part.total_frames)
        span = part._rows(lo, hi_read) if hi_read > lo else np.zeros((0, src.n_bins), part._frames.dtype)
        for t, rec in zip(run, recs, strict=True):
            out[t] = span[rec.start - lo: rec.start - lo + rec.n_frames]
        run.clear()

    for t in tracks:
        if run and (where[t][0] != where[run[-1]][0] or where[t][1] != where[run[-1]][1] + 1):
            flush()
        run.append(t)
    flush()
    return out


class BlockSource:
    """A ``CropSource`` over decoded blocks: the same ``read`` as :class:`store.FrameSet`, from RAM.
    Only the tracks of the loaded blocks can be read (anything else is a bug in the schedule)."""

    def __init__(self, src: Any, frames: dict[int, np.ndarray]):
        self.n_bins, self.frame_rate, self.attrs, self.spec = src.n_bins, src.frame_rate, src.attrs, src.spec
        self._src, self._frames = src, frames
        self._out = np.int32 if np.issubdtype(parts_of(src)[0]._frames.dtype, np.integer) else np.float32

    def __len__(self) -> int:
        return len(self._src)

    def n_frames(self, track: int) -> int:
        return self._src.n_frames(track)

    def read(self, track: int, start: int = 0, length: int | None = None) -> np.ndarray:
        data = self._frames[track]
        n = len(data)
        length = n - start if length is None else length
        out = np.zeros((max(length, 0), self.n_bins), dtype=self._out)
        lo, hi = max(start, 0), min(start + length, n)
        if hi > lo:
            out[lo - start: hi - start] = data[lo:hi]
        return out


# -- the schedule (metadata only) ---------------------------------------------------------------
class Schedule:
    """Which track every slot of every step gets; computed from the block plan alone, no data read."""

    def __init__(self, blocks: Sequence[Block], lanes: int, buffer: int, batch: int, seed: int, repeat: int = 1):
        if batch % lanes:
            raise ParamsError(f"pretrain.stream_lanes={lanes}: must divide pretrain.batch_size={batch}")
        if len(blocks) < lanes:
            raise ParamsError(f"pretrain.stream_lanes={lanes}: the training tracks make only {len(blocks)} "
                              f"block(s) of pretrain.stream_block_mib; lower one of them (or use in_memory: true)")
        self.blocks, self.lanes, self.buffer, self.batch, self.seed = list(blocks), lanes, buffer, batch, seed
        self.repeat = repeat
        self.per_lane = batch // lanes
        self.lane_blocks = [list(range(lane, len(blocks), lanes)) for lane in range(lanes)]
        self.lane_tracks = [repeat * sum(len(blocks[b].tracks) for b in bs) for bs in self.lane_blocks]

    def windows(self, lane: int, epoch: int) -> list[list[int]]:
        """Block numbers of each shuffle-buffer window of ``lane`` in ``epoch``."""
        own = self.lane_blocks[lane]
        order = np.random.default_rng([self.seed, 2, lane, epoch]).permutation(len(own))
        return [[own[int(i)] for i in order[w: w + self.buffer]] for w in range(0, len(own), self.buffer)]

    def window_items(self, lane: int, epoch: int, w: int, window: list[int]) -> list[int]:
        """Tracks of one window in emission order."""
        items = [t for b in window for t in self.blocks[b].tracks] * self.repeat
        perm = np.random.default_rng([self.seed, 3, lane, epoch, w]).permutation(len(items))
        return [items[int(i)] for i in perm]

    def position(self, lane: int, n: int) -> tuple[int, int, int]:
        """``(epoch, window, offset in window)`` of position ``n`` of a lane."""
        epoch, rest = divmod(n, self.lane_tracks[lane])
        for w, window in enumerate(self.windows(lane, epoch)):
            size = self.repeat * sum(len(self.blocks[b].tracks) for b in window)
            if rest < size:
                return epoch, w, rest
            rest -= size
        raise AssertionError("unreachable: a lane's windows hold all its tracks")

    def track(self, step: int, slot: int) -> int:
        """The track of global slot ``slot`` at ``step`` (for tests and inspection)."""
        lane, n = slot // self.per_lane, step * self.per_lane + slot % self.per_lane
        epoch, w, off = self.position(lane, n)
        window = self.windows(lane, epoch)[w]
        return self.window_items(lane, epoch, w, window)[off]

    def rank_lanes(self, rank: int, world: int) -> list[int]:
        if self.lanes % world:
            raise ParamsError(f"pretrain.stream_lanes={self.lanes}: must be a multiple of the {world} DDP "
                              f"processes (each reads its own lanes)")
        k = self.lanes // world
        return list(range(rank * k, (rank + 1) * k))


class _Lane:
    """One lane's cursor: the decoded current window, and the next one being read in the background."""

    def __init__(self, sched: Schedule, lane: int, start_step: int, sources: Sources, pool: ThreadPoolExecutor):
        self.sched, self.lane, self.sources, self.pool = sched, lane, sources, pool
        self.epoch, self.w, self.off = sched.position(lane, start_step * sched.per_lane)
        self._load_current()

    def _read(self, epoch: int, w: int) -> tuple[list[int], Sources]:
        window = self.sched.windows(self.lane, epoch)[w]
        items = self.sched.window_items(self.lane, epoch, w, window)
        tracks = [t for b in window for t in self.sched.blocks[b].tracks]
        feats = BlockSource(self.sources.features, read_tracks(self.sources.features, tracks))
        toks = (BlockSource(self.sources.tokens, read_tracks(self.sources.tokens, tracks))
                if self.sources.tokens is not None else None)
        return items, Sources(feats, toks)

    def _following(self, epoch: int, w: int) -> tuple[int, int]:
        return (epoch, w + 1) if w + 1 < len(self.sched.windows(self.lane, epoch)) else (epoch + 1, 0)

    def _load_current(self) -> None:
        self.items, self.window = self._read(self.epoch, self.w)
        self.ahead: Future = self.pool.submit(self._read, *self._following(self.epoch, self.w))

    def next(self) -> tuple[int, Sources]:
        if self.off >= len(self.items):
            self.epoch, self.w = self._following(self.epoch, self.w)
            self.items, self.window = self.ahead.result()
            self.ahead = self.pool.submit(self._read, *self._following(self.epoch, self.w))
            self.off = 0
        track = self.items[self.off]
        self.off += 1
        return track, self.window


class StreamDataset(IterableDataset):
    """Yields, per step, this process's share of this rank's slots: ``(slots, examples)``."""

    def __init__(self, recipe: Recipe, sources: Sources, sched: Schedule, start: int, steps: int,
                 rank: int, world: int, read_threads: int):
        self.recipe, self.sources, self.sched = recipe, sources, sched
        self.start, self.steps, self.rank, self.world, self.read_threads = start, steps, rank, world, read_threads

    def my_lanes(self, worker: int, workers: int) -> list[int]:
        return self.sched.rank_lanes(self.rank, self.world)[worker::workers]

    def __iter__(self) -> Iterator[tuple[list[int], list[Example]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lanes = self.my_lanes(worker, workers)
        sched, g = self.sched, self.sched.per_lane
        with ThreadPoolExecutor(max_workers=self.read_threads, thread_name_prefix="mirkit-read") as pool:
            cursors = [_Lane(sched, lane, self.start, self.sources, pool) for lane in lanes]
            for step in range(self.start, self.steps):
                slots: list[int] = []
                examples: list[Example] = []
                for lane, cur in zip(lanes, cursors, strict=True):
                    for i in range(g):
                        track, src = cur.next()
                        slot = lane * g + i
                        k = step * sched.batch + slot
                        ex = self.recipe.sample(src, track, np.random.default_rng([sched.seed, 1, k]))
                        slots.append(slot)
                        examples.append({**ex, "index": np.int64(track)})
                yield slots, examples
            for cur in cursors:   # let the last read-ahead finish before the pool closes
                cur.ahead.cancel()


def _merge(parts: Sequence[tuple[list[int], list[Example]]]) -> dict[str, torch.Tensor]:
    pairs = sorted((s, e) for slots, exs in parts for s, e in zip(slots, exs, strict=True))
    return default_collate([e for _, e in pairs])


def batches(loader: DataLoader, workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """The rank's batches in step order: one item from each worker (round-robin), merged by slot."""
    it = iter(loader)
    while True:
        got = []
        for _ in range(max(workers, 1)):
            try:
                got.append(next(it))
            except StopIteration:
                if got:
                    raise RuntimeError("streaming loader: workers ended out of step") from None
                return
        yield _merge(got)


def window_bytes(sched: Schedule, src: Any, lanes: Sequence[int]) -> int:
    """Largest decoded window of these lanes (blocks stay in the store's dtype until cropped)."""
    worst = 0
    for lane in lanes:
        sizes = sorted((sched.blocks[b].frames for b in sched.lane_blocks[lane]), reverse=True)
        # + up to two storage objects per block: reads are rounded out to whole Zarr shards
        worst += sum(sizes[: sched.buffer]) + 2 * object_frames(src) * min(sched.buffer, len(sizes))
    return worst * frame_bytes(src)


def check_memory(sched: Schedule, sources: Sources, rank: int, world: int, settings: StreamSettings) -> int:
    """Bytes one rank's loader holds at most (every lane: current window + the one read ahead);
    raises ParamsError naming ``pretrain.stream_memory_gib`` when it exceeds the bound."""
    lanes = sched.rank_lanes(rank, world)
    need = 2 * window_bytes(sched, sources.features, lanes)
    if sources.tokens is not None:
        need += 2 * window_bytes(sched, sources.tokens, lanes)
    if need > settings.memory_gib * (1 << 30):
        raise ParamsError(f"pretrain.stream_memory_gib={settings.memory_gib}: this rank's {len(lanes)} lane(s) need "
                          f"{need / (1 << 30):.2f} GiB (current + read-ahead window of stream_buffer="
                          f"{sched.buffer} blocks of ~{settings.block_mib:.3g} MiB); raise it, or lower "
                          f"stream_buffer / stream_block_mib / stream_lanes")
    return need


def make_loader(recipe: Recipe, sources: Sources, tracks: Sequence[int], settings: StreamSettings, *,
                batch: int, seed: int, start: int, steps: int, rank: int, world: int, workers: int,
                pin_memory: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batches for steps ``start..steps-1`` (see the module docstring)."""
    sched = Schedule(plan_blocks(sources.features, tracks, settings.block_mib), settings.lanes, settings.buffer,
                     batch, seed, settings.repeat)
    check_memory(sched, sources, rank, world, settings)
    dataset = StreamDataset(recipe, sources, sched, start, steps, rank, world, settings.read_threads)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=False,
                        persistent_workers=False)
    merged = batches(loader, workers)
    return (_pinned(merged) if pin_memory else merged)


def _pinned(it: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    for b in it:
        yield {k: v.pin_memory() for k, v in b.items()}


def estimated_bytes(src: Any) -> int:
    """Bytes of a feature set as stored (frames × bins × item size), from its index."""
    return int(src.total_frames) * frame_bytes(src)


def available_ram() -> int:
    """Physical memory available now (Linux ``MemAvailable``; total RAM elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))



def human(n: float) -> str:
    """``1536 MiB`` -> ``1.5 GiB``: bytes for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"

