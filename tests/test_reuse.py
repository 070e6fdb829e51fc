"""Stored features are reused whenever the audio is the same bytes, and the reason is said when they are not."""

import csv
import os
import shutil
import time

from test_extract import build_features, make_checkpoint, params, write_dataset

from mirkit.data.audio import fingerprint
from mirkit.eval.extract import run


def test_fingerprint_is_content_not_size_and_time(tmp_path):
    write_dataset(tmp_path / "a", [("x", 2.0, 220.0), ("y", 2.0, 330.0)])
    x, y = tmp_path / "a" / "x.wav", tmp_path / "a" / "y.wav"
    copy = tmp_path / "copy.wav"
    shutil.copy(x, copy)                       # cp / rsync / dvc checkout: same bytes, new time
    os.utime(copy, (time.time() + 100, time.time() + 100))
    assert fingerprint(copy) == fingerprint(x)
    assert x.stat().st_size == y.stat().st_size and fingerprint(x) != fingerprint(y)
    assert fingerprint(x, 1.0, 0.5) != fingerprint(x)


def test_extract_reuses_features_of_copied_audio_and_says_why_it_recomputes(tmp_path):
    write_dataset(tmp_path / "src", [("a", 4.0, 220.0), ("b", 4.0, 330.0), ("c", 4.0, 440.0)])
    build_features(tmp_path / "src" / "manifest.csv", tmp_path / "features.zarr")
    make_checkpoint(tmp_path / "ckpt")
    shutil.copytree(tmp_path / "src", tmp_path / "data")        # new modification times everywhere
    for f in (tmp_path / "data").iterdir():
        os.utime(f, (time.time() + 100, time.time() + 100))
    report = run(params(tmp_path))
    assert (report.from_store, report.computed, report.recomputed) == (3, 0, {})

    shutil.copy(tmp_path / "data" / "a.wav", tmp_path / "data" / "b.wav")       # b's audio changed
    shutil.copy(tmp_path / "data" / "c.wav", tmp_path / "data" / "d.wav")
    with (tmp_path / "data" / "manifest.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["d.wav", "test", "", "", "t0", "c.beats.txt"])     # a track not in the store
    report = run(params(tmp_path, out=tmp_path / "emb2.zarr"))
    assert (report.from_store, report.computed) == (2, 2) and not report.feature_note
    assert report.recomputed == {"audio differs from what was stored": 1, "not in the feature store": 1}


def test_a_manifest_sharing_no_id_with_the_store_is_warned_about(tmp_path):
    write_dataset(tmp_path / "data" / "my_audio", [("a", 4.0, 220.0), ("b", 4.0, 330.0)])
    build_features(tmp_path / "data" / "my_audio" / "manifest.csv", tmp_path / "features.zarr")
    make_checkpoint(tmp_path / "ckpt")
    rows = (tmp_path / "data" / "my_audio" / "manifest.csv").read_text().replace("\na.", "\nmy_audio/a.") \
        .replace("\nb.", "\nmy_audio/b.").replace(",a.beats", ",my_audio/a.beats").replace(",b.beats", ",my_audio/b.beats")
    (tmp_path / "data" / "labels.csv").write_text(rows)    # one folder up: ids 'my_audio/a.wav'
    report = run(params(tmp_path, manifest=tmp_path / "data" / "labels.csv"))
    assert report.computed == 2 and report.embedded == 2
    assert "shares no track id" in report.feature_note and "'my_audio/a.wav'" in report.feature_note
