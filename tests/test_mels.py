import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from audio_fixtures import write_bad, write_good, write_odd_but_valid
from typer.testing import CliRunner

from mirkit.cli import app
from mirkit.data.audio import load_audio
from mirkit.data.features import PRESETS, FrontEnd
from mirkit.data.mels import MelsParams, run
from mirkit.data.store import open_set

ROOT = Path(__file__).parent.parent


def params(tmp_path, input, store=None, **kw):
    return MelsParams(input=str(input), store=store or str(tmp_path / "f.zarr"),
                      failures=str(tmp_path / "failures.tsv"), summary=str(tmp_path / "summary.json"),
                      num_workers=0, **kw)


def test_features_match_a_direct_computation(tmp_path):
    write_good(tmp_path / "a", 2)
    run(params(tmp_path, tmp_path / "a", feature_sets=["mel16k", "cqt22k"]))
    for name in ("mel16k", "cqt22k"):
        spec, fs = PRESETS[name], open_set(str(tmp_path / "f.zarr"), name)
        wave = load_audio(tmp_path / "a" / "good001.wav", spec.sample_rate)
        direct = FrontEnd(spec)(torch.from_numpy(wave)[None])[0].numpy()
        stored = fs.read(fs.index_of("good001.wav"))
        assert stored.shape == (spec.n_frames(len(wave)), spec.bins)
        np.testing.assert_allclose(stored, direct.astype(spec.dtype), rtol=1e-3, atol=1e-3)
        assert fs.spec["sample_rate"] == spec.sample_rate and fs.frame_rate == spec.frame_rate


def test_bad_files_are_reported_and_the_rest_is_processed(tmp_path):
    write_good(tmp_path / "in", 2)
    expected = write_bad(tmp_path / "in")
    odd = write_odd_but_valid(tmp_path / "in")
    report = run(params(tmp_path, tmp_path / "in"))
    failed = {Path(f).name: reason for f, reason in report.failures}
    assert set(failed) == set(expected)
    for name, words in expected.items():
        if name in failed:
            assert words.lower() in failed[name].lower()
    fs = open_set(str(tmp_path / "f.zarr"), "mel16k")
    assert {t.track_id for t in fs.tracks} == {"good000.wav", "good001.wav"} | {p.name for p in odd}
    rows = list(csv.reader(open(tmp_path / "failures.tsv"), delimiter="\t"))
    assert rows[0] == ["file", "reason"] and len(rows) == 1 + len(failed)


def test_exit_codes_nothing_succeeded_and_strict(tmp_path):
    write_bad(tmp_path / "bad")
    base = ["mels", "--params", "none", "--store", str(tmp_path / "f.zarr"),
            "--set", f"failures={tmp_path / 'f.tsv'}", "--set", f"summary={tmp_path / 's.json'}"]
    result = CliRunner().invoke(app, base + ["--input", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "nothing" not in result.output.lower() or "no file" in result.output
    write_good(tmp_path / "mixed", 1)
    write_bad(tmp_path / "mixed")
    ok = CliRunner().invoke(app, base + ["--input", str(tmp_path / "mixed")])
    assert ok.exit_code == 0, ok.output
    strict = CliRunner().invoke(app, base + ["--input", str(tmp_path / "mixed"), "--strict"])
    assert strict.exit_code == 1


def test_rerun_skips_adds_new_and_replaces_changed_params(tmp_path):
    write_good(tmp_path / "in", 3)
    p = params(tmp_path, tmp_path / "in")
    assert run(p).sets["mel16k"].stored == 3
    again = run(p).sets["mel16k"]
    assert (again.stored, again.skipped, again.status) == (0, 3, "resumed")
    write_good(tmp_path / "more", 1)
    os.replace(tmp_path / "more" / "good000.wav", tmp_path / "in" / "new.wav")
    added = run(p).sets["mel16k"]
    assert (added.stored, added.skipped) == (1, 3)
    changed = run(params(tmp_path, tmp_path / "in", feature_sets=["small"],
                         custom={"small": {"kind": "mel", "sample_rate": 16000, "n_mels": 32, "n_fft": 512,
                                           "hop_length": 256}}))
    assert changed.sets["small"].stored == 4
    replaced = run(params(tmp_path, tmp_path / "in", feature_sets=["small"],
                          custom={"small": {"kind": "mel", "sample_rate": 16000, "n_mels": 40, "n_fft": 512,
                                            "hop_length": 256}}))
    assert replaced.sets["small"].status == "replaced" and replaced.sets["small"].stored == 4
    assert open_set(p.store, "small").n_bins == 40


def test_modified_audio_is_recomputed(tmp_path):
    write_good(tmp_path / "in", 2)
    p = params(tmp_path, tmp_path / "in")
    run(p)
    before = open_set(p.store, "mel16k").read(0).copy()
    write_good(tmp_path / "other", 1, seconds=3.0)
    os.replace(tmp_path / "other" / "good000.wav", tmp_path / "in" / "good000.wav")
    report = run(p)
    assert report.sets["mel16k"].status.startswith("rebuilt")
    after = open_set(p.store, "mel16k")
    assert after.read(after.index_of("good000.wav")).shape[0] > before.shape[0]


def test_batch_composition_does_not_change_the_bytes(tmp_path):
    """Equal-length clips batched together give the same bytes as when each is alone in its batch."""
    write_good(tmp_path / "in", 6, seconds=2.0)
    for p in sorted((tmp_path / "in").glob("*.wav"))[::2]:
        os.replace(p, tmp_path / "in" / ("z" + p.name))       # reorders clips so batches mix differently
    write_good(tmp_path / "in", 6, seconds=2.0)
    run(params(tmp_path, tmp_path / "in", store=str(tmp_path / "b1.zarr"), batch_size=4, commit_frames=1))
    for p in sorted((tmp_path / "in").glob("good*.wav")):
        p.unlink()
    run(params(tmp_path, tmp_path / "in", store=str(tmp_path / "b8.zarr"), batch_size=4))
    a1 = open_set(str(tmp_path / "b1.zarr"), "mel16k")
    a8 = open_set(str(tmp_path / "b8.zarr"), "mel16k")
    assert len(a8) == 3
    for i, t in enumerate(a8.tracks):
        assert np.array_equal(a8.read(i), a1.read(a1.index_of(t.track_id)))


def test_fsspec_memory_store(tmp_path):
    write_good(tmp_path / "in", 2)
    run(params(tmp_path, tmp_path / "in", store="memory://mels-test"))
    assert len(open_set("memory://mels-test", "mel16k")) == 2


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """Three CLI runs under the same conditions: uninterrupted, killed with SIGKILL, re-run: the re-run store
    holds exactly the uninterrupted run's content per track id."""
    write_good(tmp_path / "in", 40, seconds=3.0)

    def cmd(store):
        return [sys.executable, "-m", "mirkit", "mels", "--params", "none",
                "--input", str(tmp_path / "in"), "--store", str(store), "--set", "batch_size=1",
                "--set", "commit_frames=1", "--set", "num_workers=0",
                "--set", f"failures={tmp_path / 'k.tsv'}", "--set", f"summary={tmp_path / 'k.json'}"]

    subprocess.run(cmd(tmp_path / "ref.zarr"), cwd=ROOT, check=True, capture_output=True)
    store = tmp_path / "killed.zarr"
    proc = subprocess.Popen(cmd(store), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            committed = zarr.open_group(str(store), mode="r")["mel16k"].attrs["n_tracks"]
        except Exception:
            committed = 0
        if committed >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < committed < 40, f"the run was not caught in the middle ({committed} committed)"
    # what a reader sees after the kill is complete, committed tracks only
    partial = open_set(str(store), "mel16k")
    ref_set = open_set(str(tmp_path / "ref.zarr"), "mel16k")
    assert 0 < len(partial) < 40
    for i, t in enumerate(partial.tracks):
        np.testing.assert_array_equal(partial.read(i), ref_set.read(ref_set.index_of(t.track_id)))
    subprocess.run(cmd(store), cwd=ROOT, check=True, capture_output=True)
    # the contract: the same content per track id (ids, fingerprints, frames); where a track's frames sit in
    # the set's frame array depends on when the kill landed, and readers only ever go through the index
    resumed = open_set(str(store), "mel16k")
    assert sorted((t.track_id, t.fingerprint, t.n_frames) for t in resumed.tracks) == \
        sorted((t.track_id, t.fingerprint, t.n_frames) for t in ref_set.tracks)
    assert resumed.total_frames == ref_set.total_frames
    for i, t in enumerate(resumed.tracks):
        np.testing.assert_array_equal(resumed.read(i), ref_set.read(ref_set.index_of(t.track_id)), err_msg=t.track_id)


@pytest.mark.parametrize("name", ["mel16k", "mel16k-db"])
def test_fft_mel_equals_nnaudio_mel(name):
    from nnAudio.features.mel import MelSpectrogram
    spec = PRESETS[name]
    reference = MelSpectrogram(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels, hop_length=spec.hop_length,
                               fmin=spec.fmin, fmax=spec.sample_rate / 2, verbose=False)
    wave = torch.randn(2, spec.sample_rate * 2) * 0.1
    ours = FrontEnd(spec).transform(wave)
    torch.testing.assert_close(ours, reference(wave), rtol=1e-4, atol=1e-4 * float(reference(wave).max()))


def test_cqt_matches_stones_vqt():
    """cqt22k uses nnAudio's single-rate CQT; STONE used VQT(gamma=0): same spectrum."""
    from nnAudio.features.vqt import VQT
    spec = PRESETS["cqt22k"]
    t = torch.arange(spec.sample_rate * 2) / spec.sample_rate
    wave = (0.3 * torch.sin(2 * np.pi * 440 * t) + 0.2 * torch.sin(2 * np.pi * 110 * t))[None]
    ours = FrontEnd(spec).transform(wave)[0, :, 10:-10].mean(1)
    stone = VQT(sr=spec.sample_rate, hop_length=spec.hop_length, fmin=spec.fmin, n_bins=spec.n_bins,
                bins_per_octave=12, gamma=0, verbose=False)(wave)[0, :, 10:-10].mean(1)
    assert ours.topk(2).indices.tolist() == stone.topk(2).indices.tolist() == [24, 48]
    assert np.corrcoef(ours.numpy(), stone.numpy())[0, 1] > 0.999
