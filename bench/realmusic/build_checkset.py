"""Build the real-music check set: Bach chorales from music21's corpus, rendered with a GM SoundFont.

Source: the four-part chorales that the ``music21`` wheel ships (``music21.corpus.getComposer('bach')``,
MusicXML, public domain). Every label comes from the score or from the rendering choice, never from
audio analysis:

- ``key``: the score's own key (its first ``Key`` object: key signature plus the mode written in the
  file), transposed by the semitone shift the clip is rendered at. Chorales whose key is not written
  as major/minor are skipped. The shift (-5..+6 semitones) is drawn per clip, so the 24 keys are
  covered and the key is not confounded with the tune.
- ``family``: the General MIDI instrument family that plays all four voices (piano, organ, guitar,
  strings, brass, reed, pipe), two GM programs per family; drawn round-robin so families are balanced.
- ``tempo``: the quarter-note BPM the MIDI file is rendered at (uniform 60..120).

Splits are by chorale (70 % train, 10 % valid, 20 % test, from a seeded permutation), so no score is
heard in two splits. Audio: the first ``--seconds`` of the rendering (``fluidsynth``, Debian's
``fluid-soundfont-gm``), mono, peak-normalised, FLAC. The MIDI writer is a minimal Standard MIDI File
(format 0) writer of our own.

Everything lands in a cache folder outside git (``$MIRKIT_CACHE`` or ``~/.cache/mirkit``,
``checkset-realmusic-v1``); a re-run reuses clips already rendered and rebuilds only what is missing.
``build.json`` records the parameters and the music21/fluidsynth versions.

    python bench/realmusic/build_checkset.py   # 410 clips; ~1.3 s each on an idle core (parse + fluidsynth)
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VERSION = "realmusic-v1"
FAMILIES: dict[str, tuple[int, int]] = {   # GM programs (0-based) per instrument family
    "piano": (0, 1), "organ": (19, 16), "guitar": (24, 25), "strings": (48, 49),
    "brass": (61, 62), "reed": (65, 71), "pipe": (73, 74),
}
# conventional spellings, as mirkit.eval.tasks.normalise_key writes them
TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
DEFAULT_SF2 = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


def default_out() -> Path:
    base = Path(os.environ.get("MIRKIT_CACHE") or Path.home() / ".cache" / "mirkit")
    return base / f"checkset-{VERSION}"


# ----------------------------------------------------------------------------- MIDI writer
def _varlen(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(notes: list[tuple[float, float, int]], bpm: float, program: int, tpq: int = 480,
               velocity: int = 80) -> bytes:
    """A format-0 Standard MIDI File: one tempo, one program on channel 0, notes (onset, length in
    quarter notes, MIDI pitch)."""
    events: list[tuple[int, int, bytes]] = []   # (tick, order, data): note-offs before note-ons at a tick
    for onset, length, pitch in notes:
        on, off = round(onset * tpq), round((onset + length) * tpq)
        if off <= on or not 0 <= pitch < 128:
            continue
        events.append((on, 1, bytes((0x90, pitch, velocity))))
        events.append((off, 0, bytes((0x80, pitch, 0))))
    events.sort(key=lambda e: (e[0], e[1]))
    usec = round(60_000_000 / bpm)
    track = b"\x00\xff\x51\x03" + usec.to_bytes(3, "big") + b"\x00" + bytes((0xC0, program))
    tick = 0
    for t, _, data in events:
        track += _varlen(t - tick) + data
        tick = t
    track += b"\x00\xff\x2f\x00"
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq)
            + b"MTrk" + struct.pack(">I", len(track)) + track)


# ----------------------------------------------------------------------------- scores
def score_notes(path: Path) -> tuple[int, str, list[tuple[float, float, int]]] | None:
    """(tonic pitch class, mode, notes) of a chorale, or None when its key is not major/minor."""
    from music21 import corpus, key

    s = corpus.parse(str(path))
    flat = s.flatten()
    keys = [k for k in flat.getElementsByClass(key.Key)]
    if not keys or keys[0].mode not in ("major", "minor"):
        return None
    k = keys[0]
    notes = []
    for n in flat.notes:
        for p in n.pitches:
            if n.duration.quarterLength > 0:
                notes.append((float(n.offset), float(n.duration.quarterLength), int(p.midi)))
    return k.tonic.pitchClass, str(k.mode), notes


def render(mid: bytes, sf2: str, sample_rate: int, seconds: float) -> np.ndarray:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        mpath, wpath = Path(tmp) / "x.mid", Path(tmp) / "x.wav"
        mpath.write_bytes(mid)
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(sample_rate), "-F", str(wpath),
                        sf2, str(mpath)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wave, sr = sf.read(str(wpath), dtype="float32", always_2d=True)
    assert sr == sample_rate, (sr, sample_rate)
    wave = wave.mean(axis=1)[: int(seconds * sample_rate)]
    peak = float(np.abs(wave).max())
    return wave / peak * 0.9 if peak > 0 else wave


def _split(order: int, n: int) -> str:
    frac = order / n
    return "train" if frac < 0.7 else "valid" if frac < 0.8 else "test"


def build(out: Path, seconds: float, min_seconds: float, sample_rate: int, seed: int, sf2: str,
          limit: int | None) -> Path:
    import music21
    import soundfile as sf
    from music21 import corpus

    if shutil.which("fluidsynth") is None:
        sys.exit("fluidsynth not found: apt-get install -y fluidsynth fluid-soundfont-gm")
    if not Path(sf2).exists():
        sys.exit(f"{sf2}: SoundFont not found (apt-get install -y fluid-soundfont-gm, or pass --soundfont)")
    paths = sorted({Path(p) for p in corpus.getComposer("bach") if str(p).endswith((".mxl", ".xml"))},
                   key=lambda p: p.name)
    if limit:
        paths = paths[:limit]
    rng = np.random.default_rng(seed)
    order = np.empty(len(paths), dtype=int)
    order[rng.permutation(len(paths))] = np.arange(len(paths))
    (out / "audio").mkdir(parents=True, exist_ok=True)
    fams = list(FAMILIES)
    rows, skipped = [], []
    for i, path in enumerate(paths):
        name = path.stem.replace(".", "_")
        crng = np.random.default_rng([seed, i])
        shift = int(crng.integers(-5, 7))
        bpm = float(np.round(crng.uniform(60, 120), 1))
        family = fams[i % len(fams)]
        program = FAMILIES[family][int(crng.integers(0, 2))]
        rel = f"audio/{name}.flac"
        got = score_notes(path)
        if got is None:
            skipped.append((path.name, "key not written as major/minor"))
            continue
        tonic, mode, notes = got
        dest = out / rel
        if not dest.exists():
            end = (seconds + 1.0) * bpm / 60.0   # quarters: render only what the clip keeps
            kept = [(o, min(d, end - o), p + shift) for o, d, p in notes if o < end]
            wave = render(midi_bytes(kept, bpm, program), sf2, sample_rate, seconds)
            if len(wave) < min_seconds * sample_rate:
                skipped.append((path.name, f"rendering shorter than {min_seconds} s"))
                continue
            tmp = dest.with_suffix(".part.flac")
            sf.write(str(tmp), wave, sample_rate, subtype="PCM_16")
            tmp.replace(dest)
        dur = sf.info(str(dest)).duration
        rows.append({"path": rel, "split": _split(int(order[i]), len(paths)),
                     "key": f"{TONICS[(tonic + shift) % 12]} {mode}", "family": family,
                     "tempo": bpm, "program": program, "shift": shift, "seconds": round(dur, 3),
                     "source": f"music21:corpus/bach/{path.name}"})
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(paths)} chorales", flush=True)
    manifest = out / "manifest.csv"
    tmpm = manifest.with_suffix(".part")
    with open(tmpm, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmpm.replace(manifest)
    fsv = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True).stdout.splitlines()
    info = {"version": VERSION, "seconds": seconds, "min_seconds": min_seconds, "sample_rate": sample_rate,
            "seed": seed, "soundfont": sf2, "soundfont_md5": hashlib.md5(Path(sf2).read_bytes()).hexdigest(),
            "music21": music21.__version__, "fluidsynth": fsv[0] if fsv else "?", "clips": len(rows),
            "splits": {s: sum(r["split"] == s for r in rows) for s in ("train", "valid", "test")},
            "skipped": skipped}
    (out / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{len(rows)} clips ({info['splits']}), {len(skipped)} skipped -> {manifest}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=default_out(), help="cache folder (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=20.0, help="clip length: the first N s of each rendering")
    ap.add_argument("--min-seconds", type=float, default=12.0, help="drop renderings shorter than this")
    ap.add_argument("--sample-rate", type=int, default=22050)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--soundfont", default=DEFAULT_SF2)
    ap.add_argument("--limit", type=int, default=None, help="first N chorales only (smoke tests)")
    a = ap.parse_args(argv)
    build(a.out, a.seconds, a.min_seconds, a.sample_rate, a.seed, a.soundfont, a.limit)


if __name__ == "__main__":
    main()
