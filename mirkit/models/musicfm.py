"""MusicFM's encoder (Won et al., "A Foundation Model for Music Informatics", ICASSP 2024;
minzwon/musicfm ``MusicFM25Hz``), for published MusicFM weights imported with ``mirkit import musicfm``.

Input: mirkit's ``mel24k`` features (24 kHz, n_fft 2048, hop 240, 128 HTK mels, ``10 log10`` power
without top_db: the reference's ``MelSTFT(is_db=True)``), shaped ``(batch, 128, frames)``.

* Normalisation: one scalar mean and std over all mel values (the reference's ``*_stats.json``,
  keys ``melspec_2048_mean``/``melspec_2048_std``), stored as constructor arguments.
* Front end (``Conv2dSubsampling``): two residual 2-D conv modules, each ``conv3x3(stride 2,2) -> BN
  -> ReLU -> conv3x3 -> BN`` plus a strided ``conv3x3 -> BN`` shortcut, then ReLU; the
  ``(channels, 32 bands)`` map is flattened channel-major per time step and projected to ``dim``.
  Four mel frames per output frame: 25 Hz.
* Conformer (the wav2vec2-conformer layout MusicFM takes from ``facebook/wav2vec2-conformer-rope-
  large-960h-ft``: 16 heads, FFN 4096, Swish, depthwise kernel 31, LayerNorm eps 1e-5): macaron
  blocks ``x + FFN/2 -> x + MHSA(LN x) -> x + ConvModule -> x + FFN/2 -> LN``. Rotary positions
  (base 10000) rotate the *normalised block input* per head before the q and k projections (the
  wav2vec2-conformer arrangement; mirkit's own :mod:`mirkit.models.rotary` rotates after them). The
  convolution module's pointwise and depthwise convolutions have no bias. The encoder's positional
  convolution exists in the checkpoint but is never applied by the reference; it is not kept.
* Layers: ``0`` the projected front-end output, ``i`` block ``i``'s output, ``-1`` the final
  LayerNorm of the last block (the reference's ``hidden_states[depth]``; its ``hidden_states[i]``
  for ``i < depth`` are mirkit's layers ``i``).

Module names follow the published state dict (less its ``model.`` prefix), so weights copy one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mirkit.models.base import Encoder, EncoderOutput, FeedForward, multihead
from mirkit.models.registry import register


class Res2d(nn.Module):
    """Residual 2-D conv module (MusicFM ``Res2dModule``), stride ``(2, 2)``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv3 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)   # the shortcut (always present: stride 2)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(self.bn3(self.conv3(x)) + y)


class Subsampling(nn.Module):
    """``(batch, bins, frames)`` -> ``(batch, ceil(frames / 4), dim)``."""

    def __init__(self, conv_dim: int, dim: int, n_mels: int):
        super().__init__()
        self.conv = nn.Sequential(Res2d(1, conv_dim), Res2d(conv_dim, conv_dim))
        bands = (n_mels + 3) // 4    # two stride-2 convs: ceil(ceil(n_mels / 2) / 2)
        self.linear = nn.Linear(conv_dim * bands, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x.unsqueeze(1))                              # (b, c, f, t)
        b, c, f, t = h.shape
        return self.linear(h.permute(0, 3, 1, 2).reshape(b, t, c * f))


def rotate_input(x: Tensor, heads: int, base: float) -> Tensor:
    """Rotary positions on ``(batch, time, dim)`` split into heads, channels ``(i, i + head/2)`` paired."""
    b, t, d = x.shape
    hd = d // heads
    inv = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float32, device=x.device) / hd)
    ang = torch.outer(torch.arange(t, dtype=torch.float32, device=x.device), inv)
    ang = torch.cat([ang, ang], dim=-1)[:, None, :]                # (t, 1, hd)
    h = x.reshape(b, t, heads, hd)
    first, second = h[..., : hd // 2], h[..., hd // 2:]
    turned = torch.cat([-second, first], dim=-1)
    return (h * ang.cos().to(x.dtype) + turned * ang.sin().to(x.dtype)).reshape(b, t, d)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rotary_base: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.rotary_base = heads, rotary_base
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        qk_in = rotate_input(x, self.heads, self.rotary_base)
        y, weights = multihead(self.linear_q(qk_in), self.linear_k(qk_in), self.linear_v(x), self.heads, need_weights)
        return self.linear_out(y), weights


class ConvModule(nn.Module):
    def __init__(self, dim: int, kernel_size: int, eps: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim, bias=False)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)
        h = nn.functional.silu(self.batch_norm(self.depthwise_conv(h)))
        return self.pointwise_conv2(h).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, units: int, kernel_size: int, eps: float, rotary_base: float):
        super().__init__()
        self.ffn1_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn1 = FeedForward(dim, units, nn.functional.silu)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, heads, rotary_base)
        self.conv_module = ConvModule(dim, kernel_size, eps)
        self.ffn2_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn2 = FeedForward(dim, units, nn.functional.silu)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        y, weights = self.self_attn(self.self_attn_layer_norm(x), need_weights)
        x = x + y
        x = x + self.conv_module(x)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x), weights


class Conformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, units: int, kernel_size: int, eps: float, rotary_base: float):
        super().__init__()
        self.layers = nn.ModuleList(ConformerLayer(dim, heads, units, kernel_size, eps, rotary_base)
                                    for _ in range(depth))
        self.layer_norm = nn.LayerNorm(dim, eps=eps)


@register("musicfm")
class MusicFM(Encoder):
    """MusicFM 25 Hz encoder on ``mel24k`` dB mels. Defaults: the published 12 x 1024 model."""

    poolings = ("mean",)

    def __init__(self, dim: int = 1024, depth: int = 12, heads: int = 16, units: int = 4096, conv_dim: int = 512,
                 n_mels: int = 128, kernel_size: int = 31, mel_mean: float = 0.0, mel_std: float = 1.0,
                 rotary_base: float = 10000.0, eps: float = 1e-5):
        super().__init__()
        if not mel_std > 0:
            raise ValueError(f"mel_std={mel_std}: must be > 0")
        self.dim, self.depth, self.n_mels = dim, depth, n_mels
        self.mel_mean, self.mel_std = float(mel_mean), float(mel_std)
        self.conv = Subsampling(conv_dim, dim, n_mels)
        self.conformer = Conformer(dim, depth, heads, units, kernel_size, eps, rotary_base)

    def encode(self, x: Tensor, layers: Sequence[int] = (-1,), attention: bool = False) -> EncoderOutput:
        for layer in layers:
            if not (layer == -1 or 0 <= layer <= self.depth):
                raise ValueError(f"layer {layer} out of range (0..{self.depth} or -1)")
        if x.shape[1] != self.n_mels:
            raise ValueError(f"input has {x.shape[1]} bins; MusicFM reads {self.n_mels} mel bands")
        h = self.conv((x.float() - self.mel_mean) / self.mel_std)
        hidden = {0: h} if 0 in layers else {}
        attentions = {}
        last = self.depth if -1 in layers else max(layers)
        for i, block in enumerate(self.conformer.layers[:last], start=1):
            h, weights = block(h, need_weights=attention)
            if weights is not None:
                attentions[i] = weights
            if i in layers:
                hidden[i] = h
        if -1 in layers:
            hidden[-1] = self.conformer.layer_norm(h)
        return EncoderOutput(hidden=hidden, n_cls=0, grid=(1, h.shape[1]), frames_per_col=4.0, attentions=attentions)

    def token_frames(self) -> tuple[float, int]:
        """Four mel frames per output frame; two residual modules of 3x3 convs (strides 2, 1, 2, 1)
        see 19 mel frames."""
        return 4.0, 19
