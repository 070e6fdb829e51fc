"""Label readers: key names, annotation files (beat times, chords: text/.lab or JAMS), chord classes.

Annotation files: beat times as text (first column) or JAMS (``beat``/``beat_position`` namespace);
chords as ``start end label`` .lab or JAMS (``chord``/``chord_harte`` namespace); chords reduced to
majmin + N as in the MIREX majmin evaluation (``mir_eval.chord``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mir_eval
import numpy as np

from mirkit.eval.tasks.specs import IGNORE, TaskDataError

# --------------------------------------------------------------------------- key names
PITCH_CLASS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
KEY_TONICS = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
KEY_CLASSES = tuple(f"{t} {m}" for m in ("major", "minor") for t in KEY_TONICS)   # 0..11 major, 12..23 minor
_KEY_RE = re.compile(r"^\s*([a-gA-G])\s*([#♯b♭]*)\s*[:\s_-]?\s*(major|minor|maj|min|m)?\s*$")


def normalise_key(label: str) -> str:
    """'d# minor', 'Eb:min', 'C#maj', 'A' -> canonical flat spelling ('Eb minor', 'Db major', 'A major')."""
    m = _KEY_RE.match(str(label))
    if not m:
        raise TaskDataError(f"key label {label!r}: expected e.g. 'C major' or 'A minor'")
    letter, accidentals, mode = m.groups()
    pc = PITCH_CLASS[letter.lower()] + sum(1 if a in "#♯" else -1 for a in accidentals)
    mode = "minor" if (mode or "major").lower() in ("minor", "min", "m") else "major"
    return f"{KEY_TONICS[pc % 12]} {mode}"


# --------------------------------------------------------------------------- annotation files
def read_jams(path: str | Path, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    """Observations ``{time, duration, value, confidence}`` of the first annotation in a JAMS file
    whose namespace is the earliest of ``namespaces`` present. JAMS is JSON, read with ``json``;
    ``data`` may be a list of observations (JAMS 0.3) or a dict of columns (older dense form)."""
    try:
        doc = json.loads(Path(path).read_text())
        annotations = doc.get("annotations", []) if isinstance(doc, dict) else []
        for ns in namespaces:
            for ann in annotations:
                if isinstance(ann, dict) and ann.get("namespace") == ns:
                    return _jams_observations(ann.get("data", []))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise TaskDataError(f"{path}: cannot read JAMS ({exc})") from exc
    found = sorted({a["namespace"] for a in annotations
                    if isinstance(a, dict) and isinstance(a.get("namespace"), str)})
    raise TaskDataError(f"{path}: no {' or '.join(namespaces)} annotation in this JAMS file "
                        f"(namespaces: {', '.join(found) or 'none'})")


def _jams_observations(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):   # dense: {"time": [...], "duration": [...], "value": [...], ...}
        n = len(data.get("time", []))
        return [{k: (v[i] if isinstance(v, list) and i < len(v) else None) for k, v in data.items()}
                for i in range(n)]
    return [dict(obs) for obs in data]


def is_jams(path: str | Path) -> bool:
    return str(path).lower().endswith(".jams")


def read_beats(path: str | Path) -> np.ndarray:
    """Beat times (s): from a JAMS file (``beat``, else ``beat_position`` namespace) or a text
    file whose first column is the time (.txt/.beats/.lab)."""
    if is_jams(path):
        obs = read_jams(path, ("beat", "beat_position"))
        try:
            return np.array(sorted(float(o["time"]) for o in obs))
        except (KeyError, TypeError, ValueError) as exc:
            raise TaskDataError(f"{path}: bad beat time in JAMS ({exc})") from exc
    try:
        rows = [line.split() for line in Path(path).read_text().splitlines()]
        return np.array(sorted(float(r[0]) for r in rows if r and not r[0].startswith("#")))
    except (OSError, ValueError) as exc:
        raise TaskDataError(f"{path}: cannot read beat times ({exc})") from exc


def read_chords(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Chord intervals (n, 2) and labels from a JAMS file (``chord``, else ``chord_harte``
    namespace; interval = [time, time + duration]) or a ``start end label`` .lab file."""
    if not is_jams(path):
        return read_lab(path)
    obs = read_jams(path, ("chord", "chord_harte"))
    try:
        obs = sorted(obs, key=lambda o: float(o["time"]))
        intervals = np.array([[float(o["time"]), float(o["time"]) + float(o["duration"])] for o in obs],
                             dtype=np.float64).reshape(-1, 2)
        labels = [str(o["value"]) for o in obs]
    except (KeyError, TypeError, ValueError) as exc:
        raise TaskDataError(f"{path}: bad chord observation in JAMS ({exc})") from exc
    if not labels:
        raise TaskDataError(f"{path}: the JAMS chord annotation is empty")
    return intervals, labels


def read_lab(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Chord intervals (n, 2) and labels from a ``start end label`` .lab file."""
    try:
        intervals, labels = mir_eval.io.load_labeled_intervals(str(path))
    except (OSError, ValueError) as exc:
        raise TaskDataError(f"{path}: cannot read chord lab ({exc})") from exc
    return intervals, list(labels)


CHORD_CLASSES = tuple(f"{t}:{q}" for q in ("maj", "min") for t in KEY_TONICS) + ("N",)   # 25


def chord_class(label: str) -> int:
    """majmin+N class of a chord label; IGNORE for chords outside the vocabulary (sus, dim, aug, X).

    A chord counts as major/minor when its triad has the major/minor third and the perfect fifth
    (so 7th chords fold onto their triad), as in the MIREX majmin reduction.
    """
    try:
        root, bitmap, _ = mir_eval.chord.encode(label)
    except mir_eval.chord.InvalidChordException as exc:
        raise TaskDataError(f"chord label {label!r}: {exc}") from exc
    if root < 0:
        return 24 if label.strip() == "N" else IGNORE   # N, or X (unknown)
    if bitmap[7] and bitmap[4] and not bitmap[3]:
        return root % 12
    if bitmap[7] and bitmap[3] and not bitmap[4]:
        return 12 + root % 12
    return IGNORE
