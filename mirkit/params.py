"""Typed, validated parameter sections read from ``params.yaml``.

Each stage declares a dataclass whose fields carry their constraints through :func:`param`.
:func:`resolve` turns the raw YAML section (plus CLI overrides) into that dataclass and fails
before any work with a :class:`ParamsError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mirkit.errors import InputError

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

DEFAULT_PARAMS = Path("params.yaml")
#: ``--params none``: no params file, built-in defaults only
NO_PARAMS = "none"


class ParamsError(InputError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def param(default: Any = dataclasses.MISSING, *, choices: typing.Iterable[Any] | None = None,
          ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, help: str = "") -> Any:
    """A dataclass field with validation metadata (choices and numeric bounds)."""
    meta = {"choices": tuple(choices) if choices is not None else None,
            "ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(value)), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load_yaml_section(path: str | Path | None, section: str) -> dict[str, Any]:
    """The raw mapping of one section of a params file.

    ``None`` means the default ``params.yaml``; that file when absent, and the word ``none``, give ``{}``
    (built-in defaults); any other file that does not exist is an error (a misspelt name must not silently
    fall back to defaults)."""
    if str(path) == NO_PARAMS:
        return {}
    path = Path(path) if path is not None else DEFAULT_PARAMS
    if not path.exists():
        if path == DEFAULT_PARAMS:
            return {}
        raise ParamsError(f"--params {path}: no such file (give `--params {NO_PARAMS}` for built-in defaults)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    raw = data.get(section, {}) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: section '{section}' must be a mapping, got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is parsed as YAML (so 1e-4, true, [a, b] work).

    The key may be dotted (``pretrain.steps``, ``recipe_params.myna.mask_ratio``); ``key:=value``
    marks a mapping that replaces the one in the params file instead of merging into it."""
    if "=" not in text:
        raise ParamsError(f"override '{text}': expected KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{text}': the value is not valid YAML ({exc})") from None
    return key.strip(), parsed


def _merge(base: Any, extra: Any) -> Any:
    """``extra`` merged into ``base``: mappings key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for k, v in extra.items():
            out[k] = _merge(base.get(k), v)
        return out
    return extra


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None, section: str = "",
                    fields: typing.Iterable[str] = ()) -> dict[str, Any]:
    """The section ``raw`` with command-line overrides applied.

    Keys may carry the section prefix (``pretrain.steps``, DVC's ``-S`` form) and dots into
    mappings (``recipe_params.myna.mask_ratio``); mapping values merge into the existing mapping
    (``recipe_params={myna: {mask_ratio: 0.5}}`` keeps myna's other keys) unless the key ends in
    ``:`` (``runs:={mine: ...}``, from ``--set runs:={...}``; ``recipe_params.myna:={...}``), which
    replaces it."""
    out = dict(raw)
    fields = set(fields)
    for key, value in (overrides or {}).items():
        replace = key.endswith(":")
        path = key.rstrip(":").split(".")
        if section and len(path) > 1 and path[0] == section and path[0] not in fields:
            path = path[1:]
        if fields and path[0] not in fields:
            prefix = f"{section}." if section else ""
            raise ParamsError(f"{prefix}{path[0]}: unknown parameter{_suggest(path[0], fields)} "
                              f"(known: {', '.join(sorted(fields))})")
        if len(path) > 1 and path[0] in out and not isinstance(out[path[0]], dict):
            raise ParamsError(f"{'.'.join(path)}: {path[0]} is not a mapping")
        if replace:
            out[path[0]] = _replace_at(out.get(path[0]), path[1:], value)
            continue
        for part in reversed(path[1:]):
            value = {part: value}
        out[path[0]] = _merge(out.get(path[0]), value)
    return out


def _replace_at(base: Any, path: list[str], value: Any) -> Any:
    """``base`` with the value at the dotted ``path`` replaced by ``value`` (not merged into it)."""
    if not path:
        return value
    out = dict(base) if isinstance(base, dict) else {}
    out[path[0]] = _replace_at(out.get(path[0]), path[1:], value)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if len(errors) == 1 else
                          f"{key}={value!r}: expected one of {', '.join(_type_name(a) for a in args)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}={value!r}: expected a list")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ParamsError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}={value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}={value!r}: expected a string")
        return value
    return value


def _check_bounds(key: str, value: Any, meta: dict[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value is not None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in choices:
                raise ParamsError(f"{key}={v!r}: allowed values are {', '.join(map(str, choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for name, op, sym in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            bound = meta.get(name)
            if bound is not None and not op(value, bound):
                raise ParamsError(f"{key}={value!r}: must be {sym} {bound}")


def resolve(cls: type[T], raw: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            section: str = "") -> T:
    """Build and validate ``cls`` from a raw mapping plus overrides (see :func:`apply_overrides`).

    Unknown keys are errors naming the closest known key (a typo must not silently fall back to a default).
    """
    prefix = f"{section}." if section else ""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    merged = apply_overrides(dict(raw or {}), overrides, section, fields)
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ParamsError(f"{prefix}{unknown[0]}: unknown parameter{_suggest(unknown[0], fields)} "
                          f"(known: {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in merged:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{key}: required parameter is missing")
            continue
        value = _coerce(key, merged[name], hints[name])
        _check_bounds(key, value, dict(f.metadata))
        values[name] = value
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if callable(check):
        check()
    return obj


def load(cls: type[T], section: str, params_path: str | Path | None = None,
         overrides: dict[str, Any] | None = None) -> T:
    """Read ``section`` of the params file into ``cls``, applying CLI overrides.

    The runtime-only key ``threads`` (allowed in every section, see :data:`THREADS_HELP`) is taken out
    and applied here, so no stage needs a field for it."""
    raw = load_yaml_section(params_path, section)
    overrides = dict(overrides or {})
    if "threads" in {f.name for f in dataclasses.fields(cls)}:   # a stage with its own threads rule
        return resolve(cls, raw, overrides, section)
    threads = raw.pop("threads", None)
    for key in [k for k in overrides if k.rstrip(":") in ("threads", f"{section}.threads")]:
        threads = overrides.pop(key)
    set_threads(threads, section)
    return resolve(cls, raw, overrides, section)


#: per params section, the keys that change how fast a stage runs but not what it writes (up to float
#: rounding): dvc.yaml lists every other key, so changing these never invalidates a cached result
#: (tests/test_dvc.py keeps dvc.yaml and this table in step). `threads` is runtime-only everywhere.
RUNTIME_ONLY: dict[str, set[str]] = {
    "synth": set(),
    "mels": {"batch_size", "num_workers", "commit_frames", "device", "strict"},
    "tokens": {"batch_tracks", "device"},
    "pretrain": {"num_workers", "in_memory", "compile", "device", "log_every", "checkpoint_every",
                 "stream_memory_gib", "stream_read_threads"},
    "extract": {"batch_size", "device"},
    "probe": {"device", "stack", "threads"},
}

THREADS_HELP = ("CPU threads torch may use (runtime-only: changing it never invalidates a cached result). "
                "null = 1 thread: CPU results are then bit-identical from run to run (parallel reductions "
                "change the last bits with the thread count, so a count that followed the machine's load would "
                "make dvc.lock drift), and a busy machine is never oversubscribed (on a busy 2-core machine a "
                "Myna step ran 17x faster with 1 thread than with torch's default of one per core: "
                "docs/benchmarks.md). Raise it on a dedicated many-core CPU; the numbers may then differ in the "
                "last bits from a 1-thread run.")


def auto_threads() -> int:
    """Cores available to this process minus the current load (rounded up), at least 1."""
    import os
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, cores - busy)


def set_threads(value: Any, section: str = "") -> int:
    """Apply the ``threads`` setting (null = 1, for bit-identical CPU results) to torch; returns the count."""
    key = f"{section}.threads" if section else "threads"
    value = _coerce(key, value, int | None)
    if value is not None and value < 1:
        raise ParamsError(f"{key}={value!r}: must be >= 1 (or null = 1)")
    n = 1 if value is None else value
    import torch
    torch.set_num_threads(n)
    return n


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a params dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


