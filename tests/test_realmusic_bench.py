"""The real-music check set builder (bench/realmusic): MIDI writer, labels, paired bootstrap."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "realmusic"
sys.path.insert(0, str(BENCH))
import bench_realmusic  # noqa: E402
import build_checkset  # noqa: E402


def test_midi_writer_orders_note_offs_and_encodes_tempo():
    data = build_checkset.midi_bytes([(0.0, 1.0, 60), (1.0, 0.5, 64), (1.0, 0.0, 70)], bpm=120.0, program=19)
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    track = data[22:]
    assert len(track) == int.from_bytes(data[18:22], "big")
    assert track[4:7] == (500_000).to_bytes(3, "big")              # 120 BPM = 500,000 us per quarter
    assert bytes((0xC0, 19)) in track
    assert bytes((0x90, 70)) not in track                            # zero-length note dropped
    # at tick 480 the note-off of 60 comes before the note-on of 64
    assert track.index(bytes((0x80, 60, 0))) < track.index(bytes((0x90, 64)))
    assert track.endswith(b"\x00\xff\x2f\x00")


def test_paired_bootstrap_statistic_matches_plain_accuracy_and_r2():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=50)
    out = np.eye(3)[np.where(rng.random(50) < 0.7, y, (y + 1) % 3)]
    full = np.arange(50)[None]
    assert bench_realmusic.statistic("multiclass", out, y, full)[0] == pytest.approx((out.argmax(1) == y).mean())
    t = rng.normal(size=50)
    pred = (t + rng.normal(scale=0.5, size=50))[:, None]
    r2 = 1 - ((t - pred[:, 0]) ** 2).sum() / ((t - t.mean()) ** 2).sum()
    assert bench_realmusic.statistic("regression", pred, t, full)[0] == pytest.approx(r2)


@pytest.mark.skipif(shutil.which("fluidsynth") is None or importlib.util.find_spec("music21") is None
                    or not Path(build_checkset.DEFAULT_SF2).exists(),
                    reason="needs fluidsynth, fluid-soundfont-gm and music21 (make checkset)")
def test_a_small_build_has_score_labels_and_is_reused(tmp_path):
    manifest = build_checkset.build(tmp_path, seconds=4.0, min_seconds=2.0, sample_rate=16000, seed=0,
                                    sf2=build_checkset.DEFAULT_SF2, limit=3)
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 3
    from mirkit.eval.tasks import normalise_key
    for r in rows:
        assert normalise_key(r["key"]) == r["key"] and r["family"] in build_checkset.FAMILIES
        assert 60 <= float(r["tempo"]) <= 120 and float(r["seconds"]) == pytest.approx(4.0, abs=0.01)
    first = rows[0]   # bwv1.6 is in F major in the score
    assert first["source"].endswith("bwv1.6.mxl")
    assert first["key"] == normalise_key(f"{build_checkset.TONICS[(5 + int(first['shift'])) % 12]} major")
    stamp = (tmp_path / first["path"]).stat().st_mtime_ns
    build_checkset.build(tmp_path, 4.0, 2.0, 16000, 0, build_checkset.DEFAULT_SF2, 3)
    assert (tmp_path / first["path"]).stat().st_mtime_ns == stamp   # cached clips are not rendered again


def test_curves_table_reads_the_online_probes_of_a_run(tmp_path):
    import curves

    rd = tmp_path / "runs" / "r1"
    for rel, header, rows in (("probe/key/weighted_score.tsv", "weighted_score", [(0, 0.5), (100, 0.6), (200, 0.7)]),
                              ("probe/tempo/r2.tsv", "r2", [(0, 0.1), (200, 0.0)]),
                              ("val/loss.tsv", "loss", [(0, 2.0), (100, 1.0), (200, 0.5)])):
        path = rd / "live" / "plots" / "metrics" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"step\t{header}\n" + "".join(f"{s}\t{v}\n" for s, v in rows))
    gain = {"pretrained": 0.7, "random": 0.5, "gain": 0.2, "lo": 0.1, "hi": 0.3}
    (rd / "result.json").write_text(json.dumps({"name": "r1", "recipe": "myna", "pretrain_cpu_s": 120.0, "steps": 200,
                                                "probe": {"key": gain, "family": {**gain, "gain": 0.0},
                                                          "tempo": {**gain, "gain": -1.0}}}))
    (rd / "params.yaml").write_text("pretrain: {lr: 0.0005, batch_size: 32}\n")
    run = curves.run_curves(rd)
    assert run["probe"]["key"] == ("weighted_score", [0.0, 100.0, 200.0], [0.5, 0.6, 0.7])
    table = curves.markdown([run]).splitlines()
    assert table[2] == "| r1 | key (weighted_score) | 0: 0.500, 100: 0.600, 200: 0.700 | +0.200 |"
    assert table[3] == "| r1 | tempo (r2) | 0: 0.100, 200: 0.000 | -0.100 |"
    row = curves.gains_markdown([run]).splitlines()[2]
    assert row.startswith("| r1 | 200 | 32 | 0.0005 | - | 2.0 min | 0.700 / 0.500, +0.200 [+0.100, +0.300] |")
    assert row.endswith("| +0.100 |")                                    # mean of key and family; tempo apart
    curves.draw([run], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
