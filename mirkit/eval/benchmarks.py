"""Manifests for the four standard probe benchmarks (JukeMIR / MARBLE / Myna protocol).

The split and label metadata in ``mirkit/eval/benchmark_data/*.json.gz`` is taken unchanged from the
``metadata/`` folder of p-lambda/jukemir (MIT licence, Copyright (c) 2021 Rodrigo Castellon and
Chris Donahue; notice below). No audio ships with mirkit: :func:`build_manifest` matches a user's
local copy of each dataset against that metadata.

| name | metadata | audio file matched by | label columns |
|---|---|---|---|
| gtzan | gtzan_ff (fault-filtered split) | file stem == ``extra.id`` (``jazz.00024.wav``/``.au``) | genre |
| giantsteps | giantsteps_clips (30 s clips) | stem ``<id>.LOFI``, ``<id>`` or the padded uid | key (+ offset/duration of the clip, ``song``) |
| mtt | magnatagatune (top-50 tags) | relative path ending in ``extra.mp3_path`` (``f/...mp3``) | tags (``;``-separated) |
| emomusic | emomusic (45 s clips) | stem == song id (``clips_45seconds/2.mp3``) | arousal, valence (z-scored, as JukeMIR) |

GiantSteps clips carry ``song`` (``clip.audio_uid``, the song a clip was cut from), so that the probe
task ``{type: key, label: key, group: song}`` ensembles clips per song as JukeMIR does.
MTT and EmoMusic audio files are already the clips, so their manifests have no offset.
MTT entries without a split (JukeMIR's unused clips) are left out.

MIT notice of the metadata: Permission is hereby granted, free of charge, to any person obtaining
a copy of this software and associated documentation files (the "Software"), to deal in the
Software without restriction, including without limitation the rights to use, copy, modify, merge,
publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom
the Software is furnished to do so, subject to the following conditions: The above copyright notice
and this permission notice shall be included in all copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mirkit.errors import InputError

AUDIO_EXTENSIONS = (".wav", ".au", ".mp3", ".flac", ".ogg", ".m4a", ".aiff", ".aif")

METADATA = {"gtzan": "gtzan_ff.json.gz", "giantsteps": "giantsteps_clips.json.gz",
            "mtt": "magnatagatune.json.gz", "emomusic": "emomusic.json.gz"}
BENCHMARKS = tuple(METADATA)
LABEL_COLUMNS = {"gtzan": ["genre"], "giantsteps": ["key"], "mtt": ["tags"], "emomusic": ["arousal", "valence"]}
SONG_COLUMNS = {"giantsteps": "song"}   # column naming the song of a clip (probe task option `group`)


def load_metadata(name: str) -> dict[str, dict[str, Any]]:
    """uid -> {split, y, clip, extra} of one benchmark (the shipped JukeMIR metadata)."""
    if name not in METADATA:
        raise InputError(f"unknown benchmark {name!r} (choose from {', '.join(BENCHMARKS)})")
    data = resources.files("mirkit.eval") / "benchmark_data" / METADATA[name]
    with data.open("rb") as fh, gzip.open(fh, "rt") as text:
        return json.load(text)


class AudioIndex:
    """Every audio file under a folder, looked up by file stem or by path suffix."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.by_stem: dict[str, Path] = {}
        self.by_suffix: dict[str, Path] = {}
        self.files: list[Path] = []     # every audio file found, in a fixed order
        for dirpath, _, files in sorted(os.walk(self.root)):
            for f in sorted(files):
                p = Path(dirpath) / f
                if p.suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                self.files.append(p)
                self.by_stem.setdefault(p.stem.lower(), p)
                parts = p.relative_to(self.root).parts
                for k in range(1, len(parts) + 1):
                    self.by_suffix.setdefault("/".join(parts[-k:]).lower(), p)

    def stem(self, *candidates: str) -> Path | None:
        for c in candidates:
            hit = self.by_stem.get(str(c).lower())
            if hit is not None:
                return hit
        return None

    def suffix(self, rel: str) -> Path | None:
        return self.by_suffix.get(rel.strip("/").lower()) if rel else None


def _gtzan(uid, e, index):
    return index.stem(e["extra"]["id"]), {"genre": e["y"]}


def _giantsteps(uid, e, index):
    clip, ident = e["clip"], e["extra"]["id"]
    path = index.stem(f"{ident}.LOFI", str(ident), clip["audio_uid"])
    return path, {"offset": clip["clip_offset"], "duration": clip["clip_duration"], "song": clip["audio_uid"],
                  "key": e["y"]}


def _mtt(uid, e, index):
    return index.suffix(e["extra"]["mp3_path"]), {"tags": ";".join(e["y"] or [])}


def _emomusic(uid, e, index):
    song = e["extra"]["songs_info"]["song_id"]
    arousal, valence = e["y"]
    return index.stem(song), {"arousal": arousal, "valence": valence}


ROW_BUILDERS: dict[str, Callable] = {"gtzan": _gtzan, "giantsteps": _giantsteps, "mtt": _mtt,
                                     "emomusic": _emomusic}


@dataclass
class ManifestBuild:
    rows: list[dict[str, Any]]
    missing: list[str]          # uids whose audio was not found
    total: int


def match_entries(name: str, index: AudioIndex,
                  meta: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, dict, Path | None, dict]]:
    """``(uid, entry, audio file or None, label columns)`` of every metadata entry, in uid order
    (entries without a split, MTT's unused clips, included: callers filter on ``entry["split"]``)."""
    meta = load_metadata(name) if meta is None else meta
    out = []
    for uid, entry in sorted(meta.items()):
        path, labels = ROW_BUILDERS[name](uid, entry, index)
        out.append((uid, entry, path, labels))
    return out


def build_manifest(name: str, audio_dir: str | Path) -> ManifestBuild:
    """Rows (absolute ``path``, ``track_id``, ``split``, clip bounds, labels) for the files found."""
    rows, missing, total = [], [], 0
    for uid, entry, path, labels in match_entries(name, AudioIndex(audio_dir)):
        if entry.get("split") is None:
            continue
        total += 1
        if path is None:
            missing.append(uid)
            continue
        rows.append({"path": str(path.resolve()), "track_id": uid, "split": entry["split"], **labels})
    return ManifestBuild(rows, missing, total)


def write_manifest(rows: list[dict[str, Any]], out: str | Path) -> None:
    """CSV with ``path`` relative to the manifest's folder (the manifest contract)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for r in rows:
        columns.extend(c for c in r if c not in columns)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "path": os.path.relpath(r["path"], out.parent.resolve())})
    tmp.replace(out)
