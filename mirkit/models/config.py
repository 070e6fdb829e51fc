"""The model config: what a model folder's ``config.json`` says, as one typed value.

A :class:`ModelConfig` is written by :meth:`ModelConfig.to_dict` (the exact JSON of ``config.json``, keys in a
fixed order, and the config bound into ``model.safetensors``' metadata, see :mod:`mirkit.train.checkpoint`) and
read back by :meth:`ModelConfig.from_dict`, which validates once, naming the file and the key: the format, the
types of the required keys, the feature spec (:func:`mirkit.data.features.validate_spec`), the window
(:data:`mirkit.limits.MAX_FRAMES`), a known architecture whose arguments fit it, the bounds on how many modules
are built (:func:`mirkit.models.registry.check_bounds`, checked before any layer is built, even on the meta
device), the encoder's memory (:func:`mirkit.limits.check_module`) and one window through it (shapes only).

The encoder is the truth about its own shape: :meth:`ModelConfig.bound_to` fills ``architecture``, ``args``
(resolved constructor arguments), ``n_params``, ``dim`` and ``depth`` from the encoder being saved, so a config
built before the encoder (a recipe's, :func:`mirkit.train.checkpoint.make_config`) leaves them empty.

Keys this version does not know are kept in ``extra`` and written back unchanged, so reading and re-saving a
folder never drops anything (and the bound-config check compares the whole file).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import mirkit
from mirkit.errors import InputError

if TYPE_CHECKING:
    from mirkit.models.base import Encoder

FORMAT = "mirkit.encoder/1"
LEGACY_FORMAT = "mirkit.train.checkpoint/1"
#: the keys of config.json, in the order they are written (``format`` first; unknown keys follow)
KEYS = ("format", "mirkit_version", "architecture", "args", "preset", "n_params", "dim", "depth",
        "feature_set", "features", "window_frames", "step", "provenance")


class CheckpointError(InputError):
    """A model folder or checkpoint is missing, truncated, of another format or does not fit its model."""


@dataclass(frozen=True)
class ModelConfig:
    """A model folder's ``config.json``: the encoder (``architecture`` + resolved ``args``, with its size in
    ``n_params``/``dim``/``depth``), its input (``feature_set`` name and the exact ``features`` spec;
    ``window_frames``, the training crop = extraction chunk), the named size it follows (``preset``), the
    training ``step`` and ``provenance`` (recipe, its parameters, training parameters, import source;
    informative only, never needed to load)."""

    feature_set: str
    features: dict[str, Any]
    window_frames: int
    architecture: str = ""          # empty until bound to an encoder (:meth:`bound_to`)
    args: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    n_params: int = 0
    dim: int = 0
    depth: int = 0
    step: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    mirkit_version: str = mirkit.__version__
    extra: dict[str, Any] = field(default_factory=dict)   # keys of a newer mirkit, kept as read

    # ------------------------------------------------------------------------------- writing
    def bound_to(self, encoder: Encoder) -> ModelConfig:
        """This config with ``encoder``'s registry name, resolved constructor arguments and sizes."""
        from mirkit.models import registry
        from mirkit.models.base import count_parameters
        arch = registry.architecture_name(encoder)
        return replace(self, architecture=arch, args=registry.resolve_args(arch, getattr(encoder, "init_args", {})),
                       n_params=count_parameters(encoder), dim=int(encoder.dim), depth=int(encoder.depth))

    def with_step(self, step: int) -> ModelConfig:
        return replace(self, step=int(step))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``config.json`` (plain JSON values: tuples become lists, anything else a string)."""
        out = {"format": FORMAT, "mirkit_version": self.mirkit_version, "architecture": self.architecture,
               "args": self.args, "preset": self.preset, "n_params": self.n_params, "dim": self.dim,
               "depth": self.depth, "feature_set": self.feature_set, "features": dict(self.features),
               "window_frames": int(self.window_frames), "step": int(self.step), "provenance": self.provenance}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return json.loads(json.dumps(out, default=str))

    def to_json(self) -> str:
        """The text of ``config.json``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    # ------------------------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ModelConfig:
        """A validated config from the JSON object of ``config.json`` (raises :class:`CheckpointError`
        naming ``where`` and the key; see the module docstring for what is checked)."""
        from pathlib import Path
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where}: expected a JSON object")
        fmt = raw.get("format")
        if fmt == LEGACY_FORMAT:
            folder = Path(where).parent
            raise CheckpointError(f"{folder}: written by mirkit 0.1 (format {LEGACY_FORMAT}); convert it once with "
                                  f"`mirkit import legacy {folder} --out NEW_DIR`")
        if fmt != FORMAT:
            raise CheckpointError(f"{where}: not a mirkit model config (format={fmt!r}, expected {FORMAT!r})")
        need: dict[str, type | tuple[type, ...]] = {
            "architecture": str, "args": dict, "feature_set": str, "features": dict, "window_frames": int}
        optional: dict[str, type | tuple[type, ...]] = {
            "preset": (str, type(None)), "n_params": int, "dim": int, "depth": int, "step": int,
            "provenance": (dict, type(None)), "mirkit_version": str}
        for key, kind in {**need, **optional}.items():
            if key not in raw:
                if key in need:
                    raise CheckpointError(f"{where}: missing key '{key}'")
                continue
            value = raw[key]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                name = kind.__name__ if isinstance(kind, type) else " or ".join(
                    "null" if k is type(None) else k.__name__ for k in kind)
                raise CheckpointError(f"{where}: '{key}' must be a {name}, got {value!r}")
        config = cls(feature_set=raw["feature_set"], features=raw["features"], window_frames=raw["window_frames"],
                     architecture=raw["architecture"], args=raw["args"], preset=raw.get("preset"),
                     n_params=raw.get("n_params", 0), dim=raw.get("dim", 0), depth=raw.get("depth", 0),
                     step=raw.get("step", 0), provenance=raw.get("provenance") or {},
                     mirkit_version=raw.get("mirkit_version", mirkit.__version__),
                     extra={k: v for k, v in raw.items() if k not in KEYS})
        config.check(where)
        return config

    def check(self, where: str) -> None:
        """Check the window, the feature spec, the architecture and its arguments, the bounds on what is
        built, the encoder's memory and one window through it on the meta device (raises
        :class:`CheckpointError` naming ``where``)."""
        import torch

        from mirkit import limits
        from mirkit.data.features import validate_spec
        from mirkit.models import registry
        if not 1 <= self.window_frames <= limits.MAX_FRAMES:
            raise CheckpointError(f"{where}: window_frames={self.window_frames}: must be in 1..{limits.MAX_FRAMES}")
        spec = validate_spec(self.features, source=where)
        try:
            args = registry.resolve_args(self.architecture, self.args)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{where}: {exc.args[0]}") from None
        for key, value in args.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise CheckpointError(f"{where}: args.{key}={value} is not finite")
        problem = registry.check_bounds(args)   # before anything is built, even on the meta device
        if problem:
            raise CheckpointError(f"{where}: {problem}")
        try:
            limits.check_module(f"{where}: the {self.architecture} encoder of args",
                                lambda: registry.build(self.architecture, args))
        except (ValueError, TypeError, RuntimeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise CheckpointError(f"{where}: args do not build a {self.architecture} ({exc})") from None
        try:   # one window of the stored features through the encoder, on the meta device (shapes only)
            with torch.device("meta"):
                registry.build(self.architecture, args).embed_layers(
                    torch.zeros(1, spec.bins, self.window_frames), [-1], None, True)
        except (ValueError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"{where}: a window of {self.window_frames} frames x {spec.bins} bins does not "
                                  f"fit the {self.architecture} in args ({exc})") from None

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelConfig:
        """A validated config from the text of ``config.json``."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{where}: unreadable JSON ({exc})") from None
        return cls.from_dict(raw, where)


__all__ = ["FORMAT", "LEGACY_FORMAT", "CheckpointError", "ModelConfig"]
