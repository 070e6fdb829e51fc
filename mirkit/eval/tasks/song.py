"""Song-level ensembling (JukeMIR's GiantSteps protocol, ``jukemir/probe/__init__.py``): the outputs of
clips cut from one song (same value in the task's ``group`` column) are combined with each of
:data:`ENSEMBLES`; the strategy best on VALIDATION is the one reported for test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mirkit.eval.tasks.specs import TaskDataError, _missing

# --------------------------------------------------------------------------- song-level ensembles
ENSEMBLES = ("vote", "max", "gmean", "mean")   # JukeMIR's order: ties in validation go to the earlier


@dataclass
class Songs:
    """Which song each clip (row of a split) belongs to: ``index[i]`` = position of clip i's song in ``ids``."""

    index: np.ndarray
    ids: list[str]

    @classmethod
    def of(cls, tracks: Sequence[dict], column: str) -> Songs:
        names = []
        for t in tracks:
            if _missing(t.get(column)):
                raise TaskDataError(f"track {t.get('track_id')!r}: no song id in column '{column}'")
            names.append(str(t[column]))
        ids = sorted(set(names))
        pos = {s: i for i, s in enumerate(ids)}
        return cls(np.array([pos[s] for s in names], dtype=np.int64), ids)

    def song_targets(self, targets: np.ndarray) -> np.ndarray:
        """One class per song; every clip of a song must carry the same label."""
        targets = np.asarray(targets, dtype=np.int64)
        y = np.full(len(self.ids), -1, dtype=np.int64)
        y[self.index] = targets
        differ = np.flatnonzero(y[self.index] != targets)
        if len(differ):
            raise TaskDataError(f"song {self.ids[self.index[differ[0]]]!r}: its clips carry different labels")
        return y


def ensemble(outputs: np.ndarray, songs: Songs) -> dict[str, np.ndarray]:
    """Predicted class per song with each of JukeMIR's strategies, from clip logits ``(..., clips, C)``
    (leading dims, e.g. G configurations, are kept): vote = most frequent clip argmax (the smallest class
    among ties, as scipy's mode), max = argmax of the per-class max logit, gmean = argmax of the mean
    logit (the geometric mean of the clip softmaxes has the same argmax), mean = argmax of the mean softmax."""
    n, c = len(songs.ids), outputs.shape[-1]
    logits = np.moveaxis(np.asarray(outputs, dtype=np.float64), -2, 0)          # (clips, ..., C)
    member = np.zeros((n, len(songs.index)))
    member[songs.index, np.arange(len(songs.index))] = 1.0                         # song x clip
    counts = member.sum(1).reshape((n,) + (1,) * (logits.ndim - 1))

    def per_song(values: np.ndarray) -> np.ndarray:   # sums over each song's clips: (songs, ..., C)
        return np.tensordot(member, values, axes=(1, 0))

    votes = per_song((logits.argmax(-1)[..., None] == np.arange(c)).astype(np.float64))
    peak = np.full((n,) + logits.shape[1:], -np.inf)
    np.maximum.at(peak, songs.index, logits)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    prob = per_song(z / z.sum(-1, keepdims=True))
    out = {"vote": votes.argmax(-1), "max": peak.argmax(-1), "gmean": (per_song(logits) / counts).argmax(-1),
           "mean": (prob / counts).argmax(-1)}
    return {k: np.moveaxis(v, 0, -1) for k, v in out.items()}   # (..., songs)


def best_ensemble(scores: dict[str, dict[str, float]], primary: str) -> str:
    """The strategy with the highest ``primary``; ties go to the earlier of :data:`ENSEMBLES`."""
    return max(ENSEMBLES, key=lambda s: (scores[s][primary], -ENSEMBLES.index(s)))
