"""The encoder contract every backbone honours, and the poolings built on it.

An encoder takes a batch of spectrogram crops ``x`` of shape ``(batch, bins, frames)`` exactly as
they are stored in the feature store (any normalisation the model needs lives inside it, as a
buffer, so a checkpoint is self-contained) and returns an :class:`EncoderOutput`.

Layer numbering: ``0`` is the token sequence entering the first block, ``1..depth`` the output of
each block, and ``-1`` the last block's output after the final norm (what the papers embed).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mirkit.errors import InputError

POOLINGS = ("mean", "cls", "cls2", "cls-mean", "seq-mean")


@dataclass
class EncoderOutput:
    """Hidden states of selected layers.

    hidden[layer]: ``(batch, n_cls + n_seq, dim)``; the first ``n_cls`` tokens are class tokens.
    Sequence tokens are ordered row-major over a ``(rows, cols)`` grid whose ``cols`` run along
    time (``rows == 1`` for one-token-per-frame models); each column covers ``frames_per_col``
    input frames. ``attentions[layer]``: ``(batch, heads, tokens, tokens)`` when requested and the
    block has attention (SummaryMixing blocks have none).
    """

    hidden: dict[int, Tensor]
    n_cls: int = 0
    grid: tuple[int, int] = (1, 0)
    frames_per_col: float = 1.0
    attentions: dict[int, Tensor] = field(default_factory=dict)

    def cls_tokens(self, layer: int) -> Tensor:
        return self.hidden[layer][:, : self.n_cls]

    def seq_tokens(self, layer: int) -> Tensor:
        return self.hidden[layer][:, self.n_cls:]

    def time_tokens(self, layer: int) -> Tensor:
        """Per-time-step tokens ``(batch, cols, dim)``: sequence tokens averaged over grid rows."""
        seq = self.seq_tokens(layer)
        rows, cols = self.grid
        rows = max(rows, 1)
        cols = cols or seq.shape[1] // rows
        return seq.reshape(seq.shape[0], rows, cols, seq.shape[-1]).mean(dim=1)


def pool(out: EncoderOutput, layer: int, pooling: str) -> Tensor:
    """One vector per input crop.

    ``mean``: mean of all tokens (SimpleViT, Myna); ``cls``/``cls2``: class token 1/2;
    ``cls-mean``: mean of the class tokens (MT2); ``seq-mean``: mean of the sequence tokens
    (the "temporal average" of the Emergent paper; the frame mean of MuSE-LQ).
    """
    h = out.hidden[layer]
    if pooling == "mean":
        return h.mean(dim=1)
    if pooling == "seq-mean":
        return out.seq_tokens(layer).mean(dim=1)
    if pooling in ("cls", "cls2", "cls-mean"):
        need = 2 if pooling == "cls2" else 1
        if out.n_cls < need:
            raise InputError(f"pooling '{pooling}' needs {need} class token(s); this model has {out.n_cls}")
        if pooling == "cls":
            return h[:, 0]
        if pooling == "cls2":
            return h[:, 1]
        return out.cls_tokens(layer).mean(dim=1)
    raise InputError(f"unknown pooling '{pooling}' (choose from {', '.join(POOLINGS)})")


class Encoder(nn.Module):
    """Base class for backbones. Subclasses implement :meth:`encode` and set the attributes."""

    #: number of transformer/conformer blocks (valid layers are 0..depth and -1)
    depth: int
    #: width of the hidden states
    dim: int
    #: which poolings make sense for this model (the first is its default)
    poolings: tuple[str, ...] = ("mean",)
    #: the constructor arguments this encoder was built with (what a model folder stores)
    init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Make every encoder remember its constructor arguments (the outermost constructor's)."""
        super().__init_subclass__(**kwargs)
        original = cls.__dict__.get("__init__")
        if original is None:
            return
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            original(self, *args, **kw)
            if type(self) is cls:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                self.init_args = {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in bound.arguments.items() if k != "self"}

        cls.__init__ = __init__  # type: ignore[method-assign]

    def encode(self, x: Tensor, layers: Sequence[int] = (-1,), attention: bool = False) -> EncoderOutput:
        raise NotImplementedError

    def token_frames(self) -> tuple[float, int]:
        """``(step, span)`` in input frames: the step between consecutive output frames (the finest
        pass for multi-pass models) and how many input frames one output frame sees before any
        mixing across time (its local receptive field). Attention/SummaryMixing then mix a whole
        window, so every output frame's full receptive field is the window."""
        raise NotImplementedError

    def embed_layers(self, x: Tensor, layers: Sequence[int], pooling: str | None = None,
                     frames: bool = False) -> tuple[dict[int, Tensor], dict[int, Tensor], float]:
        """Pooled ``{layer: (batch, dim')}``, per-time-step ``{layer: (batch, cols, dim')}`` (when
        ``frames``) and the input frames per column, for several layers in one forward pass."""
        pooling = pooling or self.poolings[0]
        out = self.encode(x, layers=tuple(layers))
        pooled = {layer: pool(out, layer, pooling) for layer in layers}
        tokens = {layer: out.time_tokens(layer) for layer in layers} if frames else {}
        return pooled, tokens, out.frames_per_col

    def embed(self, x: Tensor, layer: int = -1, pooling: str | None = None) -> Tensor:
        """``(batch, dim')`` embedding of each crop (hybrid models may concatenate passes)."""
        pooling = pooling or self.poolings[0]
        return pool(self.encode(x, layers=(layer,)), layer, pooling)

    def embed_frames(self, x: Tensor, layer: int = -1) -> tuple[Tensor, float]:
        """``(batch, cols, dim')`` per-time-step embeddings and the input frames each covers."""
        out = self.encode(x, layers=(layer,))
        return out.time_tokens(layer), out.frames_per_col


def layer_list(depth: int, layers: int | Sequence[int] | str) -> list[int]:
    """Validated layer numbers: one layer, a list, or ``"all"`` (0..depth, then -1)."""
    if isinstance(layers, str):
        if layers != "all":
            raise InputError(f"layers={layers!r}: give a layer number, a list of them or 'all'")
        return [*range(depth + 1), -1]
    wanted = [int(layers)] if isinstance(layers, int) else [int(v) for v in layers]
    if not wanted:
        raise InputError("layers: the list is empty")
    for layer in wanted:
        if not (layer == -1 or 0 <= layer <= depth):
            raise InputError(f"layer={layer}: this model has layers 0..{depth} (or -1 = last, normed)")
    if len(set(wanted)) != len(wanted):
        raise InputError(f"layers={wanted}: a layer is listed twice")
    return wanted


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def attend(q: Tensor, k: Tensor, v: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention over ``(batch, heads, time, head_dim)``: SDPA (flash / memory-efficient
    kernels on CUDA) unless the softmax maps are wanted, then the same maths explicitly (scores in fp32),
    returning the maps for inspection."""
    if not need_weights:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v), None
    weights = ((q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)
    return weights.to(v.dtype) @ v, weights


def multihead(q: Tensor, k: Tensor, v: Tensor, heads: int, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Attention over projected ``(batch, time, dim)`` queries, keys and values split into ``heads``; returns the
    heads merged back to ``(batch, time, dim)`` (before the output projection) and the maps when wanted."""
    b, t, d = q.shape

    def split(y: Tensor) -> Tensor:
        return y.reshape(b, y.shape[1], heads, -1).transpose(1, 2)

    y, weights = attend(split(q), split(k), split(v), need_weights)
    return y.transpose(1, 2).reshape(b, t, d), weights


class FeedForward(nn.Module):
    """Linear -> activation -> Linear, with the wav2vec2-family module names (``intermediate_dense``,
    ``output_dense``) that MERT's and MusicFM's published state dicts use."""

    def __init__(self, dim: int, units: int, activation: Callable[[Tensor], Tensor] = nn.functional.gelu):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, units)
        self.output_dense = nn.Linear(units, dim)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dense(self.activation(self.intermediate_dense(x)))
