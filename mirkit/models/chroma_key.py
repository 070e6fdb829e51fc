"""A frequency-convolution + octave-pooling tokeniser for MT2's key token (STONE's ChromaNet idea).

STONE (Kong et al., ISMIR 2024; ``src/stone12/model/chromanet.py``, see
``shared/notes/anchors-mt2.md`` §1.3) gets its 12-dim key profile from convolutions along frequency
followed by an octave pool: a crop offset of ``k`` bins moves every feature map by ``k`` bins, the
octave pool turns that into a rotation of the 12 pitch classes, so the profile rotates with the
transposition by construction and a constant non-uniform profile is not representable. A ViT-1D
whose ``Linear(84 -> width)`` tokeniser mixes all bins has none of that structure, and on CQT input
with leakage CPSD stays on its constant-profile plateau (docs/training.md, "MT2").

:class:`ChromaFrontEnd` is a reduced ChromaNet (two 2-D convolutions instead of seven ConvNeXt
stages, time average-pooled first so it costs little beside the transformer):

    frame standardisation (no affine: an affine per-bin gain would break the shift equivariance)
    -> avg-pool time by ``time_pool`` -> Conv2d(1, C, (k, 3)) -> GELU -> Conv2d(C, C, (k, 3)) -> GELU
    -> octave pool (bins -> octaves x 12, mean over octaves) -> mean over time -> (C, 12)
    -> 1x1 conv over channels -> 12 key logits (STONE's last layer)

:class:`ChromaKeyViT1D` is the ViT-1D with that front end beside its frame tokeniser: the key class
token (token 0) is its learned vector + the frame mean (as ViT1D) + ``Linear(C*12 -> width)`` of the
pooled pitch-class features, so what the transformer carries in the key token starts from an
octave-equivariant chroma summary. :meth:`ChromaKeyViT1D.key_logits` gives the equivariant logits
the ``mt2`` recipe adds to its key head (``key_frontend: chroma``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirkit.models.registry import register
from mirkit.models.vit1d import ViT1D

N_PITCH_CLASSES = 12


class ChromaFrontEnd(nn.Module):
    """``(batch, bins, frames)`` log-frequency crop -> ``(batch, channels, 12)`` pitch-class features.

    ``bins`` must be a whole number of octaves at 12 bins/octave (84 for STONE's crop).
    """

    def __init__(self, in_bins: int = 84, channels: int = 16, kernel: int = 7, time_pool: int = 4,
                 amplitude: bool = True):
        super().__init__()
        self.amplitude = amplitude
        if in_bins % N_PITCH_CLASSES:
            raise ValueError(f"in_bins={in_bins}: the octave pool needs a multiple of {N_PITCH_CLASSES} bins")
        if kernel % 2 == 0 or kernel < 1:
            raise ValueError(f"kernel={kernel}: must be odd (same-size padding along frequency)")
        self.in_bins, self.channels, self.time_pool = in_bins, channels, time_pool
        pad = (kernel // 2, 1)
        self.conv1 = nn.Conv2d(1, channels, (kernel, 3), padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, (kernel, 3), padding=pad)
        self.out = nn.Conv2d(channels, 1, 1)   # per pitch class, shared: keeps the rotation equivariance

    def features(self, x: Tensor) -> Tensor:
        if self.amplitude:
            x = torch.pow(10.0, 4.0 * (x.float() - 1.0))   # STONE's dB/80+1 scale back to amplitude
        x = F.layer_norm(x.transpose(1, 2), (x.shape[1],)).transpose(1, 2)   # each frame over its bins
        if self.time_pool > 1 and x.shape[-1] >= self.time_pool:
            x = F.avg_pool1d(x, self.time_pool, ceil_mode=True)
        h = F.gelu(self.conv2(F.gelu(self.conv1(x.unsqueeze(1)))))          # (B, C, bins, T')
        b, c, bins, t = h.shape
        h = h.view(b, c, bins // N_PITCH_CLASSES, N_PITCH_CLASSES, t).mean(dim=2)   # octave pool
        return h.mean(dim=-1)                                                 # (B, C, 12)

    def logits(self, feats: Tensor) -> Tensor:
        """``(batch, 12)`` key logits from :meth:`features`."""
        return self.out(feats.unsqueeze(-1)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(x))


@register("vit1d-chroma")
class ChromaKeyViT1D(ViT1D):
    """ViT-1D whose key class token (token 0) also reads a :class:`ChromaFrontEnd`."""

    def __init__(self, in_bins: int = 84, width: int = 192, depth: int = 12, heads: int = 3,
                 max_len: int = 126, n_cls: int = 2, mlp_ratio: int = 4, crop_offset: int = 0,
                 input_mean: float = 0.0, input_std: float = 1.0, frame_norm: bool = False,
                 chroma_channels: int = 16, chroma_kernel: int = 7, chroma_time_pool: int = 4):
        super().__init__(in_bins=in_bins, width=width, depth=depth, heads=heads, max_len=max_len, n_cls=n_cls,
                         mlp_ratio=mlp_ratio, crop_offset=crop_offset, input_mean=input_mean,
                         input_std=input_std, frame_norm=frame_norm)
        self.chroma = ChromaFrontEnd(in_bins, chroma_channels, chroma_kernel, chroma_time_pool)
        self.chroma_token = nn.Linear(chroma_channels * N_PITCH_CLASSES, width)
        nn.init.trunc_normal_(self.chroma_token.weight, std=0.02)
        nn.init.zeros_(self.chroma_token.bias)

    def _crop(self, x: Tensor) -> Tensor:
        if x.dim() == 3 and x.shape[1] != self.in_bins:
            x = x[:, self.crop_offset:self.crop_offset + self.in_bins]
        return ((x - self.input_mean) / self.input_std)

    def key_logits(self, x: Tensor) -> Tensor:
        """``(batch, 12)`` octave-equivariant key logits of the raw input (the front end alone)."""
        return self.chroma(self._crop(x))

    def tokens(self, x: Tensor) -> Tensor:
        h = super().tokens(x)
        feats = self.chroma.features(self._crop(x)).flatten(1)
        add = torch.zeros_like(h[:, : self.n_cls])
        add[:, 0] = self.chroma_token(feats)
        return torch.cat([h[:, : self.n_cls] + add, h[:, self.n_cls:]], dim=1)
