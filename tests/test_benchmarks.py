"""Benchmark manifests built from fake dataset folders laid out like the real downloads."""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from mirkit.data.manifest import read_manifest
from mirkit.eval.benchmarks import BENCHMARKS, ROW_BUILDERS, SONG_COLUMNS, build_manifest, load_metadata, write_manifest
from mirkit.eval.tasks import Songs, check_columns, parse_tasks


def tiny_audio(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(160, dtype=np.float32), 16000, format="WAV")


def pick(name, n=4, **where):
    meta = load_metadata(name)
    items = [(u, e) for u, e in sorted(meta.items()) if e.get("split")
             and all(e.get(k) == v for k, v in where.items())]
    return items[:n]


def test_metadata_split_counts_match_jukemir():
    counts = {n: {s: sum(e.get("split") == s for e in load_metadata(n).values()) for s in ("train", "valid", "test")}
              for n in BENCHMARKS}
    assert counts["gtzan"] == {"train": 443, "valid": 197, "test": 290}
    assert counts["giantsteps"] == {"train": 3687, "valid": 942, "test": 2406}
    assert counts["mtt"] == {"train": 18706, "valid": 1825, "test": 5329}
    assert counts["emomusic"] == {"train": 504, "valid": 115, "test": 125}


def read_rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_gtzan_manifest(tmp_path):
    audio = tmp_path / "gtzan" / "genres"
    items = pick("gtzan", 3)
    for _, e in items:
        genre = e["extra"]["id"].split(".")[0]
        tiny_audio(audio / genre / f"{e['extra']['id']}.wav")
    build = build_manifest("gtzan", tmp_path / "gtzan")
    assert len(build.rows) == 3 and len(build.missing) == build.total - 3 == 927
    out = tmp_path / "out" / "gtzan.csv"
    write_manifest(build.rows, out)
    rows = read_rows(out)
    assert {r["track_id"] for r in rows} == {u for u, _ in items}
    for r in rows:
        entry = load_metadata("gtzan")[r["track_id"]]
        assert r["genre"] == entry["y"] and r["split"] == entry["split"]
        assert not Path(r["path"]).is_absolute() and (out.parent / r["path"]).resolve().is_file()
        assert Path(r["path"]).stem == entry["extra"]["id"]


def test_giantsteps_manifest_has_clip_bounds(tmp_path):
    train = pick("giantsteps", 3, split="train")      # clips 0..2 of one song
    test = pick("giantsteps", 1, split="test")
    for _, e in train + test:
        tiny_audio(tmp_path / "audio" / f"{e['extra']['id']}.LOFI.wav")
    rows = build_manifest("giantsteps", tmp_path).rows
    assert len(rows) >= 4
    by_id = {r["track_id"]: r for r in rows}
    for uid, e in train + test:
        r = by_id[uid]
        assert r["offset"] == e["clip"]["clip_offset"] and r["duration"] == e["clip"]["clip_duration"]
        assert r["key"] == e["y"]
    assert sorted(by_id[u]["offset"] for u, _ in train) == [0.0, 30.0, 60.0]
    # the song column groups the clips of a song (probe task `group: song`)
    assert {by_id[u][SONG_COLUMNS["giantsteps"]] for u, _ in train} == {train[0][1]["clip"]["audio_uid"]}
    assert by_id[test[0][0]]["song"] == test[0][1]["clip"]["audio_uid"] != by_id[train[0][0]]["song"]
    out = tmp_path / "gs.csv"
    write_manifest(rows, out)
    tracks = read_manifest(out)
    specs = parse_tasks({"key": {"type": "key", "label": "key", "group": "song"}})
    check_columns(specs, [{**t.labels, "track_id": t.track_id} for t in tracks], str(out))
    songs = Songs.of([t.labels for t in tracks if t.track_id in dict(train)], "song")
    assert songs.ids == [train[0][1]["clip"]["audio_uid"]] and list(songs.index) == [0, 0, 0]


def test_giantsteps_song_counts_match_jukemir():
    class FoundEverything:
        def stem(self, *candidates):
            return Path(candidates[0])
    songs = {"train": set(), "valid": set(), "test": set()}
    for uid, e in load_metadata("giantsteps").items():
        _, row = ROW_BUILDERS["giantsteps"](uid, e, FoundEverything())
        songs[e["split"]].add(row["song"])
    assert {k: len(v) for k, v in songs.items()} == {"train": 923, "valid": 236, "test": 604}
    assert not (songs["train"] & songs["valid"]) and not (songs["test"] & (songs["train"] | songs["valid"]))


def test_mtt_manifest_matches_relative_mp3_path(tmp_path):
    items = pick("mtt", 3)
    for _, e in items:
        tiny_audio(tmp_path / "mp3" / e["extra"]["mp3_path"])
    # a decoy with the same file name in another folder must not be picked for the first item
    tiny_audio(tmp_path / "decoy" / "x" / Path(items[0][1]["extra"]["mp3_path"]).name)
    rows = build_manifest("mtt", tmp_path).rows
    assert len(rows) == 3
    for r, (uid, e) in zip(sorted(rows, key=lambda r: r["track_id"]), items, strict=True):
        assert r["track_id"] == uid and r["path"].endswith(e["extra"]["mp3_path"]) and "decoy" not in r["path"]
        assert r["tags"].split(";") == e["y"] and "offset" not in r


def test_emomusic_manifest(tmp_path):
    items = pick("emomusic", 2)
    for _, e in items:
        tiny_audio(tmp_path / "clips_45seconds" / e["extra"]["songs_info"]["file_name"])
    rows = build_manifest("emomusic", tmp_path).rows
    assert [(r["arousal"], r["valence"]) for r in rows] == [tuple(e["y"]) for _, e in items]


def cli():
    from mirkit.cli import app
    return app


def test_command_reports_missing_and_fails_when_none_found(tmp_path):
    items = pick("gtzan", 2)
    for _, e in items:
        tiny_audio(tmp_path / "g" / f"{e['extra']['id']}.au")
    out = tmp_path / "m.csv"
    res = CliRunner().invoke(cli(), ["benchmark-manifest", "gtzan", "--audio-dir", str(tmp_path / "g"),
                                     "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "928 of 930 gtzan entries have no audio" in text
    assert len(read_rows(out)) == 2
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli(), ["benchmark-manifest", "mtt", "--audio-dir", str(tmp_path / "empty"),
                                     "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "no mtt audio found" in " ".join(res.output.split())
    assert not (tmp_path / "x.csv").exists()
    res = CliRunner().invoke(cli(), ["benchmark-manifest", "fma", "--audio-dir", str(tmp_path)])
    assert res.exit_code == 2


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_metadata("fma")
