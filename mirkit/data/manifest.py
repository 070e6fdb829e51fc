"""Manifests: the one way to name a dataset (docs/architecture.md, "Data contracts").

A CSV with ``path`` (relative to the manifest), optional ``split``, ``offset``/``duration``
(seconds, for clips cut from longer files), an optional ``track_id`` and any label columns.
A folder of audio files is read as a manifest without labels.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirkit.data.audio import AUDIO_EXTENSIONS, find_audio
from mirkit.errors import InputError

RESERVED = ("path", "split", "offset", "duration", "track_id")


class ManifestError(InputError):
    """The manifest itself is unusable (missing, no ``path`` column, duplicate ids, bad numbers)."""


@dataclass(frozen=True)
class Track:
    track_id: str
    path: Path
    offset: float = 0.0
    duration: float | None = None
    split: str = ""
    labels: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    #: the path as the manifest names it (relative to the manifest's folder, or to the input folder):
    #: what stores record, so the same data in another folder gives the same bytes
    source: str = ""


def _float(value: str | None, what: str, row: int, manifest: Path) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ManifestError(f"{manifest}: row {row}: {what}={value!r} is not a number") from None


def read_manifest(manifest: str | Path) -> list[Track]:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest not found")
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ManifestError(f"{manifest}: needs a 'path' column (has: {', '.join(reader.fieldnames or [])})")
        rows = list(reader)
    uses = Counter((row.get("path") or "").strip() for row in rows)
    tracks, seen = [], set()
    for i, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        if not rel:
            raise ManifestError(f"{manifest}: row {i}: empty path")
        offset = _float(row.get("offset"), "offset", i, manifest) or 0.0
        duration = _float(row.get("duration"), "duration", i, manifest)
        if not offset >= 0 or offset == float("inf"):
            raise ManifestError(f"{manifest}: row {i}: offset={row.get('offset')!r}: must be a finite number >= 0 seconds")
        if duration is not None and not 0 < duration < float("inf"):
            raise ManifestError(f"{manifest}: row {i}: duration={row.get('duration')!r}: must be a finite number "
                                f"> 0 seconds (or empty for the rest of the file)")
        # a whole file (or its start) is named by its path, as for a folder input; a clip cut out of a
        # file, or one of several clips of a file, by path@offset+duration
        tid = (row.get("track_id") or "").strip() or (rel if uses[rel] == 1 and not offset
                                                       else f"{rel}@{offset:g}+{duration:g}" if duration is not None
                                                       else f"{rel}@{offset:g}+")
        if tid in seen:
            raise ManifestError(f"{manifest}: row {i}: duplicate track id {tid!r}")
        seen.add(tid)
        labels = {k: v for k, v in row.items() if k not in RESERVED and k is not None}
        tracks.append(Track(tid, (manifest.parent / rel).resolve(), offset, duration,
                            (row.get("split") or "").strip(), labels, Path(rel).as_posix()))
    if not tracks:
        raise ManifestError(f"{manifest}: no tracks (the manifest has a header but no rows)")
    return tracks


def load_tracks(source: str | Path) -> list[Track]:
    """Tracks of a manifest CSV, or of every audio file under a folder (an error when there are none)."""
    source = Path(source)
    if source.is_dir():
        tracks = [Track(p.relative_to(source).as_posix(), p.resolve(), source=p.relative_to(source).as_posix())
                  for p in find_audio(source)]
        if not tracks:
            raise ManifestError(f"{source}: no audio files in this folder (looked for {', '.join(AUDIO_EXTENSIONS)})")
        return tracks
    return read_manifest(source)
