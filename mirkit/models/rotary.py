"""Rotary position embeddings (RoFormer, Su et al. 2024) and the self-attention that uses them.

MuSE-LQ adds rotary encodings after the convolutional subsampling "when using multi-head
attention" (paper §3.1). We rotate queries and keys *after* their projections, as RoFormer and
OMAR-RQ do. (MusicFM's conformer rotates the layer input before the q/k projections, a quirk we
do not reproduce.)

The attention module shares the "mixer" interface of :class:`~mirkit.models.summary_mixing.SummaryMixing`:
``forward(x, padding_mask=None, need_weights=False) -> (y, weights | None)`` with ``padding_mask``
``(batch, time)`` True at padded frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotating pairs of channels ``(i, i + head_dim/2)`` ("rotate-half" layout)."""

    inv_freq: Tensor

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def tables(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``cos, sin`` of shape ``(length, head_dim)``, computed in fp32 then cast."""
        t = torch.arange(length, device=device, dtype=torch.float32)
        angles = torch.outer(t, self.inv_freq.to(device))
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` of shape ``(..., time, head_dim)`` by position-dependent angles."""
    return x * cos + _rotate_half(x) * sin


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention with rotary q/k; ``F.scaled_dot_product_attention`` by default.

    When ``need_weights`` is set the explicit softmax path runs instead and the attention maps
    ``(batch, heads, time, time)`` are returned (fused kernels never materialise them).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, rotary_base: float = 10000.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_base)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = self.rotary.tables(t, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # boolean mask: True = may attend; shape (b, 1, 1, t) broadcasts over heads and queries
        allowed = None if padding_mask is None else (~padding_mask)[:, None, None, :]
        drop = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = scores.float().softmax(dim=-1)          # returned in fp32 for inspection
            y = F.dropout(weights.to(q.dtype), drop, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.out(y), weights
