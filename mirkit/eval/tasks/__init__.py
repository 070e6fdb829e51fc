"""Downstream tasks: how labels become targets, which loss trains a probe, how outputs are scored.

Split by kind: :mod:`.specs` (the ``probe.tasks`` section: types, validation, label-column check),
:mod:`.readers` (key names, beat/chord annotation files, chord classes), :mod:`.base` (the task base class
and batched metrics), :mod:`.track` (multiclass, multilabel, regression, key), :mod:`.song` (JukeMIR's
song-level ensembles) and :mod:`.frame` (beats, chords). A new task type is one class in the module of
its kind plus one line in :data:`TASK_CLASSES`. Everything public is re-exported here.
"""

from __future__ import annotations

from mirkit.eval.tasks.base import Task, batch_accuracy, batch_macro_auc, batch_r2
from mirkit.eval.tasks.frame import (
    Beats,
    Chords,
    FrameTask,
    beat_targets,
    chord_targets,
    decode_chords,
    frame_hop,
    majmin_score,
    pick_peaks,
)
from mirkit.eval.tasks.readers import (
    CHORD_CLASSES,
    KEY_CLASSES,
    KEY_TONICS,
    PITCH_CLASS,
    chord_class,
    is_jams,
    normalise_key,
    read_beats,
    read_chords,
    read_jams,
    read_lab,
)
from mirkit.eval.tasks.song import ENSEMBLES, Songs, best_ensemble, ensemble
from mirkit.eval.tasks.specs import (
    FRAME_TYPES,
    GROUPED_TYPES,
    IGNORE,
    TASK_TYPES,
    TRACK_TYPES,
    TaskDataError,
    TaskSpec,
    check_columns,
    parse_tasks,
)
from mirkit.eval.tasks.track import Key, Multiclass, Multilabel, Regression, key_score_table, split_tags

TASK_CLASSES: dict[str, type[Task]] = {"multiclass": Multiclass, "multilabel": Multilabel, "regression": Regression,
                                       "key": Key, "beats": Beats, "chords": Chords}


def make_task(spec: TaskSpec) -> Task:
    return TASK_CLASSES[spec.type](spec)


__all__ = ["CHORD_CLASSES", "ENSEMBLES", "FRAME_TYPES", "GROUPED_TYPES", "IGNORE", "KEY_CLASSES", "KEY_TONICS",
           "PITCH_CLASS", "TASK_CLASSES", "TASK_TYPES", "TRACK_TYPES", "Beats", "Chords", "FrameTask", "Key",
           "Multiclass", "Multilabel", "Regression", "Songs", "Task", "TaskDataError", "TaskSpec", "batch_accuracy",
           "batch_macro_auc", "batch_r2", "beat_targets", "best_ensemble", "check_columns", "chord_class",
           "chord_targets", "decode_chords", "ensemble", "frame_hop", "is_jams", "key_score_table",
           "majmin_score", "make_task", "normalise_key", "parse_tasks", "pick_peaks", "read_beats", "read_chords",
           "read_jams", "read_lab", "split_tags"]
