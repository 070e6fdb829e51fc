"""Task metrics against hand-computed values and against mir_eval / sklearn directly; decoding;
song-level ensembles; JAMS annotations."""

import mir_eval
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

from mirkit.eval.tasks import (
    CHORD_CLASSES,
    ENSEMBLES,
    IGNORE,
    KEY_CLASSES,
    Songs,
    TaskDataError,
    TaskSpec,
    beat_targets,
    best_ensemble,
    check_columns,
    chord_class,
    chord_targets,
    decode_chords,
    ensemble,
    majmin_score,
    make_task,
    normalise_key,
    parse_tasks,
    pick_peaks,
    read_beats,
    read_chords,
)
from mirkit.params import ParamsError


def task(ttype, label="y", **options):
    t = make_task(TaskSpec("t", ttype, [label] if isinstance(label, str) else label, options))
    return t


def test_parse_tasks_errors_name_the_key():
    with pytest.raises(ParamsError, match=r"probe.tasks.genre.type='tagging'"):
        parse_tasks({"genre": {"type": "tagging", "label": "genre"}})
    with pytest.raises(ParamsError, match=r"probe.tasks.genre.label"):
        parse_tasks({"genre": {"type": "multiclass"}})
    with pytest.raises(ParamsError, match="only regression"):
        parse_tasks({"g": {"type": "multiclass", "label": ["a", "b"]}})
    specs = parse_tasks({"emo": {"type": "regression", "label": ["arousal", "valence"]}})
    assert specs["emo"].label == ["arousal", "valence"]
    with pytest.raises(ParamsError, match=r"probe.tasks.emo.label: column 'valence'"):
        check_columns(specs, [{"track_id": "a", "arousal": 1.0}], "store")


def test_multiclass_accuracy_hand_case():
    t = task("multiclass")
    t.fit([{"y": "rock"}, {"y": "jazz"}])
    assert t.classes == ["jazz", "rock"]
    assert list(t.targets([{"y": "rock"}, {"y": "jazz"}])) == [1, 0]
    out = np.array([[2.0, 1.0], [0.0, 3.0], [0.5, 0.7]])
    assert t.score(out, np.array([0, 1, 0]))["accuracy"] == pytest.approx(2 / 3)


def test_multilabel_auc_ap_hand_case_and_sklearn():
    t = task("multilabel")
    t.fit([{"y": "a;b"}, {"y": "b"}, {"y": ""}])
    assert t.classes == ["a", "b"]
    np.testing.assert_array_equal(t.targets([{"y": "b;a"}, {"y": ""}]), [[1, 1], [0, 0]])
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    s = np.array([[0.9, 0.2], [0.5, 0.8], [0.4, 0.7], [0.1, 0.3]])
    m = t.score(s, y)
    # column a: positive scores {.9,.4} vs negatives {.5,.1}: 3 of 4 pairs ordered -> .75; column b: 1
    assert m["roc_auc"] == pytest.approx((0.75 + 1.0) / 2)
    # column a ranking +,-,+,- -> AP = (1/1 + 2/3)/2; column b: 1
    assert m["ap"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s, average="macro"))
    assert m["ap"] == pytest.approx(average_precision_score(y, s, average="macro"))


def test_multilabel_skips_tags_without_both_classes():
    t = task("multilabel")
    y = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.float32)   # tag b never positive
    s = np.array([[0.9, 0.1], [0.2, 0.5], [0.8, 0.3]])
    assert t.score(s, y)["roc_auc"] == pytest.approx(1.0)


def test_regression_r2_hand_case_and_sklearn():
    t = task("regression", ["arousal", "valence"])
    t.fit([])
    y = t.targets([{"arousal": 1, "valence": 0}, {"arousal": 2, "valence": 0}, {"arousal": 3, "valence": 1}])
    pred = np.array([[1, 0], [2, 0], [4, 1]], dtype=np.float32)
    m = t.score(pred, y)
    assert m["r2_arousal"] == pytest.approx(0.5)   # SSres 1, SStot 2
    assert m["r2_valence"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(0.75)
    assert m["r2"] == pytest.approx(r2_score(y, pred))
    with pytest.raises(TaskDataError, match="non-numeric"):
        t.targets([{"arousal": "high", "valence": 0}])


@pytest.mark.parametrize("raw,canon", [("C major", "C major"), ("d# minor", "Eb minor"), ("Eb:min", "Eb minor"),
                                       ("C#maj", "Db major"), ("a minor", "A minor"), ("Gb major", "Gb major"),
                                       ("F#", "Gb major"), ("Cb major", "B major")])
def test_key_normalisation(raw, canon):
    assert normalise_key(raw) == canon


def test_key_weighted_score_hand_case_and_mir_eval():
    t = task("key")
    t.fit([])
    refs = ["C major", "C major", "A minor", "C minor", "E major"]
    ests = ["C major", "G major", "C major", "C major", "Bb major"]
    y = t.targets([{"y": r} for r in refs])
    out = np.full((5, 24), -1.0)
    out[np.arange(5), [KEY_CLASSES.index(e) for e in ests]] = 1.0
    m = t.score(out, y)
    # exact 1, fifth .5, relative (A minor -> C major) .3, parallel .2, unrelated 0
    assert m["weighted_score"] == pytest.approx((1 + 0.5 + 0.3 + 0.2 + 0) / 5)
    assert m["accuracy"] == pytest.approx(1 / 5)
    direct = np.mean([mir_eval.key.weighted_score(r, e) for r, e in zip(refs, ests, strict=True)])
    assert m["weighted_score"] == pytest.approx(direct)
    # enharmonic label in the data maps to the same class
    assert list(t.targets([{"y": "d# minor"}])) == [KEY_CLASSES.index("Eb minor")]


def test_losses_shapes():
    t = task("multiclass")
    t.fit([{"y": "a"}, {"y": "b"}, {"y": "c"}])
    out = torch.randn(4, 5, 3)
    y = torch.randint(3, (4, 5))
    assert torch.isclose(t.loss(out, y), torch.nn.functional.cross_entropy(out.reshape(-1, 3), y.reshape(-1)))


# --------------------------------------------------------------------------- frame-level
def test_beat_targets_and_peak_picking_match_mir_eval():
    times = np.arange(200) * 0.02 + 0.01            # 50 Hz frame centres
    beats = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    y = beat_targets(beats, times)
    nearest = [int(np.argmin(np.abs(times - b))) for b in beats]
    assert np.all(y[nearest] == 1.0) and np.all(y[np.array(nearest) + 1] == 0.5)
    assert y.sum() == pytest.approx(len(beats) * 2.0)
    # synthetic activation: gaussian bumps at the beats (one shifted by 40 ms), a weak spurious bump,
    # and a second peak 0.1 s after a beat that the minimum interval must suppress
    act = np.zeros_like(times)
    for b in list(beats[:-1]) + [beats[-1] + 0.04]:
        act += np.exp(-0.5 * ((times - b) / 0.02) ** 2)
    act += 0.3 * np.exp(-0.5 * ((times - 0.75) / 0.02) ** 2)
    act += 0.8 * np.exp(-0.5 * ((times - 1.1) / 0.02) ** 2)
    est = pick_peaks(act, times, threshold=0.5, min_interval=0.25)
    assert len(est) == len(beats)
    np.testing.assert_allclose(est, beats + np.r_[np.zeros(6), 0.04], atol=0.011)
    assert mir_eval.beat.f_measure(beats, est) == pytest.approx(1.0)
    # the Beats task scores a track exactly as mir_eval does on the picked peaks
    t = task("beats")
    t.fit([])
    t.reference = lambda track: beats
    logit = np.log(np.clip(act, 1e-6, 1 - 1e-6) / (1 - np.clip(act, 1e-6, 1 - 1e-6)))[:, None]
    shifted = [times, times + 0.05]
    m = t.score_tracks([logit, logit], shifted, [{}, {}], threshold=0.5)
    ref = [mir_eval.beat.f_measure(beats[(beats >= s[0] - .01) & (beats <= s[-1] + .01)],
                                   pick_peaks(act, s, 0.5, 0.25)) for s in shifted]
    assert m["f_measure"] == pytest.approx(np.mean(ref))
    assert 0.0 < m["f_measure"] < 1.0            # the +50 ms grid moves the 40 ms-late beat out of ±70 ms


def test_chord_classes():
    assert chord_class("C:maj") == 0 and chord_class("A:min") == 12 + 9
    assert chord_class("G:7") == 7                  # dominant 7th folds onto its major triad
    assert chord_class("D:min7") == 12 + 2
    assert chord_class("N") == 24 and CHORD_CLASSES[24] == "N"
    assert chord_class("C:sus4") == IGNORE and chord_class("X") == IGNORE and chord_class("B:dim") == IGNORE
    times = np.array([0.1, 0.6, 1.1, 1.6, 2.1])
    y = chord_targets(np.array([[0.0, 1.0], [1.0, 2.0]]), ["C:maj", "C:sus4"], times)
    assert list(y) == [0, 0, IGNORE, IGNORE, 24]


def test_chord_decoding_smooths_and_segments():
    hop = 0.1
    times = np.arange(20) * hop + hop / 2
    cls = np.array([0] * 10 + [21] * 10)
    cls[4] = 7                                       # one-frame blip, removed by smoothing
    act = np.full((20, 25), -4.0)
    act[np.arange(20), cls] = 4.0
    intervals, labels = decode_chords(act, times, smooth=0.5)
    assert labels == ["C:maj", "A:min"]
    np.testing.assert_allclose(intervals, [[0.0, 1.0], [1.0, 2.0]], atol=1e-9)
    raw_intervals, raw_labels = decode_chords(act, times, smooth=0.0)
    assert raw_labels == ["C:maj", "G:maj", "C:maj", "A:min"]


def test_majmin_score_hand_case_and_mir_eval():
    ref_int, ref_lab = np.array([[0.0, 1.0], [1.0, 2.0]]), ["C:maj", "A:min7"]
    est_int, est_lab = np.array([[0.0, 1.25], [1.25, 2.0]]), ["C:maj", "A:min"]
    # 0.25 s of the 2 s are wrong (C:maj under A:min7) -> 0.875
    assert majmin_score(ref_int, ref_lab, est_int, est_lab) == pytest.approx(0.875)
    scores = mir_eval.chord.evaluate(ref_int, ref_lab, est_int, est_lab)
    assert majmin_score(ref_int, ref_lab, est_int, est_lab) == pytest.approx(scores["majmin"])


def test_regression_targets_are_standardised_with_train_statistics_only():
    from mirkit.eval.tasks import make_task, parse_tasks
    task = make_task(parse_tasks({"tempo": {"type": "regression", "label": "tempo"}})["tempo"])
    tracks = [{"split": "train", "tempo": v} for v in (80.0, 100.0, 120.0)] + [{"split": "test", "tempo": 1000.0}]
    task.fit(tracks)
    z = task.targets(tracks)
    np.testing.assert_allclose(z[:3, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[:3, 0].std(), 1.0, atol=1e-6)
    raw = np.array([[80.0], [100.0], [120.0], [1000.0]])
    pred = raw * 0.9 + 7
    assert task.score((pred - task.mean) / task.std, z)["r2"] == pytest.approx(r2_score(raw, pred), rel=1e-5)


# --------------------------------------------------------------------------- song-level ensembles
def test_group_option_is_parsed_and_checked():
    specs = parse_tasks({"key": {"type": "key", "label": "key", "group": "song"}})
    assert specs["key"].group == "song"
    assert parse_tasks({"g": {"type": "multiclass", "label": "genre"}})["g"].group == ""
    with pytest.raises(ParamsError, match=r"probe.tasks.emo.group: song-level ensembling"):
        parse_tasks({"emo": {"type": "regression", "label": "arousal", "group": "song"}})
    with pytest.raises(ParamsError, match=r"probe.tasks.key.group=3"):
        parse_tasks({"key": {"type": "key", "label": "key", "group": 3}})
    with pytest.raises(ParamsError, match=r"probe.tasks.key.group: column 'song'"):
        check_columns(specs, [{"track_id": "a", "key": "C major"}], "store")


def test_ensemble_strategies_hand_case():
    songs = Songs.of([{"song": s} for s in ["a", "a", "b", "a"]], "song")
    assert songs.ids == ["a", "b"] and list(songs.index) == [0, 0, 1, 0]
    out = np.array([[6.0, 5.0, -9.0],    # song a: clip argmax 0
                    [-9.0, 1.0, 3.0],    # song a: clip argmax 2
                    [0.0, 2.0, 1.0],     # song b: its only clip, argmax 1
                    [-9.0, 1.0, 3.0]])   # song a: clip argmax 2
    pred = ensemble(out, songs)
    # song a: vote 2 (two clips of three); max logits [6, 5, 3] -> 0; mean logits [-4, 2.33, -1] -> 1;
    # mean softmax [.24, .17, .59] -> 2
    assert {k: list(v) for k, v in pred.items()} == {"vote": [2, 1], "max": [0, 1], "gmean": [1, 1], "mean": [2, 1]}
    assert tuple(pred) == ENSEMBLES


def test_ensemble_matches_per_song_reference_on_random_logits():
    from scipy.stats import mode
    rng = np.random.default_rng(0)
    out = rng.normal(size=(60, 5)) * 3
    tracks = [{"song": f"s{rng.integers(12)}"} for _ in range(60)]
    songs = Songs.of(tracks, "song")
    pred = ensemble(out, songs)
    for k, sid in enumerate(songs.ids):
        clips = out[[t["song"] == sid for t in tracks]]
        prob = np.exp(clips) / np.exp(clips).sum(-1, keepdims=True)
        assert pred["vote"][k] == mode(clips.argmax(-1), keepdims=False).mode
        assert pred["max"][k] == clips.max(0).argmax()
        assert pred["gmean"][k] == clips.mean(0).argmax()
        assert pred["mean"][k] == prob.mean(0).argmax()


def test_key_song_scores_and_strategy_choice():
    t = task("key")
    t.fit([])
    songs = Songs.of([{"s": "x"}, {"s": "x"}, {"s": "y"}], "s")
    y = t.targets([{"y": "C major"}, {"y": "C major"}, {"y": "A minor"}])
    c, g, am = (KEY_CLASSES.index(k) for k in ("C major", "G major", "A minor"))
    out = np.full((3, 24), -5.0)
    out[0, c], out[0, g] = 4.0, 3.0      # song x: clip 0 says C (G close), clip 1 says G
    out[1, g] = 4.0
    out[2, am] = 4.0
    scores = t.score_songs(out, y, songs)
    # vote: tie C/G -> the smaller class (C): x exact; max: C (4 = 4, first) exact; y exact everywhere
    assert scores["vote"] == {"weighted_score": 1.0, "accuracy": 1.0}
    # gmean / mean: G wins on average (3.5 vs -0.5) -> fifth above C = 0.5 for x
    assert scores["gmean"] == {"weighted_score": pytest.approx(0.75), "accuracy": 0.5}
    assert best_ensemble(scores, "weighted_score") == "vote"          # vote and max tie: the earlier
    assert best_ensemble({**scores, "mean": {"weighted_score": 2.0}}, "weighted_score") == "mean"
    with pytest.raises(TaskDataError, match="different labels"):
        songs.song_targets(np.array([c, g, am]))
    with pytest.raises(TaskDataError, match="no song id"):
        Songs.of([{"track_id": "t", "s": ""}], "s")


def test_key_score_table_is_mir_eval():
    from mirkit.eval.tasks import key_score_table
    table = key_score_table()
    for r in (0, 5, 13, 21):
        for e in range(24):
            assert table[r, e] == mir_eval.key.weighted_score(KEY_CLASSES[r], KEY_CLASSES[e])


# --------------------------------------------------------------------------- JAMS annotations
def write_jams(path, annotations):
    import json
    path.write_text(json.dumps({"file_metadata": {"duration": 10.0}, "annotations": annotations, "sandbox": {}}))
    return path


def test_jams_beats_match_text_reader(tmp_path):
    times = [0.5, 1.0, 1.52, 2.0]
    txt = tmp_path / "b.txt"
    txt.write_text("".join(f"{b}\t{k % 4 + 1}\n" for k, b in enumerate(times)))
    tempo = {"namespace": "tempo", "data": [{"time": 0.0, "duration": 10.0, "value": 120.0, "confidence": 1.0}]}
    beat = {"namespace": "beat", "data": [{"time": b, "duration": 0.0, "value": k + 1, "confidence": None}
                                          for k, b in reversed(list(enumerate(times)))]}
    jams = write_jams(tmp_path / "b.jams", [tempo, beat])
    np.testing.assert_allclose(read_beats(jams), read_beats(txt))
    # beat_position, stored in the dense column form of older JAMS files
    dense = {"namespace": "beat_position", "data": {
        "time": times, "duration": [0.0] * 4, "confidence": [1.0] * 4,
        "value": [{"position": k + 1, "measure": 1, "num_beats": 4, "beat_units": 4} for k in range(4)]}}
    np.testing.assert_allclose(read_beats(write_jams(tmp_path / "p.JAMS", [dense])), times)
    t = task("beats", "ann")
    t.fit([])
    frames = np.arange(50) * 0.05 + 0.025
    np.testing.assert_array_equal(t.frame_targets({"ann": str(jams)}, frames),
                                  t.frame_targets({"ann": str(txt)}, frames))
    with pytest.raises(TaskDataError, match=r"no beat or beat_position annotation.*namespaces: tempo"):
        read_beats(write_jams(tmp_path / "t.jams", [tempo]))
    (tmp_path / "bad.jams").write_text("{not json")
    with pytest.raises(TaskDataError, match="cannot read JAMS"):
        read_beats(tmp_path / "bad.jams")


def test_jams_chords_match_lab_reader(tmp_path):
    lab = tmp_path / "c.lab"
    lab.write_text("0.0 1.5 C:maj\n1.5 2.0 A:min7\n2.0 3.0 N\n")
    chord = {"namespace": "chord", "data": [{"time": 1.5, "duration": 0.5, "value": "A:min7", "confidence": 1},
                                            {"time": 0.0, "duration": 1.5, "value": "C:maj", "confidence": 1},
                                            {"time": 2.0, "duration": 1.0, "value": "N", "confidence": 1}]}
    key = {"namespace": "key_mode", "data": [{"time": 0.0, "duration": 3.0, "value": "C:major", "confidence": 1}]}
    jams = write_jams(tmp_path / "c.jams", [key, chord])
    ref_int, ref_lab = read_chords(lab)
    intervals, labels = read_chords(jams)
    np.testing.assert_allclose(intervals, ref_int)
    assert labels == ref_lab == ["C:maj", "A:min7", "N"]
    t = task("chords", "ann")
    t.fit([])
    frames = np.arange(30) * 0.1 + 0.05
    np.testing.assert_array_equal(t.frame_targets({"ann": str(jams)}, frames),
                                  t.frame_targets({"ann": str(lab)}, frames))
    harte = {**chord, "namespace": "chord_harte"}
    assert read_chords(write_jams(tmp_path / "h.jams", [harte]))[1] == ["C:maj", "A:min7", "N"]
    with pytest.raises(TaskDataError, match="no chord or chord_harte annotation"):
        read_chords(write_jams(tmp_path / "k.jams", [key]))
