"""SummaryMixing: a linear-time drop-in for self-attention (Parcollet et al., "SummaryMixing: a
linear-complexity alternative to self-attention for speech recognition and understanding").

Written from the paper's equations (the reference code is CC BY-NC and was not used)::

    s_bar = 1/|V| * sum_{t in V} s(x_t)          # V = valid (non-padded) frames
    y_t   = c([f(x_t); s_bar])

``f`` (local transformation) and ``s`` (summary function) are small feed-forward networks with an
activation after every layer; ``c`` (combiner) is one linear layer plus activation with
``summary_out`` outputs (the layout of SamsungLabs/SummaryMixing ``speechbrain/nnet/summary_mixing.py``):
the cell's output width is ``summary_out``, so a Conformer sets ``summary_out`` to the model width
and a Branchformer merges a ``summary_out``-wide branch (see :mod:`mirkit.models.branchformer`).
Cost is linear in the sequence length: every frame goes through ``f`` and ``s`` once, and the
summary is a single masked mean.

Optional ``groups`` (the paper's "heads") make the layers of ``f`` and ``s`` block-diagonal:
the feature dimension is split into ``groups`` independent slices, dividing their weights by
``groups``; ``c`` stays dense.

Interface shared with :class:`~mirkit.models.rotary.RotarySelfAttention`:
``forward(x, padding_mask=None, need_weights=False) -> (y, None)`` with ``padding_mask`` True at
padded frames. Outputs at padded frames are zero, and padded inputs never reach valid outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class GroupedLinear(nn.Module):
    """A block-diagonal linear layer: ``groups`` independent ``Linear(in/g, out/g)`` on feature slices."""

    def __init__(self, in_dim: int, out_dim: int, groups: int = 1):
        super().__init__()
        if in_dim % groups or out_dim % groups:
            raise ValueError(f"GroupedLinear: {in_dim}->{out_dim} is not divisible into {groups} groups")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, in_dim // groups, out_dim // groups))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        bound = (in_dim // groups) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        xs = x.unflatten(-1, (self.groups, -1))                    # (..., g, in/g)
        y = torch.einsum("...gi,gio->...go", xs, self.weight)
        return y.flatten(-2) + self.bias


def feed_forward(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str,
                 groups: int = 1) -> nn.Sequential:
    """``in -> hidden... -> out`` with the activation after every layer (the last included)."""
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b) if groups == 1 else GroupedLinear(a, b, groups), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean over time of ``(batch, time, dim)`` counting only valid frames -> ``(batch, 1, dim)``."""
    xf = x.float()                                  # accumulate in fp32 (long sequences under bf16)
    if padding_mask is None:
        return xf.mean(dim=1, keepdim=True).to(x.dtype)
    valid = (~padding_mask).unsqueeze(-1).float()
    count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)
    return ((xf * valid).sum(dim=1, keepdim=True) / count).to(x.dtype)


class SummaryMixing(nn.Module):
    """``y_t = c([f(x_t); mean_valid s(x)])``: ``(batch, time, dim)`` -> ``(batch, time, summary_out)``."""

    def __init__(self, dim: int, local_hidden: Sequence[int] = (512,), local_out: int = 512,
                 summary_hidden: Sequence[int] = (512,), summary_out: int = 512,
                 activation: str = "gelu", groups: int = 1, dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (choose from {', '.join(ACTIVATIONS)})")
        self.out_dim = summary_out
        self.local = feed_forward(dim, local_hidden, local_out, activation, groups)
        self.summary = feed_forward(dim, summary_hidden, summary_out, activation, groups)
        self.combine = feed_forward(local_out + summary_out, [], summary_out, activation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, None]:
        local = self.local(x)                                       # f(x_t), per frame
        summary = masked_mean(self.summary(x), padding_mask)        # mean of s over valid frames
        mixed = torch.cat([local, summary.expand(-1, x.shape[1], -1)], dim=-1)
        y = self.combine(self.dropout(mixed))
        if padding_mask is not None:
            y = y.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return y, None
