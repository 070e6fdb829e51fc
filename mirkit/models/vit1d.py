"""ViT-1D: a pre-norm Vision Transformer with one token per spectrogram frame.

Follows the backbone of the Deezer papers "Emergent musical properties of a transformer under
contrastive self-supervised learning" (ISMIR 2025) and MT2 (WASPAA 2025), as described by their
abstracts, the Emergent figure caption and CoJEPA's account of the "ViT-1D [13]" it upgrades
(see ``shared/notes/anchors-mt2.md`` §3):

* tokeniser: each full-frequency column (one frame) goes through ``Linear(bins -> width)``;
* learned absolute positional embeddings (``max_len`` positions; extraction feeds chunks of the
  training crop length, shorter last chunks use the first positions);
* pre-norm blocks: LayerNorm -> multi-head self-attention -> residual, LayerNorm -> MLP (4x,
  GELU) -> residual; a final LayerNorm;
* ``n_cls`` (1 or 2) class tokens, prepended; each is a learned vector **plus the mean of the
  projected frame tokens**.

Choice left open by the papers (documented here, fixed in code): the class tokens take the mean
of the frame tokens **before** the positional embeddings are added. The class token then carries
a pure content summary (the mean of positional embeddings would otherwise add a constant that
varies with the chunk length), and class tokens get no positional embedding of their own (their
learned vectors already tell them apart).

``frame_norm=True`` (the ``mt2`` recipe) standardises each frame over its bins with a
``LayerNorm(in_bins)`` (learnable per-bin gain and bias) before the tokeniser: the first operation
of STONE's ChromaNet (``LayerNorm([bins, channels])`` per frame, ``src/stone12/model/convnext.py``).
Without it the STONE-scaled CQT (noise floor at 0.5-0.85, see docs/training.md, "MT2") reaches the
tokeniser as a large constant vector plus a small pitch-dependent part, and CPSD collapses to a
constant key profile.

Inputs with more bins than the model (a 99-bin CQT for an 84-bin MT2 model) are cropped to bins
``[crop_offset, crop_offset + in_bins)``; ``crop_offset`` is 0 by default, as STONE's inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mirkit.models.base import Encoder, EncoderOutput, attend
from mirkit.models.registry import register, size_args


class SelfAttention(nn.Module):
    """Multi-head self-attention; ``F.scaled_dot_product_attention`` unless the maps are wanted."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out, weights = attend(q, k, v, need_weights)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), weights


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        a, weights = self.attn(self.norm1(x), need_weights)
        x = x + a
        return x + self.mlp(self.norm2(x)), weights


@register("vit1d")
class ViT1D(Encoder):
    """ViT-1D encoder over ``(batch, bins, frames)`` spectrogram crops.

    ``input_mean``/``input_std`` are stored as buffers, so a checkpoint holds its own input
    normalisation (``(x - mean) / std`` before the tokeniser).
    """

    def __init__(self, in_bins: int = 128, width: int = 192, depth: int = 12, heads: int = 3,
                 max_len: int = 126, n_cls: int = 1, mlp_ratio: int = 4, crop_offset: int = 0,
                 input_mean: float = 0.0, input_std: float = 1.0, frame_norm: bool = False):
        super().__init__()
        if n_cls not in (1, 2):
            raise ValueError(f"n_cls must be 1 or 2, got {n_cls}")
        if in_bins < 1 or max_len < 1 or depth < 1:
            raise ValueError(f"in_bins, max_len and depth must be positive (got {in_bins}, {max_len}, {depth})")
        self.in_bins, self.max_len, self.n_cls = in_bins, max_len, n_cls
        self.dim, self.depth, self.heads = width, depth, heads
        self.crop_offset = crop_offset
        self.poolings = ("cls-mean", "cls", "cls2", "seq-mean", "mean") if n_cls == 2 else ("cls", "seq-mean", "mean")
        self.input_mean: Tensor
        self.input_std: Tensor
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(float(input_std)))
        self.frame_norm = nn.LayerNorm(in_bins) if frame_norm else None
        self.patch = nn.Linear(in_bins, width)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        self.cls = nn.Parameter(torch.zeros(n_cls, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # --- tokens ----------------------------------------------------------------------------
    def frame_tokens(self, x: Tensor) -> Tensor:
        """``(batch, frames, width)`` projected frames (no positions yet), after bin crop + norm."""
        if x.dim() != 3:
            raise ValueError(f"ViT1D expects (batch, bins, frames), got shape {tuple(x.shape)}")
        bins, frames = x.shape[1], x.shape[2]
        if bins != self.in_bins:
            lo, hi = self.crop_offset, self.crop_offset + self.in_bins
            if bins < hi or lo < 0:
                raise ValueError(f"input has {bins} bins; this model reads bins [{lo}, {hi})")
            x = x[:, lo:hi]
        if frames > self.max_len:
            raise ValueError(f"input has {frames} frames; this model has {self.max_len} positions "
                             "(feed chunks of the training crop length)")
        x = ((x - self.input_mean) / self.input_std).transpose(1, 2)
        if self.frame_norm is not None:
            x = self.frame_norm(x)
        return self.patch(x)

    def tokens(self, x: Tensor) -> Tensor:
        """Layer-0 sequence: class tokens (learned vector + frame mean) then frames + positions."""
        frames = self.frame_tokens(x)
        cls = self.cls.unsqueeze(0) + frames.mean(dim=1, keepdim=True)
        return torch.cat([cls, frames + self.pos[: frames.shape[1]]], dim=1)

    # --- Encoder contract ------------------------------------------------------------------
    def _check_layers(self, layers: Sequence[int]) -> set[int]:
        wanted = {int(i) for i in layers}
        bad = [i for i in wanted if not (i == -1 or 0 <= i <= self.depth)]
        if bad:
            raise ValueError(f"layer {bad[0]} out of range (0..{self.depth} or -1)")
        return wanted

    def token_frames(self) -> tuple[float, int]:
        """One token per input frame."""
        return 1.0, 1

    def encode(self, x: Tensor, layers: Sequence[int] = (-1,), attention: bool = False) -> EncoderOutput:
        """Hidden states of ``layers`` (0 = block input, 1..depth, -1 = last block + final norm).

        With ``attention=True``, ``attentions[l]`` holds block ``l``'s softmax maps
        ``(batch, heads, n_cls + frames, n_cls + frames)`` for every requested ``l >= 1``
        (``-1`` gets the last block's maps).
        """
        wanted = self._check_layers(layers)
        last = self.depth if -1 in wanted else max(wanted)
        h = self.tokens(x)
        hidden: dict[int, Tensor] = {}
        attentions: dict[int, Tensor] = {}
        if 0 in wanted:
            hidden[0] = h
        for i, block in enumerate(self.blocks[:last], start=1):
            keep_maps = attention and (i in wanted or (i == self.depth and -1 in wanted))
            h, weights = block(h, need_weights=keep_maps)
            if i in wanted:
                hidden[i] = h
            if weights is not None:
                if i in wanted:
                    attentions[i] = weights
                if i == self.depth and -1 in wanted:
                    attentions[-1] = weights
        if -1 in wanted:
            hidden[-1] = self.norm(h)
        return EncoderOutput(hidden=hidden, n_cls=self.n_cls, grid=(1, h.shape[1] - self.n_cls),
                             frames_per_col=1.0, attentions=attentions)


def build_vit1d(preset: str, **overrides) -> ViT1D:
    """A ViT-1D from a named size of :data:`mirkit.models.registry.SIZES` plus constructor overrides."""
    architecture, args = size_args(preset, **overrides)
    if architecture != "vit1d":
        raise KeyError(f"'{preset}' is a {architecture} size, not a ViT-1D one")
    return ViT1D(**args)
