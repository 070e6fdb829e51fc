"""Frame-level task types (label = path of an annotation file; the probe is applied to every frame
embedding, as the CoJEPA/MT2 local tasks): ``beats`` (peak picking -> ``mir_eval.beat.f_measure``, ±70 ms)
and ``chords`` (majmin + N per frame -> smoothed argmax segments -> ``mir_eval.chord`` majmin weighted accuracy)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import mir_eval
import numpy as np
import torch
import torch.nn.functional as F

from mirkit.eval.tasks.base import Task, _softmax_grad
from mirkit.eval.tasks.readers import CHORD_CLASSES, chord_class, read_beats, read_chords
from mirkit.eval.tasks.specs import IGNORE, TaskDataError, _missing


# --------------------------------------------------------------------------- frame-level tasks
class FrameTask(Task):
    """Per-frame targets on the embedding frame grid; decoded to events/segments for scoring."""

    level = "frame"

    def keep(self, track):
        return not _missing(track.get(self.spec.label[0]))

    def frame_targets(self, track: dict, times: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reference(self, track: dict) -> Any:
        raise NotImplementedError

    def score_tracks(self, activations: Sequence[np.ndarray], times: Sequence[np.ndarray],
                     tracks: Sequence[dict], **decode: Any) -> dict[str, float]:
        raise NotImplementedError


def frame_hop(times: np.ndarray) -> float:
    return float(np.median(np.diff(times))) if len(times) > 1 else 1.0


class Beats(FrameTask):
    """Beat tracking as per-frame beat/no-beat (BCE), targets widened to the two neighbour frames
    with weight 0.5 (the usual target widening of frame-wise beat trackers, e.g. Böck et al.)."""

    primary = "f_measure"
    min_interval = 0.25   # s between two decoded beats (up to 240 BPM)

    def fit(self, tracks):
        self.n_outputs = 1

    def frame_targets(self, track, times):
        beats = read_beats(track[self.spec.label[0]])
        return beat_targets(beats, times)

    def reference(self, track):
        return read_beats(track[self.spec.label[0]])

    def loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs[..., 0], targets)

    def output_grad(self, outputs, targets):
        return (torch.sigmoid(outputs) - targets.unsqueeze(-1)) / targets.numel()

    def losses(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs[..., 0], targets.expand(outputs.shape[:-1]),
                                                  reduction="none").mean(1)

    def score_tracks(self, activations, times, tracks, threshold: float = 0.5, **_):
        f = []
        for act, t, track in zip(activations, times, tracks, strict=True):
            ref = self.reference(track)
            hop = frame_hop(t)
            ref = ref[(ref >= t[0] - hop / 2) & (ref <= t[-1] + hop / 2)]   # beats the frames cover
            est = pick_peaks(1 / (1 + np.exp(-act[:, 0])), t, threshold, self.min_interval)
            with warnings.catch_warnings():   # empty estimates/references score 0, no need to warn
                warnings.simplefilter("ignore", UserWarning)
                f.append(mir_eval.beat.f_measure(ref, est))
        return {"f_measure": float(np.mean(f))}


def beat_targets(beats: np.ndarray, times: np.ndarray) -> np.ndarray:
    """1 at the frame nearest each beat, 0.5 on its neighbours, 0 elsewhere."""
    y = np.zeros(len(times), dtype=np.float32)
    if len(times) == 0:
        return y
    hop = frame_hop(times)
    for b in beats:
        i = int(np.argmin(np.abs(times - b)))
        if abs(times[i] - b) > hop:
            continue   # beat outside the embedded range
        for j in (i - 1, i + 1):
            if 0 <= j < len(y):
                y[j] = max(y[j], 0.5)
        y[i] = 1.0
    return y


def pick_peaks(activation: np.ndarray, times: np.ndarray, threshold: float, min_interval: float) -> np.ndarray:
    """Beat times: local maxima of ``activation`` above ``threshold``, greedily keeping the
    strongest peaks at least ``min_interval`` seconds apart."""
    a = np.asarray(activation, dtype=np.float64)
    if len(a) == 0:
        return np.zeros(0)
    left = np.concatenate([[-np.inf], a[:-1]])
    right = np.concatenate([a[1:], [-np.inf]])
    peaks = np.flatnonzero((a >= left) & (a > right) & (a >= threshold))
    kept: list[int] = []
    for p in peaks[np.argsort(-a[peaks], kind="stable")]:
        if all(abs(times[p] - times[q]) >= min_interval for q in kept):
            kept.append(int(p))
    return np.sort(times[kept]) if kept else np.zeros(0)


class Chords(FrameTask):
    """Chord recognition as per-frame majmin+N classification (25 classes, CE; frames whose chord
    is outside the vocabulary are ignored in training), decoded by smoothing the frame
    probabilities over ``smooth`` seconds, taking the argmax and merging runs into segments."""

    primary = "majmin"
    smooth = 0.5

    def fit(self, tracks):
        self.n_outputs = len(CHORD_CLASSES)
        self.smooth = float(self.spec.options.get("smooth", self.smooth))

    def frame_targets(self, track, times):
        intervals, labels = read_chords(track[self.spec.label[0]])
        return chord_targets(intervals, labels, times)

    def reference(self, track):
        return read_chords(track[self.spec.label[0]])

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)

    def output_grad(self, outputs, targets):
        return _softmax_grad(outputs, targets, IGNORE)

    def losses(self, outputs, targets):
        g, n, c = outputs.shape
        per = F.cross_entropy(outputs.reshape(-1, c), targets.reshape(-1).repeat(g), ignore_index=IGNORE,
                              reduction="none").view(g, n)
        return per.sum(1) / (targets != IGNORE).sum().clamp_min(1)

    def score_tracks(self, activations, times, tracks, **_):
        scores = []
        for act, t, track in zip(activations, times, tracks, strict=True):
            ref_int, ref_lab = self.reference(track)
            est_int, est_lab = decode_chords(act, t, self.smooth)
            scores.append(majmin_score(ref_int, ref_lab, est_int, est_lab))
        if np.all(np.isnan(scores)):
            raise TaskDataError(f"task {self.name}: no test track has a majmin-scorable reference chord")
        return {"majmin": float(np.nanmean(scores))}


def chord_targets(intervals: np.ndarray, labels: Sequence[str], times: np.ndarray) -> np.ndarray:
    """Class of the chord sounding at each frame centre (N where no interval covers it)."""
    y = np.full(len(times), 24, dtype=np.int64)
    classes = [chord_class(lab) for lab in labels]
    for (start, end), c in zip(intervals, classes, strict=True):
        y[(times >= start) & (times < end)] = c
    return y


def decode_chords(activation: np.ndarray, times: np.ndarray, smooth: float) -> tuple[np.ndarray, list[str]]:
    """Smoothed argmax segments: (intervals (n, 2), labels) with frame boundaries at centre ± hop/2."""
    hop = frame_hop(times)
    z = activation - activation.max(-1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    width = max(1, int(round(smooth / hop)))
    if width > 1:
        kernel = np.ones(width) / width
        prob = np.stack([np.convolve(prob[:, k], kernel, mode="same") for k in range(prob.shape[1])], 1)
    cls = prob.argmax(-1)
    change = np.flatnonzero(np.diff(cls)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(cls)]])
    intervals = np.stack([times[starts] - hop / 2, times[ends - 1] + hop / 2], 1)
    intervals[0, 0] = max(intervals[0, 0], 0.0)
    return intervals, [CHORD_CLASSES[cls[s]] for s in starts]


def majmin_score(ref_int, ref_lab, est_int, est_lab) -> float:
    """MIREX majmin weighted accuracy of one track (mir_eval.chord), over the reference's span."""
    est_int, est_lab = mir_eval.util.adjust_intervals(est_int, est_lab, ref_int.min(), ref_int.max(),
                                                      mir_eval.chord.NO_CHORD, mir_eval.chord.NO_CHORD)
    intervals, ref, est = mir_eval.util.merge_labeled_intervals(ref_int, ref_lab, est_int, est_lab)
    durations = mir_eval.util.intervals_to_durations(intervals)
    comparisons = mir_eval.chord.majmin(ref, est)
    if not np.any((comparisons >= 0) & (durations > 0)):
        return float("nan")
    return float(mir_eval.chord.weighted_accuracy(comparisons, durations))
