"""Task metrics against hand-computed values and against mir_eval / sklearn directly; decoding."""

import mir_eval
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

from mirkit.params import ParamsError
from mirkit.tasks import (CHORD_CLASSES, IGNORE, KEY_CLASSES, TaskDataError, TaskSpec, beat_targets,
                          check_columns, chord_class, chord_targets, decode_chords, majmin_score, make_task,
                          normalise_key, parse_tasks, pick_peaks)


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
    direct = np.mean([mir_eval.key.weighted_score(r, e) for r, e in zip(refs, ests)])
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
    from mirkit.tasks import make_task, parse_tasks
    task = make_task(parse_tasks({"tempo": {"type": "regression", "label": "tempo"}})["tempo"])
    tracks = [{"split": "train", "tempo": v} for v in (80.0, 100.0, 120.0)] + [{"split": "test", "tempo": 1000.0}]
    task.fit(tracks)
    z = task.targets(tracks)
    np.testing.assert_allclose(z[:3, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[:3, 0].std(), 1.0, atol=1e-6)
    raw = np.array([[80.0], [100.0], [120.0], [1000.0]])
    pred = raw * 0.9 + 7
    assert task.score((pred - task.mean) / task.std, z)["r2"] == pytest.approx(r2_score(raw, pred), rel=1e-5)
