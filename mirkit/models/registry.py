"""Encoder registry, in the spirit of timm's ``create_model``: architectures and their named sizes.

* An **architecture** is an :class:`~mirkit.models.base.Encoder` class under a stable name
  (``simple-vit``, ``vit1d``, ``muse``). A model folder stores this name and the resolved constructor
  arguments, so loading an encoder needs only :mod:`mirkit.models` (no recipe, no objective).
  Each class is registered where it is defined, with ``@register("vit1d")``.
* A **size** is a named set of constructor arguments of one architecture (``myna-22m``,
  ``vit1d-tiny``, ``brn-sum-164m``, ...). Recipes refer to sizes by name and add what depends on
  their input (bins, crop length, class tokens, normalisation statistics).

``create_encoder("myna-22m", patch="vertical")`` builds a freshly initialised encoder;
:func:`resolve_args` fills in the constructor's defaults and refuses unknown arguments, which is what
a model folder stores.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mirkit.errors import InputError
from mirkit.models.base import Encoder

#: architecture name -> encoder class, filled by :func:`register` next to each class
ARCHITECTURES: dict[str, type[Encoder]] = {}
#: the modules whose classes carry ``@register(...)``, imported on the first lookup. A new encoder
#: family is one module with a decorated class plus its name here. (musicfm and mert: imported
#: weights only, ``mirkit import musicfm`` / ``mirkit import mert``.)
ENCODER_MODULES: tuple[str, ...] = ("mirkit.models.vit", "mirkit.models.vit1d", "mirkit.models.chroma_key",
                                    "mirkit.models.muse",
                                    "mirkit.models.musicfm", "mirkit.models.mert")

E = TypeVar("E", bound=type[Encoder])


def register(name: str) -> Callable[[E], E]:
    """Class decorator: register an :class:`Encoder` subclass as architecture ``name`` (the name a
    model folder's config.json stores). Declared next to the class, so a type checker follows it."""
    def add(cls: E) -> E:
        if ARCHITECTURES.get(name, cls) is not cls:
            raise ValueError(f"architecture '{name}' is already registered by {ARCHITECTURES[name].__qualname__}")
        ARCHITECTURES[name] = cls
        return cls
    return add


_loaded = False


def architectures() -> dict[str, type[Encoder]]:
    """Every registered architecture (imports :data:`ENCODER_MODULES` once)."""
    global _loaded
    if not _loaded:
        for module in ENCODER_MODULES:
            importlib.import_module(module)
        _loaded = True
    return ARCHITECTURES


@dataclass(frozen=True)
class Size:
    """A named size: the architecture, its constructor arguments and what the paper reports."""

    architecture: str
    args: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    paper_params: float | None = None   # millions, as the paper reports (encoder + heads), if any
    cpu_sized: bool = False


# --- Myna (SimpleViT); the recipe adds patch, bins and log1p ----------------------------------
_MYNA = {
    "myna-22m": Size("simple-vit", dict(dim=384, depth=12, heads=6, mlp_dim=1536, dim_head=64),
                     "Myna 22M (vit-s-32 in Myna's code; the released checkpoints)", 21.4),
    "myna-85m": Size("simple-vit", dict(dim=768, depth=12, heads=12, mlp_dim=3072, dim_head=64),
                     "Myna 85M (vit-b-16 in Myna's code; Myna-85M-Hybrid)", 85.2),
    "myna-small": Size("simple-vit", dict(dim=192, depth=4, heads=3, mlp_dim=768, dim_head=64),
                       "CPU-sized: 192-d, 4 blocks", cpu_sized=True),
    "myna-tiny": Size("simple-vit", dict(dim=64, depth=2, heads=2, mlp_dim=128, dim_head=32),
                      "CPU-sized: 64-d, 2 blocks (tests and smoke runs)", cpu_sized=True),
}

# --- ViT-1D (Emergent / MT2); the recipe adds in_bins, max_len, n_cls, input statistics ---------
_VIT1D = {
    "vit1d-tiny": Size("vit1d", dict(width=192, depth=12, heads=3), "ViT-Tiny, the papers' ViT-1D (~5.4 M)"),
    "vit1d-mini": Size("vit1d", dict(width=128, depth=4, heads=4), "CPU-sized ViT-1D", cpu_sized=True),
    "vit1d-micro": Size("vit1d", dict(width=64, depth=2, heads=2), "CPU-sized ViT-1D (tests)", cpu_sized=True),
}

# --- MuSE-LQ (conv subsampling + Branchformer/Conformer); see mirkit.recipes.muse_lq for the counts --
_MUSE_PAPER = dict(conv_dim=512, units=4096, kernel_size=31, dropout=0.1, sm_local_hidden=[512], sm_local_out=512,
                   sm_summary_hidden=[1024], sm_summary_out=1024)
_MUSE_TINY = dict(dim=64, depth=2, heads=4, conv_dim=16, units=256, kernel_size=31, dropout=0.0,
                  sm_local_hidden=[64], sm_local_out=64, sm_summary_hidden=[64], sm_summary_out=64)


def _muse(block: str, attention: str, depth: int, dim: int) -> dict[str, Any]:
    heads = 16 if dim == 1024 else 12
    return dict(_MUSE_PAPER, block=block, attention=attention, depth=depth, dim=dim, heads=heads, sm_groups=heads)


_MUSE = {
    "cnf-att-95m": Size("muse", _muse("conformer", "mhsa", 4, 768), "Conformer + rotary MHSA, 4 x 768 (Table 2)", 95),
    "cnf-att-330m": Size("muse", _muse("conformer", "mhsa", 12, 1024), "Conformer + rotary MHSA, 12 x 1024 (Table 2)", 330),
    "cnf-sum-302m": Size("muse", _muse("conformer", "summary", 12, 1024), "Conformer + SummaryMixing, 12 x 1024 (Table 2)", 302),
    "brn-att-60m": Size("muse", _muse("branchformer", "mhsa", 4, 768), "Branchformer + rotary MHSA, 4 x 768 (Table 2)", 60),
    "brn-att-187m": Size("muse", _muse("branchformer", "mhsa", 12, 1024), "Branchformer + rotary MHSA, 12 x 1024 (Table 2)", 187),
    "brn-sum-164m": Size("muse", _muse("branchformer", "summary", 12, 1024), "Branchformer + SummaryMixing, 12 x 1024 (Table 2)", 164),
    "brn-sum-tiny": Size("muse", dict(_MUSE_TINY, block="branchformer", attention="summary"),
                         "CPU-sized Branchformer + SummaryMixing, 2 x 64", cpu_sized=True),
    "brn-att-tiny": Size("muse", dict(_MUSE_TINY, block="branchformer", attention="mhsa"),
                         "CPU-sized Branchformer + rotary MHSA, 2 x 64", cpu_sized=True),
    "cnf-att-tiny": Size("muse", dict(_MUSE_TINY, block="conformer", attention="mhsa"),
                         "CPU-sized Conformer + rotary MHSA, 2 x 64", cpu_sized=True),
    "cnf-sum-tiny": Size("muse", dict(_MUSE_TINY, block="conformer", attention="summary"),
                         "CPU-sized Conformer + SummaryMixing, 2 x 64", cpu_sized=True),
}

# --- published encoders, for imported weights (mirkit.importers); no recipe trains them -------------
_IMPORTED = {
    "musicfm": Size("musicfm", dict(dim=1024, depth=12, heads=16, units=4096, conv_dim=512),
                    "MusicFM 25 Hz (minzwon/musicfm): conv subsampling + 12 x 1024 rotary Conformer"),
    "mert-v1-95m": Size("mert", dict(dim=768, depth=12, heads=12, units=3072, pre_norm=False),
                        "MERT-v1-95M (m-a-p/MERT): HuBERT-style, 12 x 768, post-LN"),
    "mert-v1-330m": Size("mert", dict(dim=1024, depth=24, heads=16, units=4096, pre_norm=True),
                         "MERT-v1-330M (m-a-p/MERT): HuBERT-style, 24 x 1024, pre-LN"),
}

#: THE table of model sizes, every architecture, by name (recipes and ``create_encoder`` read it)
SIZES: dict[str, Size] = {**_MYNA, **_VIT1D, **_MUSE, **_IMPORTED}


def sizes_of(architecture: str) -> dict[str, Size]:
    """The named sizes of one architecture."""
    return {k: v for k, v in SIZES.items() if v.architecture == architecture}


def architecture_class(name: str) -> type[Encoder]:
    """The encoder class registered as ``name`` (raises ``InputError`` naming the choices)."""
    known = architectures()
    if name not in known:
        raise InputError(f"unknown encoder architecture '{name}' (available: {', '.join(known)})")
    return known[name]


def architecture_name(encoder: Encoder | type[Encoder]) -> str:
    """The registry name of an encoder (instance or class)."""
    cls = encoder if isinstance(encoder, type) else type(encoder)
    for name, known in architectures().items():
        if known is cls:
            return name
    raise KeyError(f"{cls.__qualname__} is not a registered encoder architecture")


def size_args(name: str, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """``(architecture, arguments)`` of a named size, with ``overrides`` applied."""
    if name not in SIZES:
        raise InputError(f"unknown encoder size '{name}' (available: {', '.join(SIZES)})")
    size = SIZES[name]
    return size.architecture, {**size.args, **overrides}


def resolve_args(architecture: str, args: dict[str, Any]) -> dict[str, Any]:
    """All constructor arguments of ``architecture``: ``args`` plus the defaults of the rest, in the
    constructor's order (what a model folder stores). Unknown or missing arguments raise ``ValueError``."""
    cls = architecture_class(architecture)
    sig = inspect.signature(cls.__init__)
    names = [p for p in sig.parameters if p != "self"]
    unknown = sorted(set(args) - set(names))
    if unknown:
        raise ValueError(f"{architecture}: unknown argument(s) {', '.join(unknown)} (accepted: {', '.join(names)})")
    out: dict[str, Any] = {}
    for name in names:
        prm = sig.parameters[name]
        if name in args:
            value = args[name]
        elif prm.default is not inspect.Parameter.empty:
            value = prm.default
        else:
            raise ValueError(f"{architecture}: argument '{name}' is required")
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


#: the most blocks an encoder may stack (papers use 4 to 24); building is linear in it, even on ``meta``
MAX_DEPTH = 1024
#: the longest list argument (hidden sizes of a SummaryMixing MLP: one layer each)
MAX_LIST_ARG = 64


def check_bounds(args: dict[str, Any]) -> str:
    """The first argument out of bounds ("" when all fit), for the arguments that set how many modules
    are built (``depth``, list lengths). Checked before an encoder is built, so a config with
    ``depth=1000000`` fails at once instead of building layer after layer; sizes (widths) are then
    estimated on the ``meta`` device (:func:`mirkit.limits.check_module`)."""
    for key, value in args.items():
        if key == "depth" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DEPTH):
            return f"args.depth={value!r}: must be an integer in 1..{MAX_DEPTH} (blocks)"
        if isinstance(value, list) and len(value) > MAX_LIST_ARG:
            return f"args.{key}: a list of {len(value)} values, at most {MAX_LIST_ARG}"
    return ""


def build(architecture: str, args: dict[str, Any]) -> Encoder:
    """A freshly initialised encoder of ``architecture`` with ``args`` (see :func:`resolve_args`)."""
    return architecture_class(architecture)(**resolve_args(architecture, args))


def create_encoder(name: str, **overrides: Any) -> Encoder:
    """A freshly initialised encoder from a named size or an architecture name plus arguments."""
    if name in SIZES:
        return build(*size_args(name, **overrides))
    if name in architectures():
        return build(name, overrides)
    raise InputError(f"unknown encoder '{name}' (sizes: {', '.join(SIZES)}; architectures: {', '.join(ARCHITECTURES)})")


__all__ = ["ARCHITECTURES", "SIZES", "Size", "architecture_class", "architectures", "register", "architecture_name", "build", "create_encoder",
           "resolve_args", "size_args", "sizes_of"]
