"""Branchformer block (Peng et al., ICML 2022), the backbone MuSE-LQ builds on (paper §3.1).

Two parallel pre-norm branches read the same input: a global "mixer" (rotary multi-head
self-attention or SummaryMixing) and a convolutional-gating MLP (cgMLP, Sakuma et al. 2022) for
local context. Their outputs are concatenated (the paper prefers concatenation to a weighted
average), merged back to the model width, and added to the input. No feed-forward/macaron module.
The encoder (``mirkit.models.muse``) ends the stack with a LayerNorm.

Merge layout (SpeechBrain ``Branchformer.py``; SamsungLabs/SummaryMixing's copy for SummaryMixing):
with attention, one ``Linear(2d -> d)``; with SummaryMixing, whose branch is ``summary_out`` wide,
an MLP ``Linear(summary_out + d -> h) -> GELU -> ... -> Linear(h -> d) -> GELU`` whose hidden
widths are SummaryMixing's ``summary_hidden`` (``merge_hidden``). SamsungLabs sizes that MLP's input
as ``local_out + summary_out``, which equals the actual concatenation only when ``local_out = d``;
mirkit sizes it by the actual concatenation, ``summary_out + d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirkit.models.summary_mixing import feed_forward


def zero_padding(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """``(batch, time, dim)`` with padded frames set to 0 (so convolutions cannot see them)."""
    return x if padding_mask is None else x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def reflect_pad(x: Tensor, pad: int, padding_mask: Tensor | None = None) -> Tensor:
    """``(batch, channels, time)`` padded by ``pad`` steps on each side by reflection (``x[-t] = x[t]``,
    ``x[L-1+t] = x[L-1-t]``, as ``F.pad(mode="reflect")``), each sequence about its own valid length
    ``L`` (``padding_mask``: True at padded tail frames), so a padded batch equals each sequence alone.
    A sequence of at most ``pad`` frames cannot be reflected and is zero-padded."""
    if padding_mask is None:
        return F.pad(x, (pad, pad), mode="reflect" if x.shape[-1] > pad else "constant")
    n, channels, steps = x.shape
    lengths = (~padding_mask).sum(dim=1, keepdim=True)                        # (batch, 1)
    t = torch.arange(-pad, steps + pad, device=x.device).expand(n, -1)       # (batch, time + 2 pad)
    src = torch.where(t < 0, -t, torch.where(t >= lengths, 2 * (lengths - 1) - t, t))
    keep = (src >= 0) & (src < lengths) & (lengths > pad)
    out = x.gather(2, src.clamp(0, steps - 1).unsqueeze(1).expand(n, channels, -1))
    return out * keep.unsqueeze(1).to(x.dtype)


class ConvolutionalGatingMLP(nn.Module):
    """cgMLP: ``Linear(d->units) -> GELU -> CSGU -> Linear(units/2 -> d)``.

    Convolutional spatial gating unit (CSGU): split the channels into halves ``(a, b)``; ``b`` goes
    through LayerNorm and a depthwise convolution over time (kernel 31, "same" length); the output
    is ``a * b``. As SpeechBrain's ``ConvolutionalSpatialGatingUnit`` (which MuSE-LQ's SummaryMixing
    code builds on): the time axis is padded by **reflection** (the ``padding_mode="reflect"`` default
    of SpeechBrain's ``Conv1d``), and the convolution starts near zero (weights ~ N(0, 1e-6), its
    ``conv_init="normal"``) with bias 1, so ``b`` starts near 1 and the gate near identity (``a * 1``).
    Reflection needs more frames than half the kernel; a shorter sequence (a tail window of a few
    frames, where SpeechBrain would fail) is zero-padded instead.
    """

    def __init__(self, dim: int, units: int, kernel_size: int = 31, dropout: float = 0.0):
        super().__init__()
        if units % 2 or kernel_size % 2 == 0:
            raise ValueError(f"cgMLP needs even units and an odd kernel, got {units} and {kernel_size}")
        half = units // 2
        self.up = nn.Sequential(nn.Linear(dim, units), nn.GELU())
        self.gate_norm = nn.LayerNorm(half)
        self.pad = kernel_size // 2
        self.gate_conv = nn.Conv1d(half, half, kernel_size, groups=half)   # padded in forward (reflect)
        assert self.gate_conv.bias is not None   # Conv1d's default bias=True
        nn.init.normal_(self.gate_conv.weight, std=1e-6)
        nn.init.ones_(self.gate_conv.bias)
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(half, dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        b = zero_padding(self.gate_norm(b), padding_mask)
        b = self.gate_conv(reflect_pad(b.transpose(1, 2), self.pad, padding_mask)).transpose(1, 2)
        return self.down(self.dropout(a * b))


class BranchformerBlock(nn.Module):
    """``x + merge([mixer(LN(x)); cgMLP(LN(x))])``; ``mixer`` follows the rotary/SummaryMixing interface
    (its output width is ``mixer.out_dim``, default ``dim``). ``merge_hidden``: None = one Linear;
    a list = the GELU MLP of the SummaryMixing layout (see the module docstring)."""

    def __init__(self, dim: int, mixer: nn.Module, units: int, kernel_size: int = 31, dropout: float = 0.0,
                 merge_hidden: Sequence[int] | None = None):
        super().__init__()
        self.mixer_norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = ConvolutionalGatingMLP(dim, units, kernel_size, dropout)
        width = getattr(mixer, "out_dim", dim) + dim
        self.merge = nn.Linear(width, dim) if merge_hidden is None else feed_forward(width, merge_hidden, dim, "gelu")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        global_branch, weights = self.mixer(self.mixer_norm(x), padding_mask, need_weights)
        local_branch = self.mlp(self.mlp_norm(x), padding_mask)
        merged = self.merge(torch.cat([self.dropout(global_branch), self.dropout(local_branch)], dim=-1))
        return x + self.dropout(merged), weights
