"""Conformer block (Gulati et al., 2020) as in MusicFM's encoder (HF wav2vec2-conformer layout).

Macaron structure: ``x + FFN/2 -> x + mixer(LN(x)) -> x + ConvModule -> x + FFN/2 -> LayerNorm``.
The mixer is rotary multi-head self-attention or SummaryMixing (MuSE-LQ's CNF-att / CNF-sum).
Convolution module: LN, pointwise conv to 2d + GLU, depthwise conv (kernel 31), BatchNorm, Swish,
pointwise conv. Its BatchNorm computes training statistics over valid frames only, and padded
frames are zeroed before the depthwise convolution, so padding never reaches valid outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mirkit.models.branchformer import zero_padding


class FeedForward(nn.Module):
    """Pre-norm FFN: ``LN -> Linear(d->units) -> Swish -> Linear(units->d)`` (Conformer)."""

    def __init__(self, dim: int, units: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, units), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(units, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over ``(batch, channels, time)`` whose training statistics skip padded frames."""

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if padding_mask is None or not self.training or not bool(padding_mask.any()):
            return super().forward(x)
        valid = (~padding_mask).unsqueeze(1).float()                # (b, 1, t)
        xf = x.float()
        n = valid.sum()
        mean = (xf * valid).sum(dim=(0, 2)) / n
        var = (((xf - mean[:, None]) ** 2) * valid).sum(dim=(0, 2)) / n
        # track_running_stats registers all three buffers (torch's _NormBase); the checks narrow their types
        if (self.track_running_stats and self.running_mean is not None and self.running_var is not None
                and self.num_batches_tracked is not None):
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp(min=1.0), momentum)
        y = (xf - mean[:, None]) * torch.rsqrt(var + self.eps)[:, None]
        if self.affine:
            y = y * self.weight[:, None] + self.bias[:, None]
        return y.to(x.dtype)


class ConvolutionModule(nn.Module):
    """LN -> pointwise(d->2d) -> GLU -> depthwise(k) -> BatchNorm -> Swish -> pointwise(d->d)."""

    def __init__(self, dim: int, kernel_size: int = 31, dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"depthwise kernel must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.glu = nn.GLU(dim=-1)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.batch_norm = MaskedBatchNorm1d(dim)
        self.activation = nn.SiLU()
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        h = zero_padding(self.glu(self.pointwise_in(self.norm(x))), padding_mask)
        h = self.batch_norm(self.depthwise(h.transpose(1, 2)), padding_mask).transpose(1, 2)
        return self.dropout(self.pointwise_out(self.activation(h)))


class ConformerBlock(nn.Module):
    """One macaron Conformer block around a rotary-MHSA or SummaryMixing ``mixer``."""

    def __init__(self, dim: int, mixer: nn.Module, units: int, kernel_size: int = 31, dropout: float = 0.0):
        super().__init__()
        self.ffn1 = FeedForward(dim, units, dropout)
        self.mixer_norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.conv = ConvolutionModule(dim, kernel_size, dropout)
        self.ffn2 = FeedForward(dim, units, dropout)
        self.final_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        x = x + 0.5 * self.ffn1(x)
        mixed, weights = self.mixer(self.mixer_norm(x), padding_mask, need_weights)
        x = x + self.dropout(mixed)
        x = x + self.conv(x, padding_mask)
        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x), weights
