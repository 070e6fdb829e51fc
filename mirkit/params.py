"""Typed, validated parameter sections read from ``params.yaml``.

Each stage declares a dataclass whose fields carry their constraints through :func:`param`.
:func:`resolve` turns the raw YAML section (plus CLI overrides) into that dataclass and fails
before any work with a :class:`ParamsError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

from mirkit.errors import InputError

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


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
    """The raw mapping of one section of a params file ({} when the file or section is absent)."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    if not path.exists():
        return {}
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
    """``key=value`` from the command line; the value is parsed as YAML (so 1e-4, true, [a, b] work)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}': expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else None


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
    """Build and validate ``cls`` from a raw mapping plus overrides (overrides win).

    Unknown keys are errors (a typo must not silently fall back to a default).
    """
    merged = dict(raw or {})
    merged.update(overrides or {})
    prefix = f"{section}." if section else ""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ParamsError(f"{prefix}{unknown[0]}: unknown parameter (known: {', '.join(sorted(fields))})")
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
    """Read ``section`` of the params file into ``cls``, applying CLI overrides."""
    return resolve(cls, load_yaml_section(params_path, section), overrides, section)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a params dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


