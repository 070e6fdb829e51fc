"""Tests for the synthetic sample generator (mirkit.data.synth) and the ``mirkit synth`` command."""

import csv
import hashlib
from pathlib import Path

import mir_eval
import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from mirkit.cli import app
from mirkit.data.synth import (
    KEYS,
    MANIFEST_COLUMNS,
    SPLITS,
    TEMPO_RANGE,
    TIMBRES,
    assign_splits,
    pitch_class,
    plan_clip,
    synthesize,
)

SMALL = dict(n_clips=24, sample_rate=8000, min_seconds=2.0, max_seconds=4.0)


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    result = synthesize(out, seed=0, **SMALL)
    return out, result, read_manifest(result.manifest)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_bytes_and_other_seed_differs(corpus, tmp_path):
    out, _, _ = corpus
    again = synthesize(tmp_path / "again", seed=0, **SMALL)
    other = synthesize(tmp_path / "other", seed=1, **SMALL)
    assert digest(out) == digest(again.manifest.parent)
    first, second = digest(out), digest(other.manifest.parent)
    changed = [n for n in first if n.endswith(".wav") and first[n] != second.get(n)]
    assert len(changed) == SMALL["n_clips"]
    assert first["manifest.csv"] != second["manifest.csv"]


def test_rerun_with_fewer_clips_removes_stale_files_and_matches_fresh_run(tmp_path):
    tiny = dict(sample_rate=8000, min_seconds=0.5, max_seconds=1.0)
    synthesize(tmp_path / "a", n_clips=6, seed=3, **tiny)
    synthesize(tmp_path / "a", n_clips=4, seed=3, **tiny)
    synthesize(tmp_path / "b", n_clips=4, seed=3, **tiny)
    assert not list((tmp_path / "a").glob("clip_0004*")) and not list((tmp_path / "a").glob("clip_0005*"))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_interrupted_run_leaves_no_manifest(tmp_path):
    tiny = dict(sample_rate=8000, min_seconds=0.5, max_seconds=1.0)
    synthesize(tmp_path, n_clips=3, seed=0, **tiny)
    assert (tmp_path / "manifest.csv").exists()

    def crash(info):
        if info.name == "clip_0001":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, n_clips=3, seed=5, **tiny, on_clip=crash)
    assert not (tmp_path / "manifest.csv").exists()
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- manifest and files

def test_manifest_columns_and_paths_resolve(corpus):
    out, result, rows = corpus
    with open(result.manifest, newline="") as f:
        assert tuple(next(csv.reader(f))) == MANIFEST_COLUMNS
    assert len(rows) == result.n_clips == SMALL["n_clips"]
    assert {r["split"] for r in rows} <= set(SPLITS)
    assert result.split_counts == {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    for row in rows:
        for column in ("path", "beats", "chords"):
            assert (out / row[column]).is_file(), row[column]
        info = sf.info(out / row["path"])
        assert (info.samplerate, info.channels, info.subtype, info.format) == (8000, 1, "PCM_16", "WAV")
        assert info.frames / info.samplerate == pytest.approx(float(row["seconds"]), abs=1e-5)
        audio = sf.read(out / row["path"], dtype="int16")[0]
        assert 0 < np.abs(audio.astype(int)).max() < 32767      # peak-normalised, never clipping
        assert row["timbre"] in TIMBRES
    assert result.total_seconds == pytest.approx(sum(float(r["seconds"]) for r in rows))


def test_labels_are_valid_mir_eval_and_cover_the_clip(corpus):
    out, _, rows = corpus
    for row in rows:
        mir_eval.key.validate_key(row["key"])
        duration, tempo = float(row["seconds"]), float(row["tempo"])
        beats = np.loadtxt(out / row["beats"], ndmin=1)
        assert beats.min() >= 0 and beats.max() < duration
        assert np.median(np.diff(beats)) == pytest.approx(60.0 / tempo, abs=1e-4)
        intervals, labels = mir_eval.io.load_labeled_intervals(str(out / row["chords"]))
        for label in labels:
            mir_eval.chord.encode(label)
        assert intervals[0, 0] == 0.0 and intervals[-1, 1] == pytest.approx(duration, abs=1e-5)
        np.testing.assert_allclose(intervals[1:, 0], intervals[:-1, 1])
        assert np.all(intervals[:, 1] > intervals[:, 0])


def test_chord_roots_belong_to_the_key(corpus):
    """Every chord root is a degree of the key's (natural minor or major) scale."""
    out, _, rows = corpus
    scales = {"major": {0, 2, 4, 5, 7, 9, 11}, "minor": {0, 2, 3, 5, 7, 8, 10}}
    for row in rows:
        tonic, mode = row["key"].split()
        _, labels = mir_eval.io.load_labeled_intervals(str(out / row["chords"]))
        for label in labels:
            root = mir_eval.chord.encode(label)[0]
            assert (root - pitch_class(tonic)) % 12 in scales[mode], (row["key"], label)


# ----------------------------------------------------------------------------- labels vs audio

def chroma(audio: np.ndarray, sr: int, n_fft: int = 2048) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::n_fft // 2] * np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(frames, axis=1)).sum(axis=0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    keep = (freqs > 60) & (freqs < 2000)
    pcs = np.round(12 * np.log2(freqs[keep] / 440.0) + 69).astype(int) % 12
    return np.bincount(pcs, weights=mag[keep], minlength=12)


def tonic_triad(key: str) -> np.ndarray:
    tonic, mode = key.split()
    template = np.zeros(12)
    template[[(pitch_class(tonic) + i) % 12 for i in (0, 4 if mode == "major" else 3, 7)]] = 1
    return template


def test_chroma_matches_the_key_tonic_triad_far_above_chance(corpus):
    out, _, rows = corpus
    hits = 0
    for row in rows:
        audio, sr = sf.read(out / row["path"])
        c = chroma(audio, sr)
        c = (c - c.mean()) / c.std()
        best = max(KEYS, key=lambda k: float(c @ tonic_triad(k)))
        hits += best == row["key"]
    assert hits / len(rows) > 4 / len(KEYS)      # chance is 1/24


def test_onsets_line_up_with_annotated_beats(corpus):
    """Energy onsets are strongest on the annotated beats: stronger than on the eighth-note
    offbeats (hats and comping) and than on the sixteenths, so the beat labels are neither shifted
    nor at double/half tempo."""
    out, _, rows = corpus
    hop = 64
    on_beat, offbeat, sixteenth = [], [], []
    for row in rows:
        audio, sr = sf.read(out / row["path"])
        energy = np.add.reduceat(audio ** 2, np.arange(0, len(audio), hop))
        flux = np.maximum(np.diff(energy, prepend=0.0), 0.0)
        flux /= flux.mean()
        beats = np.loadtxt(out / row["beats"], ndmin=1)
        period = 60.0 / float(row["tempo"])

        def strength(times, sr=sr, flux=flux):
            frames = np.round(np.asarray(times) * sr / hop).astype(int)
            frames = frames[(frames >= 2) & (frames < len(flux) - 2)]
            return [flux[f - 2:f + 3].max() for f in frames]

        on_beat += strength(beats)
        offbeat += strength(beats + 0.5 * period)
        sixteenth += strength(beats + 0.25 * period)
    assert np.mean(on_beat) > 3.0                  # flux is normalised to mean 1 per clip
    assert np.mean(on_beat) > 1.2 * np.mean(offbeat)
    assert np.mean(on_beat) > 2.0 * np.mean(sixteenth)


# ----------------------------------------------------------------------------- plans and splits

def test_default_corpus_covers_all_keys_and_timbres_with_varied_tempo_and_length():
    plans = [plan_clip(i, seed=0) for i in range(120)]
    assert {p.key for p in plans} == set(KEYS)
    assert {p.timbre for p in plans} == set(TIMBRES)
    durations = np.array([p.duration for p in plans])
    tempos = np.array([p.tempo for p in plans])
    assert durations.min() >= 6.0 and durations.max() <= 12.0 and durations.std() > 1.0
    assert tempos.min() >= TEMPO_RANGE[0] and tempos.max() <= TEMPO_RANGE[1] and tempos.std() > 15
    # key does not give the timbre, tempo or progression away
    for key in KEYS:
        same_key = [p for p in plans if p.key == key]
        assert len({p.timbre for p in same_key}) >= 2
        assert len({p.tempo for p in same_key}) == len(same_key)
    assert len({p.progression for p in plans}) >= 10


def test_clip_does_not_depend_on_corpus_size(tmp_path):
    tiny = dict(sample_rate=8000, min_seconds=0.5, max_seconds=1.0, seed=9)
    small, large = digest(synthesize(tmp_path / "small", n_clips=2, **tiny).manifest.parent), \
        digest(synthesize(tmp_path / "large", n_clips=4, **tiny).manifest.parent)
    clip_files = [n for n in small if n.startswith("clip_")]
    assert len(clip_files) == 6
    assert all(small[n] == large[n] for n in clip_files)


def test_splits_are_stratified_by_key():
    keys = [plan_clip(i, seed=0).key for i in range(120)]
    splits = assign_splits(keys)
    counts = {s: splits.count(s) for s in SPLITS}
    assert counts == {"train": 84, "valid": 18, "test": 18}
    for key in KEYS:
        assert "train" in {s for k, s in zip(keys, splits, strict=True) if k == key}
    assert splits == assign_splits(keys)


# ----------------------------------------------------------------------------- command line

def write_params(tmp_path: Path, **section) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"synth": section}))
    return path


def test_cli_writes_corpus_and_summary(tmp_path):
    params = write_params(tmp_path, out=str(tmp_path / "samples"), n_clips=24, sample_rate=8000,
                          min_seconds=1.0, max_seconds=1.5)
    result = CliRunner().invoke(app, ["synth", "--params", str(params), "--set", "seed=4"])
    assert result.exit_code == 0, result.output
    rows = read_manifest(tmp_path / "samples" / "manifest.csv")
    assert len(rows) == 24 and {r["key"] for r in rows} == set(KEYS)
    assert "clips per key" in result.output and "clips per timbre" in result.output
    assert '"seed": 4' in result.output


@pytest.mark.parametrize("override, bad_key", [
    ("n_clips=3", "synth.n_clips"),
    ("max_seconds=1", "synth.max_seconds"),
    ("min_seconds=0", "synth.min_seconds"),
    ("sample_rate=fast", "synth.sample_rate"),
    ("n_clip=30", "synth.n_clip"),
])
def test_cli_rejects_bad_params_naming_the_key(tmp_path, override, bad_key):
    params = write_params(tmp_path, out=str(tmp_path / "samples"), min_seconds=2.0)
    result = CliRunner().invoke(app, ["synth", "--params", str(params), "--set", override])
    assert result.exit_code == 2
    assert bad_key in result.output
    assert not (tmp_path / "samples").exists()


def test_cli_help_explains_what_is_generated():
    result = CliRunner().invoke(app, ["synth", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for phrase in ("24 major/minor keys", "manifest.csv", "byte-identical", "--set"):
        assert phrase in result.output
