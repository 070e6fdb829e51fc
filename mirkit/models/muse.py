"""MuSE-LQ encoder: global normalisation, conv subsampling 100 Hz -> 25 Hz, Branchformer or
Conformer blocks with rotary MHSA or SummaryMixing, final LayerNorm.

Input: stored dB mel crops ``(batch, 128, frames)`` at 100 Hz (24 kHz, hop 240). The global scalar
mean/std of the token store (MusicFM-style normalisation) are buffers, so a checkpoint is
self-contained. Output: one token per 4 input frames (25 Hz), ``frames // 4`` of them exactly
(trailing frames that do not fill a 4-frame step are dropped, as the tokens drop them).

Front end (MusicFM ``Conv2dSubsampling``): two residual 2-D blocks (conv3x3-BN-ReLU-conv3x3-BN
plus a strided conv3x3-BN shortcut, ReLU after the sum), each with stride 2 over (freq, time),
then ``Linear(conv_dim * 32 -> dim)`` on the flattened (channel, freq) axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mirkit.models.base import Encoder, EncoderOutput
from mirkit.models.branchformer import BranchformerBlock
from mirkit.models.conformer import ConformerBlock
from mirkit.models.registry import register
from mirkit.models.rotary import RotarySelfAttention
from mirkit.models.summary_mixing import SummaryMixing

BLOCKS = {"branchformer": BranchformerBlock, "conformer": ConformerBlock}
MIXERS = ("mhsa", "summary")
STACK = 4  # two stride-2 blocks


class ResidualConv2d(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + strided conv3x3-BN shortcut, ReLU after the sum (MusicFM Res2d)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ConvSubsampling(nn.Module):
    """``(batch, n_mels, frames)`` normalised mel -> ``(batch, frames // 4, dim)``."""

    def __init__(self, n_mels: int, conv_dim: int, dim: int):
        super().__init__()
        self.blocks = nn.Sequential(ResidualConv2d(1, conv_dim), ResidualConv2d(conv_dim, conv_dim))
        freq_out = (n_mels + 3) // 4                        # ceil(ceil(n/2)/2): two stride-2 convs
        self.proj = nn.Linear(conv_dim * freq_out, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(x.unsqueeze(1))                     # (b, c, f', t')
        h = h.permute(0, 3, 1, 2).flatten(2)                # (b, t', c * f')
        return self.proj(h)


def make_block(block: str, kind: str, dim: int, heads: int, units: int, kernel_size: int, dropout: float,
               rotary_base: float, sm_local_hidden: Sequence[int], sm_local_out: int,
               sm_summary_hidden: Sequence[int], sm_summary_out: int, sm_groups: int) -> nn.Module:
    """One block with its global branch: rotary MHSA (``"mhsa"``) or SummaryMixing (``"summary"``).

    SummaryMixing follows SamsungLabs/SummaryMixing's layouts: in a Conformer the cell outputs the
    model width (``summary_out = dim``, their ``Conformer.py``); in a Branchformer it outputs
    ``sm_summary_out`` and the merge is the GELU MLP through ``sm_summary_hidden`` (their ``Branchformer.py``).
    """
    if block not in BLOCKS:
        raise ValueError(f"unknown block '{block}' (choose from {', '.join(BLOCKS)})")
    if kind == "mhsa":
        mixer: nn.Module = RotarySelfAttention(dim, heads, dropout, rotary_base)
    elif kind == "summary":
        out = dim if block == "conformer" else sm_summary_out
        mixer = SummaryMixing(dim, sm_local_hidden, sm_local_out, sm_summary_hidden, out, groups=sm_groups,
                              dropout=dropout)
    else:
        raise ValueError(f"unknown attention '{kind}' (choose from {', '.join(MIXERS)})")
    if block == "branchformer":
        merge = list(sm_summary_hidden) if kind == "summary" else None
        return BranchformerBlock(dim, mixer, units, kernel_size, dropout, merge_hidden=merge)
    return ConformerBlock(dim, mixer, units, kernel_size, dropout)


@register("muse")
class MuseEncoder(Encoder):
    """Conv subsampling + ``depth`` Branchformer/Conformer blocks + final LayerNorm (MuSE-LQ §3.1).

    ``units``: cgMLP width (Branchformer) or FFN width (Conformer). ``sm_*``: SummaryMixing sizes
    (local f: ``dim -> sm_local_hidden -> sm_local_out``; summary s: ``dim -> sm_summary_hidden ->
    sm_summary_out``, ``dim`` in a Conformer; combiner to the same width; see :func:`make_block`).
    ``encode(..., padding_mask)`` takes an optional ``(batch, frames // 4)`` mask, True at padded
    25 Hz steps: keys are masked in MHSA, the SummaryMixing mean and the convolutions skip them.
    The 2-D front end runs before masking: its receptive field (step k sees frames 4k-9 .. 4k+9)
    lets padding touch only the last valid steps, as in MusicFM.
    """

    poolings = ("seq-mean", "mean")

    def __init__(self, dim: int, depth: int, block: str = "branchformer", attention: str = "summary",
                 heads: int = 8, n_mels: int = 128, conv_dim: int = 512, units: int = 4096,
                 kernel_size: int = 31, dropout: float = 0.1, rotary_base: float = 10000.0,
                 sm_local_hidden: Sequence[int] = (512,), sm_local_out: int = 512,
                 sm_summary_hidden: Sequence[int] = (512,), sm_summary_out: int = 512, sm_groups: int = 1,
                 mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block '{block}' (choose from {', '.join(BLOCKS)})")
        if std <= 0:
            raise ValueError(f"normalisation std must be > 0, got {std}")
        self.dim, self.depth, self.n_mels, self.attention = dim, depth, n_mels, attention
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.frontend = ConvSubsampling(n_mels, conv_dim, dim)
        self.blocks = nn.ModuleList(
            make_block(block, attention, dim, heads, units, kernel_size, dropout, rotary_base, sm_local_hidden,
                       sm_local_out, sm_summary_hidden, sm_summary_out, sm_groups)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def token_frames(self) -> tuple[float, int]:
        """25 Hz steps of 4 frames; the two stride-2 residual blocks let step k see frames 4k-9..4k+9."""
        return float(STACK), 19

    def normalise(self, x: Tensor) -> Tensor:
        """Stored dB mel -> zero-mean unit-variance input (global scalar statistics)."""
        return (x - self.mean) / self.std

    def subsample(self, x_norm: Tensor) -> Tensor:
        """Normalised ``(batch, n_mels, frames)`` -> ``(batch, frames // 4, dim)``."""
        if x_norm.dim() != 3 or x_norm.shape[1] != self.n_mels:
            raise ValueError(f"expected (batch, {self.n_mels}, frames), got {tuple(x_norm.shape)}")
        usable = x_norm.shape[-1] // STACK * STACK
        if usable == 0:
            raise ValueError(f"need at least {STACK} frames, got {x_norm.shape[-1]}")
        return self.frontend(x_norm[..., :usable])

    def run_blocks(self, z: Tensor, layers: Sequence[int] = (-1,), attention: bool = False,
                   padding_mask: Tensor | None = None) -> EncoderOutput:
        """The block stack on subsampled tokens ``(batch, time, dim)``.

        ``hidden`` holds the requested layers; ``attentions[layer]`` ``(batch, heads, time, time)``
        the maps of the requested blocks (``-1`` = the last block) when ``attention`` is set and the
        blocks use MHSA (SummaryMixing has no attention maps).
        """
        wanted = set()
        for layer in layers:
            if layer != -1 and not 0 <= layer <= self.depth:
                raise ValueError(f"layer {layer} out of range (0..{self.depth} or -1)")
            wanted.add(layer)
        hidden: dict[int, Tensor] = {}
        maps: dict[int, Tensor] = {}
        if 0 in wanted:
            hidden[0] = z
        for i, block in enumerate(self.blocks, start=1):
            need = attention and (i in wanted or (i == self.depth and -1 in wanted))
            z, weights = block(z, padding_mask, need)
            if i in wanted:
                hidden[i] = z
            if weights is not None:
                for key in (i, -1) if i == self.depth else (i,):
                    if key in wanted:
                        maps[key] = weights
        if -1 in wanted:
            hidden[-1] = self.norm(z)
        return EncoderOutput(hidden=hidden, n_cls=0, grid=(1, z.shape[1]), frames_per_col=float(STACK),
                             attentions=maps)

    def encode_normalised(self, x_norm: Tensor, layers: Sequence[int] = (-1,), attention: bool = False,
                          padding_mask: Tensor | None = None) -> EncoderOutput:
        return self.run_blocks(self.subsample(x_norm), layers, attention, padding_mask)

    def encode(self, x: Tensor, layers: Sequence[int] = (-1,), attention: bool = False,
               padding_mask: Tensor | None = None) -> EncoderOutput:
        return self.encode_normalised(self.normalise(x), layers, attention, padding_mask)
