"""Track-level task types (one label per manifest row; scored per track after fusion of its chunks):
``multiclass`` (accuracy), ``multilabel`` (macro ROC-AUC, primary, and macro AP; JukeMIR/MARBLE MTT),
``regression`` (R² per output and their mean; JukeMIR EmoMusic), ``key`` (24 classes, mean
``mir_eval.key.weighted_score``, primary, and accuracy; JukeMIR GiantSteps)."""

from __future__ import annotations

import math
from typing import Any

import mir_eval
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, average_precision_score, r2_score, roc_auc_score

from mirkit.eval.tasks.base import Task, _softmax_grad, batch_accuracy, batch_macro_auc, batch_r2
from mirkit.eval.tasks.readers import KEY_CLASSES, normalise_key
from mirkit.eval.tasks.song import Songs, ensemble
from mirkit.eval.tasks.specs import TaskDataError


class Multiclass(Task):
    primary = "accuracy"

    def fit(self, tracks):
        self.classes = sorted({str(t[self.spec.label[0]]) for t in tracks if self.keep(t)})
        if len(self.classes) < 2:
            raise TaskDataError(f"task {self.name}: needs at least 2 classes, found {self.classes}")
        self.n_outputs = len(self.classes)
        self._index = {c: i for i, c in enumerate(self.classes)}

    def _label(self, t) -> str:
        return str(t[self.spec.label[0]])

    def targets(self, tracks):
        return np.array([self._index[self._label(t)] for t in tracks], dtype=np.int64)

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    def score(self, outputs, targets):
        return self.score_labels(outputs.argmax(-1), targets)

    def primary_scores(self, outputs, targets):
        return batch_accuracy(outputs, targets)

    def output_grad(self, outputs, targets):
        return _softmax_grad(outputs, targets)

    def losses(self, outputs, targets):
        g, n, c = outputs.shape
        return F.cross_entropy(outputs.reshape(-1, c), targets.reshape(-1).repeat(g), reduction="none").view(g, n).mean(1)

    def score_labels(self, pred: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Metrics of predicted class indices."""
        return {"accuracy": float(accuracy_score(targets, pred))}

    def score_songs(self, outputs: np.ndarray, targets: np.ndarray, songs: Songs) -> dict[str, dict[str, float]]:
        """Song-level metrics of every ensemble strategy: ``{strategy: {metric: value}}``."""
        y = songs.song_targets(targets)
        return {name: self.score_labels(pred, y) for name, pred in ensemble(outputs, songs).items()}

    def primary_labels(self, pred: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The primary metric of predicted class indices ``(G, rows)`` for each of G configurations."""
        return (np.asarray(pred) == np.asarray(targets)).mean(-1)

    def song_primary_scores(self, outputs: np.ndarray | torch.Tensor, targets: np.ndarray, songs: Songs) -> np.ndarray:
        """JukeMIR's validation ``score`` of G output sets ``(G, clips, C)`` at once: the song-level primary
        metric of the best ensemble strategy."""
        y = songs.song_targets(targets)
        preds = ensemble(np.asarray(torch.as_tensor(outputs).float().cpu()), songs)
        return np.max([self.primary_labels(p, y) for p in preds.values()], axis=0)


class Key(Multiclass):
    primary = "weighted_score"

    def fit(self, tracks):
        self.classes = list(KEY_CLASSES)
        self.n_outputs = 24
        self._index = {c: i for i, c in enumerate(self.classes)}

    def _label(self, t) -> str:
        return normalise_key(t[self.spec.label[0]])

    def primary_scores(self, outputs, targets):
        pred = torch.as_tensor(outputs).argmax(-1).cpu().numpy()
        return key_score_table()[np.asarray(targets)[None, :], pred].mean(-1)

    def primary_labels(self, pred, targets):
        return key_score_table()[np.asarray(targets), np.asarray(pred)].mean(-1)

    def score_labels(self, pred, targets):
        weighted = key_score_table()[np.asarray(targets), np.asarray(pred)]
        return {"weighted_score": float(np.mean(weighted)), "accuracy": float(np.mean(pred == targets))}


_KEY_SCORES: np.ndarray | None = None


def key_score_table() -> np.ndarray:
    """``[reference, estimate]`` -> ``mir_eval.key.weighted_score`` over the 24 key classes (computed
    once: the probe scores every validation evaluation of every configuration with it)."""
    global _KEY_SCORES
    if _KEY_SCORES is None:
        _KEY_SCORES = np.array([[mir_eval.key.weighted_score(r, e) for e in KEY_CLASSES] for r in KEY_CLASSES])
    return _KEY_SCORES


def split_tags(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [s.strip() for s in str(value).split(";") if s.strip()]


class Multilabel(Task):
    primary = "roc_auc"

    def keep(self, track):
        # an empty tag list is a valid label (JukeMIR keeps MTT clips without top-50 tags)
        return self.spec.label[0] in track and track[self.spec.label[0]] is not None

    def fit(self, tracks):
        col = self.spec.label[0]
        self.classes = sorted({tag for t in tracks if self.keep(t) for tag in split_tags(_blank(t[col]))})
        if not self.classes:
            raise TaskDataError(f"task {self.name}: column '{col}' holds no tags")
        self.n_outputs = len(self.classes)
        self._index = {c: i for i, c in enumerate(self.classes)}

    def targets(self, tracks):
        y = np.zeros((len(tracks), self.n_outputs), dtype=np.float32)
        for i, t in enumerate(tracks):
            for tag in split_tags(_blank(t[self.spec.label[0]])):
                y[i, self._index[tag]] = 1.0
        return y

    def loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets)

    def output_grad(self, outputs, targets):
        return (torch.sigmoid(outputs) - targets) / targets.numel()

    def losses(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets.expand_as(outputs), reduction="none").mean((1, 2))

    def primary_scores(self, outputs, targets):
        return batch_macro_auc(outputs, targets)

    def score(self, outputs, targets):
        """Macro averages over the tags that have both positives and negatives in this split."""
        ok = (targets.min(0) == 0) & (targets.max(0) == 1)
        if not ok.any():
            raise TaskDataError(f"task {self.name}: no tag has both positive and negative examples")
        y, s = targets[:, ok], outputs[:, ok]
        return {"roc_auc": float(roc_auc_score(y, s, average="macro")),
                "ap": float(average_precision_score(y, s, average="macro"))}


def _blank(v: Any) -> Any:
    return "" if isinstance(v, float) and math.isnan(v) else v


class Regression(Task):
    primary = "r2"

    def fit(self, tracks):
        """Targets are z-scored with the TRAIN split's mean/std (R² is unchanged by this, and the
        probe no longer has to learn the targets' offset and scale, e.g. tempo in BPM)."""
        self.n_outputs = len(self.spec.label)
        train = [t for t in tracks if t.get("split") == "train"]
        raw = self._raw(train) if train else np.zeros((0, self.n_outputs), np.float32)
        self.mean = raw.mean(axis=0) if len(raw) else np.zeros(self.n_outputs, np.float32)
        std = raw.std(axis=0) if len(raw) else np.ones(self.n_outputs, np.float32)
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)

    def _raw(self, tracks):
        try:
            return np.array([[float(t[c]) for c in self.spec.label] for t in tracks], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise TaskDataError(f"task {self.name}: non-numeric value in {self.spec.label} ({exc})") from exc

    def targets(self, tracks):
        return ((self._raw(tracks) - self.mean) / self.std).astype(np.float32)

    def loss(self, outputs, targets):
        return F.mse_loss(outputs, targets)

    def output_grad(self, outputs, targets):
        return 2 * (outputs - targets) / targets.numel()

    def losses(self, outputs, targets):
        return (outputs - targets).pow(2).mean((1, 2))

    def primary_scores(self, outputs, targets):
        return batch_r2(outputs, targets)

    def score(self, outputs, targets):
        per = r2_score(targets, outputs, multioutput="raw_values")
        out = {f"r2_{c}": float(v) for c, v in zip(self.spec.label, per, strict=True)}
        out["r2"] = float(np.mean(per))
        return out
