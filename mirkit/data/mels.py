"""The ``mels`` stage: decode audio once, compute every requested feature set, append to Zarr.

Resumable and incremental: a track already stored with the same fingerprint is skipped; new tracks
are appended; a feature set whose parameters changed is replaced (never mixed). Bad files are
reported (file + reason) and skipped; the rest is processed. Work is committed in blocks, so a
kill at any moment loses at most the uncommitted block and nothing already written.

Scale-out (docs/architecture.md, "Scale-out"): ``shard: i/n`` keeps only the tracks with ``sha1(track_id) mod n == i``
and writes them to the shard store ``<store>/shard-i-of-n.zarr``, with failures and summary files of
their own (``<name>.shard-i-of-n.<ext>``). Any scheduler runs the n shards; readers
(:func:`mirkit.data.store.open_set`) see the folder as one store.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mirkit.data import store
from mirkit.data.audio import AudioError, fingerprint, read_audio, resample
from mirkit.data.features import PRESETS, FeatureSpec, FrontEnd
from mirkit.data.manifest import Track, load_tracks
from mirkit.device import DEVICES, pick
from mirkit.files import atomic_write_text, write_json
from mirkit.params import ParamsError, param, resolve


@dataclass
class MelsParams:
    """Section ``mels`` of params.yaml."""

    input: str = param("data/samples/manifest.csv", help="manifest CSV or folder of audio files")
    store: str = param("data/features.zarr", help="feature store: path or fsspec URL")
    feature_sets: list[str] = param(["mel16k"], help="names of presets or of entries in `custom`")
    custom: dict = param({}, help="extra named feature sets: name -> FeatureSpec fields")
    min_seconds: float = param(0.5, ge=0.0, help="shorter clips are rejected as too short")
    batch_size: int = param(1, ge=1, help="equal-length clips computed together (raise on GPU)")
    num_workers: int = param(1, ge=0, help="decoding processes")
    commit_frames: int = param(65536, ge=1, help="frames buffered per set before a commit")
    device: str = param("auto", choices=DEVICES)
    strict: bool = param(False, help="fail the stage on any bad file")
    failures: str = param("data/features.failures.tsv", help="one line per rejected file")
    summary: str = param("data/features.summary.json", help="counts per set (a DVC metric)")
    shard: str | None = param(None, help="i/n: only the tracks with sha1(track_id) mod n == i, into "
                                         "<store>/shard-i-of-n.zarr; null = all tracks into <store>")

    def specs(self) -> dict[str, FeatureSpec]:
        out = {}
        for name in self.feature_sets:
            if name in self.custom:
                out[name] = resolve(FeatureSpec, self.custom[name], section=f"mels.custom.{name}")
            elif name in PRESETS:
                out[name] = PRESETS[name]
            else:
                raise ParamsError(f"mels.feature_sets: unknown set '{name}' (presets: {', '.join(PRESETS)};"
                                  f" or define it under mels.custom)")
        if not out:
            raise ParamsError("mels.feature_sets: at least one feature set is needed")
        return out

    def check(self) -> None:
        self.specs()
        self.shard_index()

    def shard_index(self) -> tuple[int, int] | None:
        """``(i, n)`` of ``shard``, or None when unsharded; raises ParamsError on a malformed value."""
        return parse_shard(self.shard)

    @property
    def out_store(self) -> str:
        """Where this run writes its feature sets: ``store``, or its shard store under ``shard``."""
        shard = self.shard_index()
        return store.shard_url(self.store, *shard) if shard else self.store

    @property
    def out_failures(self) -> str:
        return _shard_file(self.failures, self.shard_index())

    @property
    def out_summary(self) -> str:
        return _shard_file(self.summary, self.shard_index())


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None stays None (raises ParamsError naming ``mels.shard``)."""
    if text is None:
        return None
    parts = str(text).strip().split("/")
    try:
        i, n = (int(x) for x in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        i = n = None
    if i is None or n is None or n < 1 or not 0 <= i < n:
        raise ParamsError(f"mels.shard={text!r}: expected i/n with n >= 1 and 0 <= i < n (e.g. 0/4)")
    return i, n


def _shard_file(path: str, shard: tuple[int, int] | None) -> str:
    """``data/x.failures.tsv`` -> ``data/x.failures.shard-0-of-4.tsv`` under a shard; unchanged otherwise."""
    if shard is None:
        return path
    head, sep, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    tag = store.shard_name(*shard)
    return f"{head}{sep}{stem}.{tag}.{ext}" if dot and stem else f"{path}.{tag}"


@dataclass
class SetReport:
    status: str
    stored: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0


@dataclass
class MelsReport:
    sets: dict[str, SetReport] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_tracks: int = 0

    @property
    def succeeded(self) -> int:
        return self.n_tracks - len(self.failures)


class _Decoded(Dataset):
    """Decodes one track per item and resamples it to each rate it still needs (runs in workers)."""

    def __init__(self, tracks: list[Track], rates: list[list[int]], min_seconds: float):
        self.tracks, self.rates, self.min_seconds = tracks, rates, min_seconds

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, i: int) -> tuple[int, dict[int, np.ndarray] | str]:
        t = self.tracks[i]
        try:
            wave, sr = read_audio(t.path, t.offset, t.duration)
            seconds = wave.shape[0] / sr
            if seconds < self.min_seconds:
                raise AudioError(f"too short ({seconds:.3f} s < min_seconds {self.min_seconds:g} s)")
            return i, {rate: resample(wave, sr, rate) for rate in self.rates[i]}
        except AudioError as exc:
            return i, str(exc)
        except Exception as exc:  # an unexpected decoder failure must not stop the stage
            return i, f"decoding failed ({exc.__class__.__name__}: {exc})"


def _track_fingerprint(t: Track) -> str | None:
    try:
        return fingerprint(t.path, t.offset, t.duration)
    except OSError:
        return None


def run(p: MelsParams, on_progress: Callable[[int, int], None] | None = None) -> MelsReport:
    """Compute all requested feature sets for the tracks of ``p.input`` (of its shard under ``p.shard``)
    into ``p.out_store``. Raises :class:`~mirkit.data.store.StoreError` when ``p.store`` is of the other
    layout (a shard folder for an unsharded run, or an unsharded store for a sharded one)."""
    specs = p.specs()
    shard = p.shard_index()
    _check_layout(p.store, shard)
    tracks = load_tracks(p.input)
    if shard is not None:
        tracks = [t for t in tracks if store.shard_of(t.track_id, shard[1]) == shard[0]]
    out = p.out_store
    with store.writer_lock(out):   # one writer per store: a second run refuses at once (StoreBusy)
        return _write(p, specs, tracks, out, on_progress)


def _write(p: MelsParams, specs: dict[str, FeatureSpec], tracks: list[Track], out: str,
           on_progress: Callable[[int, int], None] | None) -> MelsReport:
    shard = p.shard_index()
    report = MelsReport(n_tracks=len(tracks))
    device = pick(p.device)
    prints = [_track_fingerprint(t) for t in tracks]

    sets: dict[str, store.FrameSet] = {}
    todo: dict[str, set[int]] = {}
    for name, spec in specs.items():
        fs, status = _open_set(out, name, spec, shard)
        stored = {r.track_id: r.fingerprint for r in fs.tracks}
        changed = [t.track_id for t, fp in zip(tracks, prints, strict=True) if t.track_id in stored and fp is not None
                   and stored[t.track_id] != fp]
        if changed:  # an append-only set cannot replace a track in place: rebuild it
            store.delete_set(out, name)
            fs, _ = _open_set(out, name, spec, shard)
            status, stored = f"rebuilt ({len(changed)} changed)", {}
        sets[name] = fs
        todo[name] = {i for i, t in enumerate(tracks) if t.track_id not in stored}
        report.sets[name] = SetReport(status=status, skipped=len(tracks) - len(todo[name]))

    pending = sorted(set().union(*todo.values()))
    fronts = {name: FrontEnd(spec).to(device) for name, spec in specs.items()}
    rates = [sorted({specs[n].sample_rate for n in specs if i in todo[n]}) for i in range(len(tracks))]
    loader = DataLoader(_Decoded(tracks, rates, p.min_seconds), batch_size=None, sampler=pending,
                        num_workers=p.num_workers if pending else 0)
    buffers: dict[str, list[tuple[str, str, str, np.ndarray]]] = {n: [] for n in specs}

    def commit(name: str) -> None:
        if buffers[name]:
            sets[name].append(buffers[name])
            buffers[name] = []

    batch: list[tuple[int, dict[int, np.ndarray]]] = []

    def shown(i: int) -> str:   # the path as the manifest names it: stores do not depend on where data lives
        return tracks[i].source or str(tracks[i].path)

    def compute_batch() -> None:
        for name, spec in specs.items():
            items: list[tuple[int, np.ndarray]] = []
            for i, w in batch:
                if i not in todo[name]:
                    continue
                try:   # too short for this set's window / CQT kernel, or too long for memory
                    fronts[name].check_input(w[spec.sample_rate].shape[0])
                except AudioError as exc:
                    report.failures.append((shown(i), f"{name}: {exc}"))
                    continue
                items.append((i, w[spec.sample_rate]))
            by_len: dict[int, list[tuple[int, np.ndarray]]] = {}
            for i, wave in items:
                by_len.setdefault(wave.shape[0], []).append((i, wave))
            results: dict[int, np.ndarray] = {}
            for group in by_len.values():
                for lo in range(0, len(group), p.batch_size):
                    part = group[lo: lo + p.batch_size]
                    for (i, _), feats in zip(part, _compute_fixed(fronts[name], [w for _, w in part],
                                                                  p.batch_size, device), strict=True):
                        results[i] = feats
            for i, _ in items:  # commit in manifest order
                with np.errstate(over="ignore"):   # checked as stored: float16 overflows to inf
                    feats = results[i].astype(spec.dtype)
                if not np.isfinite(feats).all():
                    report.failures.append((shown(i), f"{name}: features contain NaN/inf as {spec.dtype} "
                                                      f"(audio too loud or damaged)"))
                    continue
                buffers[name].append((tracks[i].track_id, shown(i), prints[i] or "", feats))
                rep = report.sets[name]
                rep.stored += 1
                rep.frames += feats.shape[0]
                rep.seconds += feats.shape[0] / spec.frame_rate
            if sum(b[3].shape[0] for b in buffers[name]) >= p.commit_frames:
                commit(name)
        batch.clear()

    done = 0
    for i, result in loader:
        done += 1
        if isinstance(result, str):
            report.failures.append((shown(i), result))
        else:
            batch.append((i, result))
            if len(batch) >= p.batch_size:
                compute_batch()
        if on_progress:
            on_progress(done, len(pending))
    compute_batch()
    for name in specs:
        commit(name)
    write_failures(p.out_failures, report.failures)
    write_summary(p, report)
    return report


def _check_layout(url: str, shard: tuple[int, int] | None) -> None:
    """Never mix the two layouts in one place: readers would see only one of them."""
    if shard is None and store.find_shards(url):
        raise store.StoreError(f"{url}: holds shard stores; run with --shard i/n, or choose another mels.store")
    if shard is not None and store.has_own_sets(url):
        raise store.StoreError(f"{url}: is an unsharded feature store; shard stores need a folder of their own "
                               f"(choose another mels.store)")


def _open_set(url: str, name: str, spec: FeatureSpec, shard: tuple[int, int] | None) -> tuple[store.FrameSet, str]:
    attrs = {"shard": f"{shard[0]}/{shard[1]}"} if shard else None
    return store.create_or_open(url, name, spec.to_dict(), spec.bins, spec.frame_rate, spec.dtype, attrs=attrs)


def _compute_fixed(front: FrontEnd, waves: list[np.ndarray], batch_size: int, device: torch.device) -> list[np.ndarray]:
    """Features of equal-length waves, always as a batch of exactly ``batch_size`` rows.

    Kernels may round differently for different batch shapes; padding every batch to the same
    shape makes each clip's features independent of which clips share its batch, so re-runs and
    resumed runs write byte-identical stores.
    """
    x = np.zeros((batch_size, waves[0].shape[0]), np.float32)
    x[: len(waves)] = np.stack(waves)
    with torch.no_grad():
        out = front(torch.from_numpy(x).to(device)).cpu().numpy()
    return list(out[: len(waves)])


def write_failures(path: str, failures: list[tuple[str, str]]) -> None:
    """One ``file<TAB>reason`` line per rejected file (written atomically; empty when none)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["file", "reason"])
    w.writerows(failures)
    atomic_write_text(path, buf.getvalue())


def write_summary(p: MelsParams, report: MelsReport) -> None:
    """The DVC metrics file holds only numbers worth comparing across runs (tracks, failures, and per set
    its size in the store); what this run did and with which params goes to ``<summary>.details.json``."""
    sets = {}
    for name in report.sets:
        fs = store.open_set(p.out_store, name)
        sets[name] = {"tracks": len(fs), "frames": fs.total_frames,
                      "minutes": round(fs.total_frames / fs.frame_rate / 60, 3)}
    write_json(p.out_summary, {"tracks": report.n_tracks, "failed": len(report.failures), "sets": sets})
    details = {"sets": {n: {"status": r.status, "stored_now": r.stored, "skipped": r.skipped}
                        for n, r in report.sets.items()},
               "params": {k: v for k, v in p.__dict__.items()}}
    write_json(details_path(p.out_summary), details)


def details_path(metrics: str) -> str:
    """``results/features.json`` -> ``results/features.details.json`` (beside a metrics file)."""
    path = Path(metrics)
    return str(path.with_name(path.stem + ".details" + path.suffix))


def report_rows(report: MelsReport, store_url: str) -> list[tuple[Any, ...]]:
    rows = []
    for name in report.sets:
        fs = store.open_set(store_url, name)
        r = report.sets[name]
        rows.append((name, r.status, r.stored, r.skipped, len(fs), fs.total_frames,
                     f"{fs.total_frames / fs.frame_rate / 60:.1f}"))
    return rows
