"""Task specs (section ``probe.tasks``): the task types, their validation and the label-column check.

Task spec: ``{name: {type: ..., label: column or [columns], group: column (optional), options: {...}}}``;
multilabel columns hold ``;``-separated tags. Errors name the offending key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
