"""`mirkit benchmark check|run` on synthetic stand-in copies laid out like each dataset's download:
copy check counts, partial copies, cached extraction, layer choice on valid, bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_runner import invoke

from mirkit.data.features import PRESETS
from mirkit.eval.benchmark_check import check_copy
from mirkit.eval.benchmark_run import STANDARD, parse_models
from mirkit.eval.benchmarks import load_metadata
from mirkit.params import resolve
from mirkit.recipes import get
from mirkit.train import checkpoint

SR = 8000   # a low rate (the lowest MP3 allows) keeps real-length files small


def tone(seconds: float, f0: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def write(path: Path, seconds: float, f0: float, seed: int = 0, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, f0, seed), SR, format=fmt)


def entries(name: str, split: str, n: int, key=lambda e: True) -> list[tuple[str, dict]]:
    out = [(u, e) for u, e in sorted(load_metadata(name).items()) if e.get("split") == split and key(e)]
    return out[:n]


def gtzan_copy(root: Path, per_split=(3, 2, 2)) -> list[str]:
    """genres/<genre>/<genre>.000NN.wav, 30 s, two genres per split (f0 by genre)."""
    uids = []
    for split, n in zip(("train", "valid", "test"), per_split, strict=True):
        for genre, f0 in (("jazz", 220.0), ("metal", 660.0)):
            for k, (uid, e) in enumerate(entries("gtzan", split, n, lambda e, g=genre: e["y"] == g)):
                write(root / "genres" / genre / f"{e['extra']['id']}.wav", 30.0, f0 * (1 + 0.02 * k), k)
                uids.append(uid)
    return uids


def giantsteps_copy(root: Path) -> None:
    """<id>.LOFI.wav previews, 65 s long (clips at 0/30 s fit, 60 s is short, 90 s is past the end)."""
    for split, songs in (("train", 2), ("valid", 1), ("test", 2)):
        seen: list[str] = []
        for _, e in entries("giantsteps", split, 40):
            song = e["clip"]["audio_uid"]
            if song in seen or len(seen) == songs:
                continue
            seen.append(song)
            write(root / "audio" / f"{e['extra']['id']}.LOFI.wav", 65.0, 200.0 + 40 * len(seen), len(seen))


def mtt_copy(root: Path) -> None:
    """mp3/<d>/<name>.mp3 clips of 29.1 s, named by their JukeMIR mp3_path."""
    for split, n in (("train", 4), ("valid", 3), ("test", 3)):
        for k, (_, e) in enumerate(entries("mtt", split, n, lambda e: bool(e["y"]))):
            write(root / "mp3" / e["extra"]["mp3_path"], 29.124, 300.0 + 50 * k, k, fmt="MP3")


def emomusic_copy(root: Path) -> None:
    """clips_45seconds/<song id>.mp3, 45 s."""
    for split, n in (("train", 4), ("valid", 2), ("test", 3)):
        for k, (_, e) in enumerate(entries("emomusic", split, n)):
            write(root / "clips_45seconds" / e["extra"]["songs_info"]["file_name"], 45.036, 250.0 + 60 * k, k,
                  fmt="MP3")


COPIES = {"gtzan": gtzan_copy, "giantsteps": giantsteps_copy, "mtt": mtt_copy, "emomusic": emomusic_copy}


def make_model(out: Path, seed: int = 0) -> Path:
    """An untrained myna-tiny training run folder saved as `mirkit pretrain` saves it."""
    cls = get("myna")
    r = cls(resolve(cls.Params, {"preset": "myna-tiny"}))
    torch.manual_seed(seed)
    checkpoint.save(out, r.build_model(), checkpoint.make_config(r, PRESETS[r.feature_set].to_dict(), 0, {}))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "run")


def test_parse_models():
    specs = parse_models("a/run,mine=b,random:a/run")
    assert [(s.name, s.path, s.random_init) for s in specs] == [("run", "a/run", False), ("mine", "b", False),
                                                                ("random-run", "a/run", True)]
    from mirkit.errors import InputError
    with pytest.raises(InputError, match="two models are named 'run'"):
        parse_models("x/run,y/run")
    with pytest.raises(InputError, match="at least one"):
        parse_models(" , ")


# ----------------------------------------------------------------------------- copy check
def test_check_counts_missing_extra_unreadable_and_durations(tmp_path):
    uids = gtzan_copy(tmp_path, per_split=(2, 1, 1))
    meta = load_metadata("gtzan")
    # a short file, an undecodable one and a file no entry names
    short_uid = uids[0]
    write(tmp_path / "genres" / "jazz" / f"{meta[short_uid]['extra']['id']}.wav", 12.0, 220.0)
    bad = uids[1]
    (tmp_path / "genres" / "jazz" / f"{meta[bad]['extra']['id']}.wav").write_bytes(b"not audio at all" * 100)
    write(tmp_path / "genres" / "jazz" / "notes.wav", 3.0, 100.0)
    check = check_copy("gtzan", tmp_path)
    assert check.expected == {"train": 443, "valid": 197, "test": 290}
    assert check.found == {"train": 4, "valid": 2, "test": 2}
    assert {s: len(v) for s, v in check.missing.items()} == {"train": 439, "valid": 195, "test": 288}
    assert check.extra == ["genres/jazz/notes.wav"]
    assert [u for u, _, _ in check.short] == [short_uid] and check.short[0][1] == pytest.approx(12.0)
    assert len(check.unreadable) == 1 and check.unreadable[0][0].endswith(f"{meta[bad]['extra']['id']}.wav")
    assert check.usable == {"train": 3, "valid": 2, "test": 2} and not check.complete
    assert "PARTIAL copy, running on 7 of 930 entries" in check.summary()


def test_check_command(tmp_path):
    giantsteps_copy(tmp_path)
    res = invoke("benchmark", "check", "giantsteps", "--audio", str(tmp_path))
    assert res.exit_code == 0, res.output
    # 5 songs x 4 clips found; the clip at 90 s lies past the end of each 65 s file, the one at 60 s is short
    assert "past the end of its file" in res.text and "shorter than the metadata" in res.text
    check = check_copy("giantsteps", tmp_path)
    assert sum(check.found.values()) == 20 and len(check.beyond_end) == 5 and len(check.short) == 5
    assert all(o == 90.0 for _, o, _ in check.beyond_end)
    assert sum(check.usable.values()) == 15
    assert "PARTIAL copy" in res.text
    (tmp_path / "empty").mkdir()
    res = invoke("benchmark", "check", "mtt", "--audio", str(tmp_path / "empty"))
    assert res.exit_code == 2 and "no usable mtt audio" in res.text
    res = invoke("benchmark", "check", "fma", "--audio", str(tmp_path))
    assert res.exit_code == 2 and "unknown benchmark 'fma'" in res.text


# ----------------------------------------------------------------------------- the run
def run_args(name: str, audio: Path, out: Path, models: str, *more: str) -> list[str]:
    return ["benchmark", "run", name, "--audio", str(audio), "--models", models, "--out", str(out),
            "--protocol", "linear", "--bootstrap", "200", "--device", "cpu", *more]


def test_gtzan_leaderboard_end_to_end_and_cache_reuse(tmp_path, model):
    gtzan_copy(tmp_path / "gtzan")
    out = tmp_path / "board"
    res = invoke(*run_args("gtzan", tmp_path / "gtzan", out, f"mine={model},random:{model}"))
    assert res.exit_code == 0, res.output
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["task"] == "genre" and board["metric"] == "accuracy" and not board["complete"]
    assert board["copy"]["usable"] == {"train": 6, "valid": 4, "test": 4}
    assert "PARTIAL copy" in (out / "leaderboard.md").read_text() and "PARTIAL copy" in res.text
    assert (out / "leaderboard.png").stat().st_size > 0
    names = [m["name"] for m in board["models"]]
    assert sorted(names) == ["mine", "random-run"] and board["failed"] == []
    for m in board["models"]:
        # every layer probed (block input, 2 blocks, last normed); the chosen layer is the best on VALID
        assert [s["layer"] for s in m["per_layer"]] == ["0", "1", "2", "last"]
        best = max(m["per_layer"], key=lambda s: s["valid"])
        assert m["layer"] == best["layer"] and m["valid"] == best["valid"] and m["test"] == best["test"]
        assert m["low"] <= m["test"] <= m["high"] and m["units"] == 4
        assert m["extract"]["embedded"] == 14 and m["extract"]["reused"] == 0
    # the stand-in's genres differ in pitch (220 vs 660 Hz): any layer separates them, so labels reached the probe
    assert all(m["test"] == 1.0 for m in board["models"])
    tests = [m["test"] for m in board["models"]]
    assert tests == sorted(tests, reverse=True) and "vs_leader" in board["models"][1]
    assert board["models"][1]["vs_leader"]["units"] == 4
    md = (out / "leaderboard.md").read_text()
    assert "| 1 |" in md and "| 2 |" in md and "random init" in md
    # a second run with another model list reuses the cached stores of the model it shares
    res = invoke(*run_args("gtzan", tmp_path / "gtzan", tmp_path / "board2", f"mine={model}",
                           "--cache", str(out / "embeddings")))
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "board2" / "leaderboard.json").read_text())
    [m] = again["models"]
    assert m["extract"]["reused"] == 14 and m["extract"]["embedded"] == 0
    first = next(x for x in board["models"] if x["name"] == "mine")
    assert m["test"] == first["test"] and m["layer"] == first["layer"]
    # a changed audio file (another content hash) is re-embedded, not served from the cache
    meta = load_metadata("gtzan")
    some = next(u for u in meta if (tmp_path / "gtzan" / "genres" / "jazz" / f"{meta[u]['extra']['id']}.wav").exists())
    write(tmp_path / "gtzan" / "genres" / "jazz" / f"{meta[some]['extra']['id']}.wav", 30.0, 880.0, 9)
    res = invoke(*run_args("gtzan", tmp_path / "gtzan", tmp_path / "board3", f"mine={model}",
                           "--cache", str(out / "embeddings")))
    assert res.exit_code == 0, res.output
    [m] = json.loads((tmp_path / "board3" / "leaderboard.json").read_text())["models"]
    assert m["extract"]["status"].startswith("rebuilt") and m["extract"]["embedded"] == 14


def test_bad_model_is_reported_and_the_others_still_rank(tmp_path, model):
    gtzan_copy(tmp_path / "g", per_split=(2, 1, 1))
    (tmp_path / "not-a-model").mkdir()
    res = invoke(*run_args("gtzan", tmp_path / "g", tmp_path / "b", f"{model},{tmp_path / 'not-a-model'}",
                           "--layers", "last"))
    assert res.exit_code == 1 and "1 model(s) failed: not-a-model" in res.text
    board = json.loads((tmp_path / "b" / "leaderboard.json").read_text())
    assert [m["name"] for m in board["models"]] == ["run"] and board["failed"][0]["name"] == "not-a-model"
    assert [s["layer"] for s in board["models"][0]["per_layer"]] == ["last"]


def test_a_split_without_audio_is_a_clear_error(tmp_path, model):
    for _, e in entries("gtzan", "train", 2):
        write(tmp_path / "g" / f"{e['extra']['id']}.wav", 30.0, 220.0)
    res = invoke(*run_args("gtzan", tmp_path / "g", tmp_path / "o", str(model)))
    assert res.exit_code == 2 and "no usable gtzan audio for split 'valid' (0 of 197)" in res.text
    assert not (tmp_path / "o" / "leaderboard.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["giantsteps", "mtt", "emomusic"])
def test_every_benchmark_runs_on_a_standin_copy(tmp_path, model, name):
    COPIES[name](tmp_path / name)
    out = tmp_path / "board"
    res = invoke(*run_args(name, tmp_path / name, out, f"{model},random:{model}"))
    assert res.exit_code == 0, res.output
    board = json.loads((out / "leaderboard.json").read_text())
    [(task, spec)] = STANDARD[name].items()
    assert board["task"] == task and len(board["models"]) == 2 and not board["failed"]
    for m in board["models"]:
        assert m["test"] is not None and m["low"] <= m["test"] <= m["high"]
    if name == "giantsteps":   # key is scored per song and intervals resample songs
        assert board["bootstrap"]["unit"] == "song" and board["models"][0]["units"] == 2
        assert "clip_weighted_score" in board["models"][0]["metrics"]
    if name == "emomusic":
        assert {"r2_arousal", "r2_valence"} <= set(board["models"][0]["metrics"])
