"""Concurrent writers and killed writers on one feature store, with real processes (issue 13 item 1)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mirkit.data import store
from mirkit.data.store import LOCK_FILE, StoreBusy, create_or_open, open_set

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mirkit.data.store import create_or_open
    url, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fs, status = create_or_open(url, "mel", {"a": 1}, 4, 10.0, dtype="float32", chunk_frames=8, shard_chunks=2)
    print(status, flush=True)
    for k in range(n):
        rows = 3 + (k * 7) % 11
        value = float(sum(map(ord, f"{tag}-{k}")))
        fs.append([(f"{tag}-{k}", "src", "fp", np.full((rows, 4), value, np.float32) + np.arange(rows)[:, None])])
        time.sleep(0.01)
""")

HOLDER = textwrap.dedent("""
    import sys, time
    from mirkit.data.store import writer_lock
    with writer_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def expected(track_id: str, rows: int) -> np.ndarray:
    return np.full((rows, 4), float(sum(map(ord, track_id))), np.float32) + np.arange(rows)[:, None]


def check_complete(fs) -> None:
    for i, t in enumerate(fs.tracks):
        np.testing.assert_array_equal(fs.read(i), expected(t.track_id, t.n_frames))


def test_two_processes_appending_to_one_set_keep_every_track(tmp_path):
    """Before: both exited 0 but only 17 of 33 tracks were kept, with wrong starts. Now every track of
    both writers is stored once, with its own frames, and a reader polling meanwhile only ever sees
    complete tracks."""
    url = str(tmp_path / "s.zarr")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, tag, "15"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    polls = 0
    while any(p.poll() is None for p in procs):
        try:
            fs = open_set(url, "mel")
        except store.StoreError:
            time.sleep(0.05)     # not created yet
            continue
        check_complete(fs)
        polls += 1
        time.sleep(0.05)
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o[0].strip() for o in outs) in (["created", "resumed"], ["resumed", "resumed"]), outs
    fs = open_set(url, "mel")
    assert sorted(t.track_id for t in fs.tracks) == sorted(f"{tag}-{k}" for tag in "ab" for k in range(15))
    check_complete(fs)
    assert polls > 0 and not (tmp_path / "s.zarr" / LOCK_FILE).exists()


def write_clips(folder: Path, n: int) -> None:
    import soundfile as sf
    folder.mkdir()
    for i in range(n):
        t = np.arange(16000) / 16000
        sf.write(folder / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t), 16000)


def mels_cli(audio: Path, url: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirkit", "mels", "--input", str(audio), "--store", url,
                           "--set", "num_workers=0", "--set", f"failures={tmp}/f.tsv", "--set", f"summary={tmp}/s.json"],
                          check=False, env={**ENV, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300)


def test_a_second_stage_on_a_busy_store_refuses_and_names_the_holder(tmp_path):
    audio, url = tmp_path / "audio", str(tmp_path / "features.zarr")
    write_clips(audio, 2)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, "60"], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = mels_cli(audio, url, tmp_path)
        text = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2, text
        assert f"pid {holder.pid}" in text and "--shard" in text and "Traceback" not in text
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: its leftover file is recovered by the next writer
    assert (tmp_path / "features.zarr" / LOCK_FILE).exists()
    r = mels_cli(audio, url, tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(open_set(url, "mel16k")) == 2 and not (tmp_path / "features.zarr" / LOCK_FILE).exists()


def test_writer_lock_refuses_in_process_callers_too(tmp_path):
    url = str(tmp_path / "s.zarr")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, "60"], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusy, match=f"pid {holder.pid}"), store.writer_lock(url, wait=0.2):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    _, status = create_or_open(url, "mel", {}, 4, 10.0)   # stale lock recovered
    assert status == "created"


def test_two_mels_runs_started_together_leave_a_sound_store(tmp_path):
    """Before: both crashed and left attrs without arrays ("KeyError: 'frames'" on every later run).
    Now one writes; the other either refuses (exit 2, naming the holder) or, started after it, resumes."""
    audio, url = tmp_path / "audio", str(tmp_path / "features.zarr")
    write_clips(audio, 4)
    args = lambda k: [sys.executable, "-m", "mirkit", "mels", "--input", str(audio), "--store", url,  # noqa: E731
                      "--set", "num_workers=0", "--set", f"failures={tmp_path}/f{k}.tsv",
                      "--set", f"summary={tmp_path}/s{k}.json"]
    procs = [subprocess.Popen(args(k), env={**ENV, "COLUMNS": "200"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in range(2)]
    outs = [" ".join(p.communicate(timeout=300)[0].split()) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 2]), outs
    for p, out in zip(procs, outs, strict=True):
        assert "Traceback" not in out
        if p.returncode == 2:
            assert "another mirkit process is writing this store" in out
    assert [t.track_id for t in open_set(url, "mel16k").tracks] == [f"c{i}.wav" for i in range(4)]
    r = subprocess.run([sys.executable, "-m", "mirkit", "verify", url], check=False, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_second_extract_into_a_busy_embeddings_store_refuses_and_names_the_holder(tmp_path):
    """Before: a --random-init run replaced the store another extract was writing; the first kept
    appending; both exited 0 with 48 of 120 tracks from the other model. Now `extract` holds the
    store's writer lock for its whole run, as `mels` does."""
    from cli_runner import invoke
    from test_extract import make_checkpoint, write_dataset

    from mirkit.eval.embeddings import Embeddings
    write_dataset(tmp_path / "data", [("a", 3.0, 220.0), ("b", 3.0, 330.0)])
    make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "emb.zarr"
    args = ["extract", "--model", str(tmp_path / "ckpt"), "--set", f"manifest={tmp_path}/data/manifest.csv",
            "--out", str(out), "--set", f"features={tmp_path}/none.zarr", "--set", "device=cpu"]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "60"], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = invoke(*args, "--set", "random_init=true")
        assert r.exit_code == 2 and f"pid {holder.pid}" in r.text and "another mirkit process" in r.text, r.text
        assert not (out / "zarr.json").exists()            # nothing written behind the holder's back
    finally:
        holder.kill()
        holder.wait()
    r = invoke(*args)                                       # the dead holder's lock is taken over
    assert r.exit_code == 0, r.text
    assert len(Embeddings(str(out))) == 2 and not (out / LOCK_FILE).exists()
