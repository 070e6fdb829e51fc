"""Deterministic synthetic music clips with key, tempo, timbre, beat and chord labels.

The first pipeline stage: a small labelled corpus for CI and demos that every later stage (mels,
pretraining, probing) can run on in minutes without downloading anything. Each clip is a diatonic
chord progression in one of the 24 major/minor keys, played by one main harmonic timbre (plus an
optional second timbre and bass line) over a drum pattern at a known tempo, with light noise.

Key, tempo, timbre, register, voicing, comping pattern, drum pattern and mix are drawn
independently, so no single cue gives a label away: a probe has to hear the pitch content to get
the key, the onsets to get the tempo and the spectrum/envelope to get the timbre.

Generation is split in two: :func:`plan_clip` draws every musical decision and the labels (cheap,
no audio), :func:`render_clip` turns a plan into samples with vectorised numpy (band-limited
wavetables, one ``irfft`` per note). Each clip has its own ``numpy.random.Generator`` seeded from
``(seed, clip index)``, so clip *i* does not depend on how many clips are generated and the same
seed gives byte-identical files.

Output layout (a manifest as in docs/architecture.md, "Data contracts")::

    out_dir/manifest.csv            path,split,key,tempo,timbre,seconds,beats,chords
    out_dir/clip_0000.wav           mono 16-bit PCM
    out_dir/clip_0000.beats.txt     one beat time (s) per line
    out_dir/clip_0000.chords.lab    "start end label" with mir_eval chord labels (C:maj, A:min/b3)
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from mirkit.errors import InputError, MirkitError
from mirkit.params import ParamsError, param

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "split", "key", "tempo", "timbre", "seconds", "beats", "chords")
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
TEMPO_RANGE = (70.0, 160.0)
CLIP_FILE = re.compile(r"^\.?clip_(\d+)\.(wav|beats\.txt|chords\.lab)(\.tmp)?$")

# ----------------------------------------------------------------------------- keys and chords

LETTERS = "CDEFGAB"
LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# Conventional key-signature spellings (no theoretical keys); mir_eval accepts all of them.
MAJOR_TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
KEYS = tuple(f"{t} major" for t in MAJOR_TONICS) + tuple(f"{t} minor" for t in MINOR_TONICS)
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
TRIADS = {"maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6)}
BASS_DEGREES = {"maj": ("1", "3", "5"), "min": ("1", "b3", "5"), "dim": ("1", "b3", "b5")}
ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")

# Diatonic progressions in Roman numerals (lower case = minor, ° = diminished). Minor keys use the
# harmonic-minor dominant (V major), which tells them apart from their relative major.
PROGRESSIONS = {
    "major": ("I IV V I", "I vi IV V", "vi IV I V", "ii V I I", "I V vi IV", "I IV ii V"),
    "minor": ("i iv V i", "i VI iv V", "i VII VI V", "ii° V i i", "i iv i V", "i VI VII i"),
}


def pitch_class(name: str) -> int:
    """Pitch class of a spelled note name such as ``Eb`` or ``F#``."""
    return (LETTER_PC[name[0]] + name.count("#") - name.count("b")) % 12


@dataclass(frozen=True)
class Chord:
    """A triad on a spelled root; ``inversion`` 0/1/2 puts the root/third/fifth in the bass."""
    root: str
    quality: str
    inversion: int = 0

    @property
    def pitch_classes(self) -> tuple[int, int, int]:
        """Chord tones from the bass up (rotated by the inversion)."""
        root = pitch_class(self.root)
        tones = [(root + i) % 12 for i in TRIADS[self.quality]]
        a, b, c = tones[self.inversion:] + tones[:self.inversion]
        return a, b, c

    @property
    def label(self) -> str:
        """The mir_eval / Harte label, e.g. ``C:maj``, ``A:min/b3``."""
        bass = f"/{BASS_DEGREES[self.quality][self.inversion]}" if self.inversion else ""
        return f"{self.root}:{self.quality}{bass}"


def spell_degree(key: str, degree: int) -> str:
    """The spelled root of scale degree ``degree`` (0-based) of ``key`` (one letter per degree)."""
    tonic, mode = key.split()
    letter = LETTERS[(LETTERS.index(tonic[0]) + degree) % 7]
    target = (pitch_class(tonic) + SCALES[mode][degree]) % 12
    accidental = {0: "", 1: "#", 2: "##", 11: "b", 10: "bb"}[(target - LETTER_PC[letter]) % 12]
    return letter + accidental


def parse_progression(key: str, numerals: str) -> list[Chord]:
    """``"i iv V i"`` in ``"A minor"`` -> [A:min, D:min, E:maj, A:min] (root position)."""
    chords = []
    for numeral in numerals.split():
        dim = numeral.endswith("°")
        bare = numeral.rstrip("°")
        quality = "dim" if dim else ("maj" if bare.isupper() else "min")
        chords.append(Chord(spell_degree(key, ROMAN.index(bare.upper())), quality))
    return chords


# ----------------------------------------------------------------------------- timbres

@dataclass(frozen=True)
class Timbre:
    """A harmonic spectrum and an envelope.

    ``harmonics[k]`` is the amplitude of partial ``k + 1``. ``pluck_tau`` replaces the ADSR
    sustain by an exponential decay (struck/plucked strings); ``bright_tau`` makes the partials
    above the second die faster than the body (string damping); ``chorus_cents`` renders two voices
    detuned by plus/minus that many cents (pads).
    """
    name: str
    harmonics: tuple[float, ...]
    attack: float
    decay: float
    sustain: float
    release: float
    pluck_tau: float | None = None
    bright_tau: float | None = None
    chorus_cents: float = 0.0


def _partials(levels: dict[int, float]) -> tuple[float, ...]:
    return tuple(levels.get(k, 0.0) for k in range(1, max(levels) + 1))


TIMBRES: dict[str, Timbre] = {t.name: t for t in (
    # drawbar organ: a few octave/fifth partials, instant on, full sustain
    Timbre("organ", _partials({1: 1.0, 2: 0.8, 3: 0.6, 4: 0.5, 6: 0.3, 8: 0.25}),
           attack=0.01, decay=0.05, sustain=0.9, release=0.06),
    # plucked string: rich spectrum, exponential decay, upper partials damped faster
    Timbre("pluck", tuple(1.0 / k ** 1.2 for k in range(1, 25)),
           attack=0.002, decay=0.05, sustain=1.0, release=0.08, pluck_tau=0.9, bright_tau=0.12),
    # bright sawtooth lead/brass: all partials at 1/k
    Timbre("saw", tuple(1.0 / k for k in range(1, 49)),
           attack=0.02, decay=0.25, sustain=0.7, release=0.15),
    # soft pad: nearly a sine, slow attack, long release, chorus
    Timbre("pad", (1.0, 0.12, 0.04),
           attack=0.35, decay=0.4, sustain=0.8, release=0.6, chorus_cents=8.0),
    # reed (clarinet-like): odd partials only
    Timbre("reed", _partials({k: 1.0 / k for k in range(1, 22, 2)}),
           attack=0.04, decay=0.1, sustain=0.85, release=0.1),
)}
BASS_TIMBRE = Timbre("bass", (1.0, 0.5, 0.25, 0.1), attack=0.005, decay=0.3, sustain=0.6,
                     release=0.08)
TABLE_SIZE = 2048
PHASE_ONE = 1 << 32                                # one period in phase-accumulator units
FRAC_BITS = 32 - TABLE_SIZE.bit_length() + 1      # accumulator bits below the table index

# Comping patterns: how a layer plays a chord during its span.
PATTERNS = ("sustain", "beats", "offbeats", "arpeggio")
BASS_PATTERNS = ("sustain", "half-notes", "eighths")
# Drum patterns on a 16-step grid per 4/4 bar.
DRUM_PATTERNS = {
    "rock": {"kick": (0, 8), "snare": (4, 12), "hat": tuple(range(0, 16, 2))},
    "four-on-the-floor": {"kick": (0, 4, 8, 12), "snare": (4, 12), "hat": (2, 6, 10, 14)},
    "half-time": {"kick": (0, 6, 10), "snare": (8,), "hat": tuple(range(0, 16, 2))},
    "sixteenths": {"kick": (0, 7, 8), "snare": (4, 12), "hat": tuple(range(16))},
}


# ----------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class Note:
    start: float      # seconds, song time (the clip starts at ClipPlan.offset)
    hold: float       # seconds until note-off (the release follows)
    midi: float
    velocity: float


@dataclass(frozen=True)
class Layer:
    timbre: Timbre
    notes: tuple[Note, ...]
    gain: float       # relative to the main layer (each layer is RMS-normalised before mixing)
    tilt: float       # extra spectral tilt: partial k scaled by k ** -tilt


@dataclass(frozen=True)
class DrumHit:
    time: float       # seconds, song time
    kind: str         # kick / snare / hat
    velocity: float


@dataclass(frozen=True)
class ClipPlan:
    """Every decision for one clip: its labels and what to render."""
    index: int
    key: str
    tempo: float
    timbre: str
    sample_rate: int
    n_samples: int
    offset: float                      # song time at which the clip starts (mid-bar phase)
    progression: str
    beats: tuple[float, ...]           # clip time
    chords: tuple[tuple[float, float, str], ...]   # clip time, covering [0, duration]
    layers: tuple[Layer, ...]          # main first, then optional second timbre and bass
    drums: tuple[DrumHit, ...]
    drum_gain: float
    snr_db: float
    peak: float

    @property
    def name(self) -> str:
        return f"clip_{self.index:04d}"

    @property
    def duration(self) -> float:
        return self.n_samples / self.sample_rate


def _balanced_choice(seed: int, index: int, options: tuple[str, ...], stream: int) -> str:
    """Option for clip ``index`` from shuffled blocks of all options (every block covers all)."""
    block, pos = divmod(index, len(options))
    order = np.random.default_rng([seed, block, stream]).permutation(len(options))
    return options[int(order[pos])]


def _voicing(chord: Chord, low: int, style: str) -> list[int]:
    """MIDI notes of ``chord`` stacked upwards from the first bass pitch class at or above ``low``."""
    notes: list[int] = []
    for pc in chord.pitch_classes:
        start = low if not notes else notes[-1] + 1
        notes.append(start + (pc - start) % 12)
    if style == "open":
        notes[1] += 12
    elif style == "doubled":
        notes.append(notes[0] + 12)
    return notes


def _comp(pattern: str, notes: list[int], start: float, span: float, beat: float,
          rng: np.random.Generator, up_down: bool) -> list[Note]:
    """Notes playing one chord (``notes``) for ``span`` seconds from ``start`` in ``pattern``."""
    out: list[Note] = []
    n_beats = max(1, int(round(span / beat)))
    if pattern == "sustain":
        vel = rng.uniform(0.75, 1.0)
        return [Note(start, span * 0.97, m, vel) for m in notes]
    if pattern in ("beats", "offbeats"):
        shift, hold = (0.0, 0.85 * beat) if pattern == "beats" else (0.5 * beat, 0.4 * beat)
        for b in range(n_beats):
            vel = rng.uniform(0.7, 0.9) * (1.2 if b % 4 == 0 else 1.0)
            out += [Note(start + b * beat + shift, hold, m, vel) for m in notes]
        return out
    order = notes + notes[-2:0:-1] if up_down else notes
    for s in range(2 * n_beats):
        vel = rng.uniform(0.7, 0.9) * (1.2 if s % 8 == 0 else 1.0)
        out.append(Note(start + s * beat / 2, 0.75 * beat, order[s % len(order)], vel))
    return out


def _bass_line(pattern: str, midi: int, start: float, span: float, beat: float,
               rng: np.random.Generator) -> list[Note]:
    if pattern == "sustain":
        return [Note(start, span * 0.95, midi, rng.uniform(0.8, 1.0))]
    step = 2 * beat if pattern == "half-notes" else beat / 2
    return [Note(start + i * step, step * 0.9, midi, rng.uniform(0.7, 1.0) * (1.15 if i == 0 else 1))
            for i in range(max(1, int(round(span / step))))]


def plan_clip(index: int, seed: int = 0, sample_rate: int = 22050, min_seconds: float = 6.0,
              max_seconds: float = 12.0) -> ClipPlan:
    """Draw the labels and musical content of clip ``index`` (no audio yet).

    Key and main timbre come from balanced shuffled blocks (every 24 consecutive clips cover all
    keys; every 5 cover all timbres); everything else from the clip's own generator, independent
    of the key.
    """
    rng = np.random.default_rng([seed, index, 0])
    key = _balanced_choice(seed, index, KEYS, stream=1)
    timbre = _balanced_choice(seed, index, tuple(TIMBRES), stream=2)
    mode = key.split()[1]

    tempo = round(float(rng.uniform(*TEMPO_RANGE)), 1)
    n_samples = max(1, int(round(rng.uniform(min_seconds, max_seconds) * sample_rate)))
    duration = n_samples / sample_rate
    beat = 60.0 / tempo
    bar = 4 * beat
    offset = float(rng.uniform(0.0, bar))           # clips start anywhere in a bar
    bars_per_chord = float(rng.choice([0.5, 1.0, 1.0, 2.0] if tempo < 100 else [1.0, 1.0, 2.0]))
    span = bars_per_chord * bar

    numerals = str(rng.choice(PROGRESSIONS[mode]))
    chords = [Chord(c.root, c.quality, int(rng.choice(3, p=[0.6, 0.25, 0.15])))
              for c in parse_progression(key, numerals)]

    tuning = float(rng.uniform(-15.0, 15.0))        # cents, whole clip
    low = int(rng.integers(45, 59))                 # register of the main voicing
    style = str(rng.choice(["close", "open", "doubled"]))
    pattern = str(rng.choice(PATTERNS))
    up_down = bool(rng.random() < 0.5)
    second = rng.random() < 0.5
    second_timbre = str(rng.choice([t for t in TIMBRES if t != timbre]))
    second_pattern = str(rng.choice([p for p in PATTERNS if p != pattern]))
    has_bass = rng.random() < 0.75
    bass_low = int(rng.integers(31, 41))
    bass_pattern = str(rng.choice(BASS_PATTERNS))

    end = offset + duration
    n_spans = int(np.ceil(end / span))
    main: list[Any] = []
    extra: list[Any] = []
    bass: list[Any] = []
    segments: list[Any] = []
    for k in range(n_spans):
        chord = chords[k % len(chords)]
        t0 = k * span
        voicing = _voicing(chord, low, style)
        main += _comp(pattern, voicing, t0, span, beat, rng, up_down)
        if second:
            extra += _comp(second_pattern, [m + 12 for m in voicing], t0, span, beat, rng, up_down)
        if has_bass:
            bass_midi = bass_low + (chord.pitch_classes[0] - bass_low) % 12
            bass += _bass_line(bass_pattern, bass_midi, t0, span, beat, rng)
        a, b = max(t0, offset) - offset, min(t0 + span, end) - offset
        if segments and segments[-1][2] == chord.label:
            segments[-1] = (segments[-1][0], b, chord.label)
        elif b > a:
            segments.append((a, b, chord.label))
    segments[-1] = (segments[-1][0], duration, segments[-1][2])

    def tuned(notes: list[Note]) -> tuple[Note, ...]:
        return tuple(Note(n.start, n.hold, n.midi + tuning / 100.0, n.velocity) for n in notes)

    layers = [Layer(TIMBRES[timbre], tuned(main), 1.0, float(rng.uniform(0.0, 0.6)))]
    if second:
        layers.append(Layer(TIMBRES[second_timbre], tuned(extra), float(rng.uniform(0.2, 0.45)),
                            float(rng.uniform(0.0, 0.6))))
    if has_bass:
        layers.append(Layer(BASS_TIMBRE, tuned(bass), float(rng.uniform(0.3, 0.7)), 0.0))

    drum_pattern = DRUM_PATTERNS[str(rng.choice(list(DRUM_PATTERNS)))]
    hits = []
    for b in range(int(np.ceil(end / bar))):
        for kind, steps in drum_pattern.items():
            for s in steps:
                accent = 1.4 if s == 0 else (1.1 if s % 4 == 0 else 1.0)   # beat 1 accented
                hits.append(DrumHit(b * bar + s * beat / 4, kind,
                                    float(rng.uniform(0.8, 1.0)) * accent))
    first_beat = int(np.ceil(offset / beat - 1e-9))
    beats = tuple(k * beat - offset for k in range(first_beat, int(np.ceil(end / beat)) + 1)
                  if offset <= k * beat < end)

    return ClipPlan(index=index, key=key, tempo=tempo, timbre=timbre, sample_rate=sample_rate,
                    n_samples=n_samples, offset=offset, progression=numerals, beats=beats,
                    chords=tuple(segments), layers=tuple(layers), drums=tuple(hits),
                    drum_gain=float(rng.uniform(0.3, 0.8)), snr_db=float(rng.uniform(30.0, 50.0)),
                    peak=float(rng.uniform(0.3, 0.95)))


# ----------------------------------------------------------------------------- rendering

def _wavetable(amps: np.ndarray, f0: float, sample_rate: int) -> np.ndarray:
    """One period of the partials below 0.45 * sample_rate (band-limited), plus a wrap sample."""
    k = np.arange(1, len(amps) + 1)
    spectrum = np.zeros(TABLE_SIZE // 2 + 1, dtype=complex)
    spectrum[1:len(amps) + 1] = np.where(k * f0 < 0.45 * sample_rate, amps, 0.0) * (-0.5j * TABLE_SIZE)
    table = np.fft.irfft(spectrum, n=TABLE_SIZE)
    return np.append(table, table[0])


def _envelope(t: np.ndarray, hold: float, tb: Timbre) -> np.ndarray:
    """ADSR (or attack + exponential decay for plucks) until ``hold``, then a linear release."""
    def body(x: np.ndarray) -> np.ndarray:
        if tb.pluck_tau:
            return np.minimum(x / tb.attack, 1.0) * np.exp(-x / tb.pluck_tau)
        return np.interp(x, [0.0, tb.attack, tb.attack + tb.decay], [0.0, 1.0, tb.sustain])
    n_hold = int(np.searchsorted(t, hold))
    env = np.empty(len(t))
    env[:n_hold] = body(t[:n_hold])
    at_off = body(np.array([hold]))[0]
    env[n_hold:] = np.interp(t[n_hold:], [hold, hold + tb.release], [at_off, 0.0])
    return env


def _lookup(table: np.ndarray, idx: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Linear interpolation in a wavetable (float32: the table spans about +-2)."""
    table = table.astype(np.float32)
    lo = table[idx]
    hi = table[idx + 1]
    hi -= lo
    hi *= frac
    hi += lo
    return hi


def render_note(tb: Timbre, note: Note, sample_rate: int, tilt: float, phase: float,
                max_samples: int) -> np.ndarray:
    """One note of timbre ``tb``: wavetable oscillator(s) times the envelope."""
    n = min(max_samples, int(round((note.hold + tb.release) * sample_rate)))
    if n <= 0:
        return np.zeros(0)
    t = np.arange(n) / sample_rate
    amps = np.asarray(tb.harmonics) * np.arange(1, len(tb.harmonics) + 1) ** -tilt
    f0 = 440.0 * 2.0 ** ((note.midi - 69.0) / 12.0)
    out = np.zeros(n)
    detunes = (-tb.chorus_cents, tb.chorus_cents) if tb.chorus_cents else (0.0,)
    for cents in detunes:
        f = f0 * 2.0 ** (cents / 1200.0)
        # 32-bit integer phase accumulator: exact, fast, and the top bits index the table
        step = np.uint64(int(round(f / sample_rate * PHASE_ONE)))
        acc = np.arange(n, dtype=np.uint64) * step + np.uint64(int(phase * PHASE_ONE))
        acc &= np.uint64(PHASE_ONE - 1)
        idx = (acc >> np.uint64(FRAC_BITS)).astype(np.int32)
        frac = (acc & np.uint64((1 << FRAC_BITS) - 1)).astype(np.float32) * np.float32(2.0 ** -FRAC_BITS)
        if tb.bright_tau:
            body, bright = amps.copy(), amps.copy()
            body[2:], bright[:2] = 0.0, 0.0
            out += _lookup(_wavetable(body, f, sample_rate), idx, frac)
            out += _lookup(_wavetable(bright, f, sample_rate), idx, frac) * np.exp(-t / tb.bright_tau)
        else:
            out += _lookup(_wavetable(amps, f, sample_rate), idx, frac)
    return out * _envelope(t, note.hold, tb) * (note.velocity / len(detunes))


def _drum_kits(rng: np.random.Generator, sample_rate: int) -> dict[str, np.ndarray]:
    """Kick (pitch-swept thump + click), snare (band-passed noise + tone), hat (high-passed noise)."""
    def seconds(s: float) -> np.ndarray:
        return np.arange(int(s * sample_rate)) / sample_rate

    def filtered_noise(n: int, lo: float, hi: float) -> np.ndarray:
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        return np.fft.irfft(spec * ((freqs >= lo) & (freqs <= hi)), n=n)

    nyq = sample_rate / 2
    t = seconds(0.35)
    f_start, f_end = rng.uniform(100, 160), rng.uniform(40, 60)
    freq = f_end + (f_start - f_end) * np.exp(-t / 0.035)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / rng.uniform(0.12, 0.25))
    kick += 0.3 * rng.standard_normal(len(t)) * np.exp(-t / 0.003)
    t = seconds(0.25)
    snare = filtered_noise(len(t), 1500.0, min(6000.0, 0.9 * nyq)) * np.exp(-t / rng.uniform(0.06, 0.12))
    snare += 0.6 * np.sin(2 * np.pi * rng.uniform(170, 220) * t) * np.exp(-t / 0.04)
    t = seconds(0.08)
    hat = filtered_noise(len(t), min(6000.0, 0.6 * nyq), nyq) * np.exp(-t / rng.uniform(0.015, 0.035))
    level = {"kick": 1.0, "snare": 0.7, "hat": 0.3}
    return {k: level[k] * v / (np.abs(v).max() + 1e-12)
            for k, v in (("kick", kick), ("snare", snare), ("hat", hat))}


def _add(buf: np.ndarray, start: int, signal: np.ndarray) -> None:
    if start >= len(buf) or len(signal) == 0:
        return
    end = min(len(buf), start + len(signal))
    buf[start:end] += signal[:end - start]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0   # no BLAS: no thread pool


def render_clip(plan: ClipPlan, seed: int = 0) -> np.ndarray:
    """The clip's samples as int16 (peak-normalised to ``plan.peak``, never clipping)."""
    rng = np.random.default_rng([seed, plan.index, 1])
    sr = plan.sample_rate
    skip = int(round(plan.offset * sr))
    length = skip + plan.n_samples
    mix = np.zeros(plan.n_samples)
    for layer in plan.layers:
        buf = np.zeros(length)
        cache: dict[tuple[float, float], np.ndarray] = {}   # repeated strikes reuse one rendering
        for note in layer.notes:
            start = int(round(note.start * sr))
            if start >= length:
                continue
            shape = (note.midi, note.hold)
            if shape not in cache:
                unit = Note(0.0, note.hold, note.midi, 1.0)
                cache[shape] = render_note(layer.timbre, unit, sr, layer.tilt, float(rng.random()),
                                           length)
            _add(buf, start, note.velocity * cache[shape])
        part = buf[skip:]
        if _rms(part) > 0:
            mix += layer.gain * part / _rms(part)
    kits = _drum_kits(rng, sr)
    drums = np.zeros(length)
    for hit in plan.drums:
        _add(drums, int(round(hit.time * sr)), hit.velocity * kits[hit.kind])
    drums = drums[skip:]
    if _rms(drums) > 0:
        mix += plan.drum_gain * drums / _rms(drums)
    mix += rng.standard_normal(plan.n_samples) * max(_rms(mix), 1e-3) * 10 ** (-plan.snr_db / 20)
    mix *= plan.peak / max(np.abs(mix).max(), 1e-12)
    return np.round(mix * 32767).astype(np.int16)


# ----------------------------------------------------------------------------- splits and output

def assign_splits(keys: list[str], fractions: tuple[float, ...] = SPLIT_FRACTIONS) -> list[str]:
    """Deterministic split per clip, stratified by key.

    Clips are ordered by (key, index) and dealt to the split furthest below its target share, so
    every key's clips are spread over the splits in the global proportions.
    """
    order = sorted(range(len(keys)), key=lambda i: (KEYS.index(keys[i]), i))
    counts = [0] * len(fractions)
    splits = [""] * len(keys)
    for j, i in enumerate(order):
        s = int(np.argmax([f * (j + 1) - c for f, c in zip(fractions, counts, strict=True)]))
        counts[s] += 1
        splits[i] = SPLITS[s]
    return splits


@dataclass(frozen=True)
class ClipInfo:
    """One manifest row."""
    name: str
    split: str
    key: str
    tempo: float
    timbre: str
    duration: float

    def row(self) -> dict[str, str]:
        return {"path": f"{self.name}.wav", "split": self.split, "key": self.key,
                "tempo": f"{self.tempo:.1f}", "timbre": self.timbre,
                "seconds": f"{self.duration:.6f}", "beats": f"{self.name}.beats.txt",
                "chords": f"{self.name}.chords.lab"}


@dataclass(frozen=True)
class SynthResult:
    manifest: Path
    n_clips: int
    total_seconds: float
    split_counts: dict[str, int]
    clips: tuple[ClipInfo, ...]

    def counts(self, column: str) -> dict[str, Counter]:
        """``{value: Counter(split -> clips)}`` for a label column (``key`` or ``timbre``)."""
        out: dict[str, Counter] = {}
        for c in self.clips:
            out.setdefault(getattr(c, column), Counter())[c.split] += 1
        return out


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _remove_stale(out_dir: Path, n_clips: int) -> None:
    """Delete clip files (and temp leftovers) from an earlier run with more clips."""
    for path in out_dir.iterdir():
        m = CLIP_FILE.match(path.name)
        if m and (int(m.group(1)) >= n_clips or m.group(3)):
            path.unlink(missing_ok=True)


def synthesize(out_dir: Path, n_clips: int = 120, seed: int = 0, sample_rate: int = 22050,
               min_seconds: float = 6.0, max_seconds: float = 12.0,
               on_clip: Callable[[ClipInfo], None] | None = None) -> SynthResult:
    """Write ``n_clips`` labelled clips and ``manifest.csv`` into ``out_dir``.

    Any old manifest is removed first and the new one written last (each file via temp +
    rename), so an interrupted run leaves no manifest pointing at missing or partial files.
    ``on_clip`` is called after each clip is on disk (progress bars).
    """
    if n_clips < 1:
        raise InputError(f"n_clips={n_clips}: must be >= 1")
    if not 0 < min_seconds <= max_seconds:
        raise InputError(f"min_seconds={min_seconds}, max_seconds={max_seconds}: "
                         "need 0 < min_seconds <= max_seconds")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    manifest.unlink(missing_ok=True)

    plans = [plan_clip(i, seed, sample_rate, min_seconds, max_seconds) for i in range(n_clips)]
    splits = assign_splits([p.key for p in plans])
    clips = []
    for plan, split in zip(plans, splits, strict=True):
        audio = render_clip(plan, seed)

        def write_wav(tmp: Path, audio: np.ndarray = audio) -> None:
            sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")

        _write_atomic(out_dir / f"{plan.name}.wav", write_wav)
        _write_text(out_dir / f"{plan.name}.beats.txt", "".join(f"{t:.6f}\n" for t in plan.beats))
        _write_text(out_dir / f"{plan.name}.chords.lab",
                    "".join(f"{a:.6f} {b:.6f} {label}\n" for a, b, label in plan.chords))
        info = ClipInfo(plan.name, split, plan.key, plan.tempo, plan.timbre, plan.duration)
        clips.append(info)
        if on_clip is not None:
            on_clip(info)

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(c.row() for c in clips)
    _write_text(manifest, buf.getvalue())
    _remove_stale(out_dir, n_clips)
    return SynthResult(manifest=manifest, n_clips=n_clips,
                       total_seconds=float(sum(c.duration for c in clips)),
                       split_counts={s: sum(c.split == s for c in clips) for s in SPLITS},
                       clips=tuple(clips))


# ------------------------------------------------------------------------------------ the stage
SECTION = "synth"


@dataclass
class SynthParams:
    """Section ``synth`` of params.yaml."""
    out: str = param("data/samples", help="output folder for clips, annotations and manifest.csv")
    n_clips: int = param(120, ge=24, help="number of clips (at least 24, so every key appears)")
    seed: int = param(0, ge=0, help="random seed; the same seed gives byte-identical output")
    sample_rate: int = param(22050, ge=8000, le=96000, help="sample rate of the WAV files (Hz)")
    min_seconds: float = param(6.0, gt=0, le=600, help="shortest clip (s)")
    max_seconds: float = param(12.0, gt=0, le=600, help="longest clip (s)")

    def check(self) -> None:
        if self.max_seconds < self.min_seconds:
            raise ParamsError(f"{SECTION}.max_seconds={self.max_seconds!r}: must be >= "
                              f"{SECTION}.min_seconds ({self.min_seconds!r})")


def run(p: SynthParams, on_clip: Callable[[ClipInfo], None] | None = None) -> SynthResult:
    """The ``synth`` stage: :func:`synthesize` with the parameters of section ``synth``; a folder
    that cannot be written is a one-line :class:`~mirkit.errors.MirkitError`."""
    try:
        return synthesize(Path(p.out), n_clips=p.n_clips, seed=p.seed, sample_rate=p.sample_rate,
                          min_seconds=p.min_seconds, max_seconds=p.max_seconds, on_clip=on_clip)
    except OSError as exc:
        raise MirkitError(f"synth: cannot write {p.out} ({exc})") from None
