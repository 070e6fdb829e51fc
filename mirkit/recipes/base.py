"""What a pretraining recipe is: data + a few functions, registered by name.

The training loop (``mirkit.train.loop``) knows nothing about any paper. It asks the recipe for

* ``feature_set`` / ``needs_tokens``: which stored features (and token store) to read;
* ``crop_frames``: the crop length in input frames (also the chunk length at extraction);
* :meth:`Recipe.sample`: one training example (all views of one track) as numpy arrays, drawn
  with the generator it is given (so every example is reproducible from ``(seed, index)``);
* :meth:`Recipe.build_model`: a :class:`PretrainModel` whose ``forward(batch)`` returns a dict
  of scalar tensors with a ``"loss"`` entry (so DDP wraps the whole objective) and whose
  ``encoder`` attribute is the :class:`~mirkit.models.base.Encoder` kept for extraction.
  The loop adds ``batch["index"]``: each example's track index in the feature set, for objectives
  with per-item state (SogCLR), which they keep in buffers so checkpoints carry it.

A new recipe is one new module in ``mirkit/recipes/`` that subclasses :class:`Recipe`, declares
its ``Params`` dataclass (validated by :mod:`mirkit.params`) and its ``presets``, and binds the class
to ``RECIPE``; the registry finds it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from torch import Tensor, nn

from mirkit.models.base import Encoder


class CropSource(Protocol):
    """Random access to the stored frames of one feature set (or token set), track by track."""

    n_bins: int          # feature bins (or number of codebooks for tokens)
    frame_rate: float    # frames per second
    attrs: dict[str, Any]  # the store's parameters (feature spec, quantizer stats, ...)
    spec: dict[str, Any]   # the exact parameters the set was computed with

    def __len__(self) -> int: ...

    def n_frames(self, track: int) -> int: ...

    def read(self, track: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """``(length, n_bins)`` frames; zero-padded when the range runs past the track's end."""
        ...


#: one training example: numpy arrays, or numpy scalars such as a track index (batches stack them)
Example = dict[str, np.ndarray | np.generic]


@dataclass
class Sources:
    """What a recipe samples from: features, plus aligned tokens for token-prediction recipes."""

    features: CropSource
    tokens: CropSource | None = None


@dataclass(frozen=True)
class Preset:
    """A recipe's view of a named size of :data:`mirkit.models.registry.SIZES` (the one table of sizes): the
    size's constructor arguments plus the recipe-side ones (input bins, sequence length, class tokens, a
    head's vocabulary), and a description in the recipe's terms. Build it with :meth:`of`, so the
    arguments, the paper's count and ``cpu_sized`` are never restated."""

    model: dict[str, Any]
    description: str
    paper_params: float | None = None   # parameter count the paper reports (millions), if any
    cpu_sized: bool = False

    @classmethod
    def of(cls, size: str, description: str = "", **extra: Any) -> Preset:
        """The recipe preset of a named encoder size of :mod:`mirkit.models.registry` (``extra``:
        recipe-side values kept with the preset, e.g. a head's vocabulary; ``description``: the recipe's
        wording, default the size's own)."""
        from mirkit.models.registry import SIZES
        s = SIZES[size]
        return cls({**s.args, **extra}, description or s.description, s.paper_params, s.cpu_sized)


class PretrainModel(nn.Module):
    """A trainable module: ``forward(batch) -> {"loss": ..., other scalars}``; keeps ``encoder``."""

    encoder: Encoder

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class Recipe(ABC):
    """Base class of the pluggable recipes (``myna``, ``contrastive``, ``mt2``, ``muse-lq``)."""

    name: ClassVar[str]
    paper: ClassVar[str]
    Params: ClassVar[type]                 # dataclass with at least ``preset: str``
    presets: ClassVar[dict[str, Preset]]
    needs_tokens: ClassVar[bool] = False

    def __init__(self, params: Any):
        self.params = params

    # --- what to read ---------------------------------------------------------------------
    #: name of the stored feature set this recipe trains on (e.g. ``mel16k``)
    feature_set: ClassVar[str]
    #: the parameter that holds the crop length in input frames
    crop_param: ClassVar[str] = "crop_frames"

    @property
    def crop_frames(self) -> int:
        """Length of one training crop in input frames (extraction chunks use the same length)."""
        return int(getattr(self.params, self.crop_param))

    def prepare(self, sources: Sources) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Hook called once before training with the sources (e.g. to copy normalisation stats
        into ``self.params`` so they are saved in ``config.json``). Default: nothing."""

    # --- data -------------------------------------------------------------------------------
    @abstractmethod
    def sample(self, sources: Sources, track: int, rng: np.random.Generator) -> Example:
        """One training example (all views of ``track``) as numpy arrays; batches stack them."""

    # --- model ------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> PretrainModel:
        """The trainable module (encoder + heads), freshly initialised from ``self.params``."""

    def preset(self) -> Preset:
        return self.presets[self.params.preset]

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)
