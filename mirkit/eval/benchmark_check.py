"""Check a user's copy of a benchmark dataset against the shipped JukeMIR split lists.

What is counted (per split): entries whose audio was found, entries whose audio is missing,
audio files under the folder that no entry names (``extra``), files of entries outside the
protocol's splits (``unused``: MTT's clips without a split), files that cannot be decoded, and
files whose duration does not fit the metadata. Durations come from the file header
(``soundfile.info``), so checking a whole dataset reads no audio data.

Expected durations follow the JukeMIR metadata (``clip`` of each entry; GTZAN has none and its
excerpts are 30 s by construction, Tzanetakis & Cook 2002):

| benchmark | the file is | must last at least | nominal length |
|---|---|---|---|
| gtzan | the 30 s excerpt | 30 s | 30 s |
| giantsteps | the 2-minute LOFI preview, cut into 30 s clips | clip offset + 30 s | ``clip.audio_duration`` |
| mtt | the 29.1 s clip | ``clip.clip_duration`` | ``clip.clip_duration`` |
| emomusic | the 45 s clip | ``clip.clip_duration`` | ``clip.clip_duration`` |

A file shorter than needed by more than the tolerance (``max(0.5 s, 2 %)``) is ``short``: it is
kept (the clip is embedded from what is there) and reported. A file longer than its nominal
length by more than the tolerance is ``long`` (usually another release of the dataset, e.g. full
songs instead of clips): kept and reported. A GiantSteps clip starting at or after the end of its
file has no audio at all and is dropped, as are undecodable files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirkit.eval.benchmarks import AudioIndex, load_metadata, match_entries

SPLITS = ("train", "valid", "test")
GTZAN_SECONDS = 30.0


def tolerance(seconds: float) -> float:
    """How far a duration may be from the metadata's before it is reported."""
    return max(0.5, 0.02 * seconds)


def expected_span(name: str, entry: dict[str, Any]) -> tuple[float, float, float | None]:
    """``(clip offset, seconds the file must last at least, nominal file length or None)``."""
    clip = entry.get("clip") or {}
    if name == "gtzan":
        return 0.0, GTZAN_SECONDS, GTZAN_SECONDS
    if name == "giantsteps":
        offset = float(clip["clip_offset"])
        return offset, offset + float(clip["clip_duration"]), float(clip["audio_duration"])
    seconds = float(clip["clip_duration"])
    return 0.0, seconds, seconds


@dataclass
class CopyCheck:
    """The outcome of :func:`check_copy`; ``rows`` are the manifest rows that can run."""

    name: str
    audio_dir: str
    expected: dict[str, int]
    found: dict[str, int]
    missing: dict[str, list[str]]
    extra: list[str] = field(default_factory=list)          # files no entry names (relative paths)
    unused: list[str] = field(default_factory=list)         # files of entries without a split
    unreadable: list[tuple[str, str]] = field(default_factory=list)    # (file, reason): dropped
    beyond_end: list[tuple[str, float, float]] = field(default_factory=list)  # (uid, offset, file s): dropped
    short: list[tuple[str, float, float]] = field(default_factory=list)  # (uid, file seconds, needed): kept
    long: list[tuple[str, float, float]] = field(default_factory=list)   # (uid, file seconds, nominal): kept
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usable(self) -> dict[str, int]:
        counts = Counter(r["split"] for r in self.rows)
        return {s: counts.get(s, 0) for s in SPLITS}

    @property
    def complete(self) -> bool:
        return self.usable == self.expected

    def summary(self) -> str:
        """One line: complete, or partial with what is there."""
        used, total = sum(self.usable.values()), sum(self.expected.values())
        if self.complete:
            return f"{self.name}: complete copy ({total} entries)"
        per = ", ".join(f"{s} {self.usable[s]}/{self.expected[s]}" for s in SPLITS)
        return (f"{self.name}: PARTIAL copy, running on {used} of {total} entries "
                f"({100 * used / max(total, 1):.1f} %: {per}); scores are not comparable to published ones")

    def to_json(self, examples: int = 20) -> dict[str, Any]:
        return {"benchmark": self.name, "audio": self.audio_dir, "complete": self.complete,
                "expected": self.expected, "found": self.found, "usable": self.usable,
                "missing": {s: len(v) for s, v in self.missing.items()},
                "missing_examples": {s: v[:examples] for s, v in self.missing.items()},
                "extra": len(self.extra), "extra_examples": self.extra[:examples],
                "unused": len(self.unused), "unreadable": [list(u) for u in self.unreadable[:examples]],
                "n_unreadable": len(self.unreadable), "beyond_end": [list(u) for u in self.beyond_end[:examples]],
                "n_beyond_end": len(self.beyond_end), "short": [list(u) for u in self.short[:examples]],
                "n_short": len(self.short), "long": [list(u) for u in self.long[:examples]],
                "n_long": len(self.long)}


def _duration(path: Path, cache: dict[Path, float | str]) -> float | str:
    """Seconds of a file from its header, or the reason it cannot be read."""
    if path not in cache:
        import soundfile as sf
        try:
            info = sf.info(str(path))
            cache[path] = float(info.frames) / float(info.samplerate) if info.samplerate else "no sample rate"
        except (RuntimeError, OSError, ValueError) as exc:   # LibsndfileError is a RuntimeError
            cache[path] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return cache[path]


def check_copy(name: str, audio_dir: str | Path,
               on_progress: Callable[[int, int], None] | None = None) -> CopyCheck:
    """Match ``audio_dir`` against benchmark ``name``'s split lists, read every matched file's
    duration, and return the counts and the manifest rows that can run (absolute paths)."""
    root = Path(audio_dir)
    meta = load_metadata(name)
    index = AudioIndex(root)
    expected = Counter(e["split"] for e in meta.values() if e.get("split") in SPLITS)
    check = CopyCheck(name, str(root), {s: expected.get(s, 0) for s in SPLITS}, dict.fromkeys(SPLITS, 0),
                      {s: [] for s in SPLITS})
    matched: set[Path] = set()
    durations: dict[Path, float | str] = {}
    entries = match_entries(name, index, meta)
    for k, (uid, entry, path, labels) in enumerate(entries, start=1):
        if on_progress and (k % 256 == 0 or k == len(entries)):
            on_progress(k, len(entries))
        split = entry.get("split")
        if path is not None:
            matched.add(path)
        if split not in SPLITS:
            if path is not None:
                check.unused.append(str(path.relative_to(root)))
            continue
        if path is None:
            check.missing[split].append(uid)
            continue
        check.found[split] += 1
        seconds = _duration(path, durations)
        if isinstance(seconds, str):
            check.unreadable.append((str(path.relative_to(root)), seconds))
            continue
        offset, needed, nominal = expected_span(name, entry)
        if seconds <= offset:
            check.beyond_end.append((uid, offset, round(seconds, 3)))
            continue
        if seconds < needed - tolerance(needed):
            check.short.append((uid, round(seconds, 3), round(needed, 3)))
        elif nominal is not None and seconds > nominal + tolerance(nominal):
            check.long.append((uid, round(seconds, 3), round(nominal, 3)))
        check.rows.append({"path": str(path.resolve()), "track_id": uid, "split": split, **labels})
    check.unreadable = sorted(set(check.unreadable))
    check.extra = sorted(str(p.relative_to(root)) for p in index.files if p not in matched)
    return check
