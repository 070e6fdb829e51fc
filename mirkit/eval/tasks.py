"""Downstream task types: how labels become targets, which loss trains a probe, how outputs are scored.

Track-level types (one label per manifest row, scored after late fusion of chunk outputs):
``multiclass`` (accuracy), ``multilabel`` (macro ROC-AUC, primary, and macro AP; JukeMIR/MARBLE MTT),
``regression`` (R² per output and their mean; JukeMIR EmoMusic), ``key`` (24 classes, mean
``mir_eval.key.weighted_score``, primary, and accuracy; JukeMIR GiantSteps).
Frame-level types (label = path of an annotation file, probe applied to every frame embedding,
as the CoJEPA/MT2 local tasks): ``beats`` (peak picking -> ``mir_eval.beat.f_measure``, ±70 ms) and
``chords`` (majmin + N per frame -> smoothed argmax segments -> ``mir_eval.chord`` majmin weighted accuracy).
Annotation files: beat times as text (first column) or JAMS (``beat``/``beat_position`` namespace);
chords as ``start end label`` .lab or JAMS (``chord``/``chord_harte`` namespace).

Song-level ensembling (JukeMIR's GiantSteps protocol, ``jukemir/probe/__init__.py``): for a
multiclass or key task with ``group: <column>``, the outputs of clips cut from the same song (same
value in that column) are ensembled with each of :data:`ENSEMBLES` and scored per song; the
strategy with the best VALIDATION score is the one reported for test.

Task spec (section ``probe.tasks`` of params): ``{name: {type: ..., label: column or [columns],
group: column (optional), options: {...}}}``; multilabel columns hold ``;``-separated tags.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mir_eval
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, average_precision_score, r2_score, roc_auc_score

from mirkit.errors import InputError
from mirkit.params import ParamsError

TRACK_TYPES = ("multiclass", "multilabel", "regression", "key")
FRAME_TYPES = ("beats", "chords")
TASK_TYPES = TRACK_TYPES + FRAME_TYPES
GROUPED_TYPES = ("multiclass", "key")   # the types whose clips can be ensembled per song
IGNORE = -100   # frame target ignored by the loss (e.g. a chord outside the majmin vocabulary)


class TaskDataError(InputError):
    """A task cannot run on this data (missing labels, unreadable annotation, ...)."""


# --------------------------------------------------------------------------- task specs
@dataclass
class TaskSpec:
    name: str
    type: str
    label: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    group: str = ""     # column naming the song a clip was cut from ("" = no song-level ensembling)


def parse_tasks(raw: dict[str, Any], key: str = "probe.tasks") -> dict[str, TaskSpec]:
    """Validate the task mapping; errors name the offending key."""
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{key}: expected a non-empty mapping of task name -> {{type, label}}")
    specs = {}
    for name, spec in raw.items():
        k = f"{key}.{name}"
        if not isinstance(spec, dict):
            raise ParamsError(f"{k}: expected a mapping with 'type' and 'label'")
        unknown = set(spec) - {"type", "label", "options", "group"}
        if unknown:
            raise ParamsError(f"{k}.{sorted(unknown)[0]}: unknown key (known: group, label, options, type)")
        ttype = spec.get("type")
        if ttype not in TASK_TYPES:
            raise ParamsError(f"{k}.type={ttype!r}: allowed values are {', '.join(TASK_TYPES)}")
        label = spec.get("label")
        labels = [label] if isinstance(label, str) else label
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise ParamsError(f"{k}.label={label!r}: expected a column name or a list of column names")
        if len(labels) > 1 and ttype != "regression":
            raise ParamsError(f"{k}.label={label!r}: only regression tasks take several columns")
        group = spec.get("group") or ""
        if not isinstance(group, str):
            raise ParamsError(f"{k}.group={group!r}: expected the name of the column naming each clip's song")
        if group and ttype not in GROUPED_TYPES:
            raise ParamsError(f"{k}.group: song-level ensembling applies to {', '.join(GROUPED_TYPES)} "
                              f"tasks, not {ttype}")
        specs[str(name)] = TaskSpec(str(name), ttype, list(labels), dict(spec.get("options") or {}), group)
    return specs


def check_columns(specs: dict[str, TaskSpec], tracks: Sequence[dict], where: str,
                  key: str = "probe.tasks") -> None:
    """Fail before any work when a task's label column is absent from a store's tracks."""
    columns = set().union(*(t.keys() for t in tracks)) if tracks else set()
    for spec in specs.values():
        for field_name, cols in (("label", spec.label), ("group", [spec.group] if spec.group else [])):
            for col in cols:
                if col not in columns:
                    raise ParamsError(f"{key}.{spec.name}.{field_name}: column '{col}' is not in {where} "
                                      f"(columns: {', '.join(sorted(columns))})")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


# --------------------------------------------------------------------------- key names
PITCH_CLASS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
KEY_TONICS = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
KEY_CLASSES = tuple(f"{t} {m}" for m in ("major", "minor") for t in KEY_TONICS)   # 0..11 major, 12..23 minor
_KEY_RE = re.compile(r"^\s*([a-gA-G])\s*([#♯b♭]*)\s*[:\s_-]?\s*(major|minor|maj|min|m)?\s*$")


def normalise_key(label: str) -> str:
    """'d# minor', 'Eb:min', 'C#maj', 'A' -> canonical flat spelling ('Eb minor', 'Db major', 'A major')."""
    m = _KEY_RE.match(str(label))
    if not m:
        raise TaskDataError(f"key label {label!r}: expected e.g. 'C major' or 'A minor'")
    letter, accidentals, mode = m.groups()
    pc = PITCH_CLASS[letter.lower()] + sum(1 if a in "#♯" else -1 for a in accidentals)
    mode = "minor" if (mode or "major").lower() in ("minor", "min", "m") else "major"
    return f"{KEY_TONICS[pc % 12]} {mode}"


# --------------------------------------------------------------------------- annotation files
def read_jams(path: str | Path, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    """Observations ``{time, duration, value, confidence}`` of the first annotation in a JAMS file
    whose namespace is the earliest of ``namespaces`` present. JAMS is JSON, read with ``json``;
    ``data`` may be a list of observations (JAMS 0.3) or a dict of columns (older dense form)."""
    try:
        doc = json.loads(Path(path).read_text())
        annotations = doc.get("annotations", []) if isinstance(doc, dict) else []
        for ns in namespaces:
            for ann in annotations:
                if isinstance(ann, dict) and ann.get("namespace") == ns:
                    return _jams_observations(ann.get("data", []))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise TaskDataError(f"{path}: cannot read JAMS ({exc})") from exc
    found = sorted({a["namespace"] for a in annotations
                    if isinstance(a, dict) and isinstance(a.get("namespace"), str)})
    raise TaskDataError(f"{path}: no {' or '.join(namespaces)} annotation in this JAMS file "
                        f"(namespaces: {', '.join(found) or 'none'})")


def _jams_observations(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):   # dense: {"time": [...], "duration": [...], "value": [...], ...}
        n = len(data.get("time", []))
        return [{k: (v[i] if isinstance(v, list) and i < len(v) else None) for k, v in data.items()}
                for i in range(n)]
    return [dict(obs) for obs in data]


def is_jams(path: str | Path) -> bool:
    return str(path).lower().endswith(".jams")


def read_beats(path: str | Path) -> np.ndarray:
    """Beat times (s): from a JAMS file (``beat``, else ``beat_position`` namespace) or a text
    file whose first column is the time (.txt/.beats/.lab)."""
    if is_jams(path):
        obs = read_jams(path, ("beat", "beat_position"))
        try:
            return np.array(sorted(float(o["time"]) for o in obs))
        except (KeyError, TypeError, ValueError) as exc:
            raise TaskDataError(f"{path}: bad beat time in JAMS ({exc})") from exc
    try:
        rows = [line.split() for line in Path(path).read_text().splitlines()]
        return np.array(sorted(float(r[0]) for r in rows if r and not r[0].startswith("#")))
    except (OSError, ValueError) as exc:
        raise TaskDataError(f"{path}: cannot read beat times ({exc})") from exc


def read_chords(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Chord intervals (n, 2) and labels from a JAMS file (``chord``, else ``chord_harte``
    namespace; interval = [time, time + duration]) or a ``start end label`` .lab file."""
    if not is_jams(path):
        return read_lab(path)
    obs = read_jams(path, ("chord", "chord_harte"))
    try:
        obs = sorted(obs, key=lambda o: float(o["time"]))
        intervals = np.array([[float(o["time"]), float(o["time"]) + float(o["duration"])] for o in obs],
                             dtype=np.float64).reshape(-1, 2)
        labels = [str(o["value"]) for o in obs]
    except (KeyError, TypeError, ValueError) as exc:
        raise TaskDataError(f"{path}: bad chord observation in JAMS ({exc})") from exc
    if not labels:
        raise TaskDataError(f"{path}: the JAMS chord annotation is empty")
    return intervals, labels


def read_lab(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Chord intervals (n, 2) and labels from a ``start end label`` .lab file."""
    try:
        intervals, labels = mir_eval.io.load_labeled_intervals(str(path))
    except (OSError, ValueError) as exc:
        raise TaskDataError(f"{path}: cannot read chord lab ({exc})") from exc
    return intervals, list(labels)


CHORD_CLASSES = tuple(f"{t}:{q}" for q in ("maj", "min") for t in KEY_TONICS) + ("N",)   # 25


def chord_class(label: str) -> int:
    """majmin+N class of a chord label; IGNORE for chords outside the vocabulary (sus, dim, aug, X).

    A chord counts as major/minor when its triad has the major/minor third and the perfect fifth
    (so 7th chords fold onto their triad), as in the MIREX majmin reduction.
    """
    try:
        root, bitmap, _ = mir_eval.chord.encode(label)
    except mir_eval.chord.InvalidChordException as exc:
        raise TaskDataError(f"chord label {label!r}: {exc}") from exc
    if root < 0:
        return 24 if label.strip() == "N" else IGNORE   # N, or X (unknown)
    if bitmap[7] and bitmap[4] and not bitmap[3]:
        return root % 12
    if bitmap[7] and bitmap[3] and not bitmap[4]:
        return 12 + root % 12
    return IGNORE


# --------------------------------------------------------------------------- task objects
class Task:
    """Base class: ``fit`` learns the label vocabulary from all labelled tracks (no features involved)."""

    level = "track"
    primary = ""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec, self.name = spec, spec.name
        self.n_outputs = 0

    def fit(self, tracks: Sequence[dict]) -> None:
        pass

    def keep(self, track: dict) -> bool:
        """Whether a track has a usable label."""
        return not any(_missing(track.get(c)) for c in self.spec.label)

    def targets(self, tracks: Sequence[dict]) -> np.ndarray:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over everything but the last dim of ``outputs`` ((..., n_outputs))."""
        raise NotImplementedError

    def score(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def primary_scores(self, outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
        """The primary metric of each of G output sets ``(G, rows, n_outputs)`` (what early stopping
        and model selection read); subclasses compute it for all G at once."""
        return np.array([self.score(np.asarray(o), targets)[self.primary] for o in outputs])

    def output_grad(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Gradient of the sum over G configurations of each one's mean loss, with respect to their
        outputs ``(G, rows, n_outputs)``; ``targets`` are shared by the G configurations. Closed form
        in the subclasses; autograd through :meth:`loss` here."""
        with torch.enable_grad():
            out = outputs.detach().requires_grad_(True)
            (self.loss(out, targets.unsqueeze(0).expand(len(out), *targets.shape)) * len(out)).backward()
        assert out.grad is not None
        return out.grad

    def losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of each of G output sets ``(G, rows, n_outputs)``: ``(G,)``."""
        return torch.stack([self.loss(o, targets) for o in outputs])


def batch_accuracy(outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Accuracy of the argmax of each of G output sets ``(G, rows, C)``."""
    out = torch.as_tensor(outputs)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64, device=out.device)
    return (out.argmax(-1) == y).double().mean(-1).cpu().numpy()


def batch_r2(outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Mean over outputs of scikit-learn's ``r2_score`` (raw values), for G output sets at once."""
    out = torch.as_tensor(outputs).double()
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float64, device=out.device).reshape(out.shape[1], -1)
    ss_res = (out - y).pow(2).sum(1)
    ss_tot = (y - y.mean(0)).pow(2).sum(0)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300),
                     torch.where(ss_res == 0, 1.0, 0.0).double())
    return r2.mean(-1).cpu().numpy()


def batch_macro_auc(outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Macro ROC-AUC over the columns with both positives and negatives (ties count one half, as in
    scikit-learn's ``roc_auc_score``) for G output sets ``(G, rows, C)``: Mann-Whitney U from ranks.
    NaN when no column has both classes."""
    from scipy.stats import rankdata
    s = np.asarray(torch.as_tensor(outputs).double().cpu())
    y = np.asarray(targets, dtype=np.float64)
    pos = y.sum(0)
    ok = (pos > 0) & (pos < len(y))
    if not ok.any():
        return np.full(s.shape[0], np.nan)
    s, y, p = s[..., ok], y[:, ok], pos[ok]
    u = (rankdata(s, axis=1) * y).sum(1) - p * (p + 1) / 2
    return (u / (p * (len(y) - p))).mean(-1)


def _softmax_grad(outputs: torch.Tensor, targets: torch.Tensor, ignore: int | None = None) -> torch.Tensor:
    """d/d(outputs) of the mean cross-entropy of each configuration (rows with ``ignore`` excluded)."""
    g = torch.softmax(outputs, -1)
    y = targets.reshape(-1)
    if ignore is not None:
        valid = y != ignore
        g = g * valid.view(1, -1, 1)
        y = torch.where(valid, y, 0)
        count = int(valid.sum().clamp_min(1))
    else:
        valid, count = None, len(y)
    rows = torch.arange(len(y), device=g.device)
    sub = torch.ones(len(y), dtype=g.dtype, device=g.device) if valid is None else valid.to(g.dtype)
    g[:, rows, y] -= sub
    return g / count


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


TASK_CLASSES = {"multiclass": Multiclass, "multilabel": Multilabel, "regression": Regression,
                "key": Key, "beats": Beats, "chords": Chords}


def make_task(spec: TaskSpec) -> Task:
    return TASK_CLASSES[spec.type](spec)
