"""MERT-v1's encoder (Li et al., "MERT: Acoustic Music Understanding Model with Large-Scale
Self-supervised Training", ICLR 2024; m-a-p/MERT ``MERTModel``, a HuBERT encoder), for the published
``m-a-p/MERT-v1-95M`` / ``-330M`` weights imported with ``mirkit import mert``.

Input: mirkit's ``wave24k`` "features": the 24 kHz waveform cut into frames of 320 samples (the
product of the conv strides), shaped ``(batch, 320, frames)``; the encoder flattens them back.

* Waveform normalisation per chunk (MERT's ``Wav2Vec2FeatureExtractor``, ``do_normalize``):
  ``(x - mean) / sqrt(var + 1e-7)``, population variance.
* Feature extractor: seven 1-D convolutions (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2: 320
  samples per frame, 75 Hz), each followed by GELU; ``feat_extract_norm="group"``: a GroupNorm with
  one group per channel after the first convolution only (MERT-v1-95M and -330M), ``"layer"``: a
  LayerNorm over channels after every convolution.
* Feature projection: LayerNorm (``feat_proj_layer_norm``) then Linear to ``dim``.
* Encoder: a grouped positional convolution (kernel 128, 16 groups, padding 64, last frame dropped,
  GELU; its weight-norm is folded into a plain weight on import) added to the input; then
  ``pre_norm=False`` (post-LN, MERT-v1-95M): LayerNorm, blocks ``LN(x + MHSA(x))`` then
  ``LN(x + FFN(x))``; ``pre_norm=True`` ("stable layer norm", MERT-v1-330M): blocks
  ``x + MHSA(LN x)``, ``x + FFN(LN x)`` and a final LayerNorm. FFN: Linear, GELU, Linear.
  ``attention_relax`` (330M's config) only shifts each attention row by a constant, which softmax
  ignores, so it is not needed here.
* Layers: ``0`` the input of the first block, ``i`` block ``i``'s output, ``-1`` the reference's last
  hidden state (post-LN: block ``depth`` itself; pre-LN: the final LayerNorm of it). The reference's
  ``hidden_states[i]`` for ``i < depth`` are mirkit's layers ``i``.

Module names follow the Hugging Face state dict, so weights copy one to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mirkit.models.base import Encoder, EncoderOutput, FeedForward, multihead
from mirkit.models.registry import register

MERT_95M = dict(dim=768, depth=12, heads=12, units=3072, pre_norm=False)
MERT_330M = dict(dim=1024, depth=24, heads=16, units=4096, pre_norm=True)


class ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "group":
            self.layer_norm: nn.Module = nn.GroupNorm(cout, cout, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(cout, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_kind == "group":
            x = self.layer_norm(x)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return nn.functional.gelu(x)


class FeatureExtractor(nn.Module):
    def __init__(self, conv_dim: Sequence[int], conv_kernel: Sequence[int], conv_stride: Sequence[int], bias: bool,
                 norm: str):
        super().__init__()
        if not len(conv_dim) == len(conv_kernel) == len(conv_stride) >= 1:
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        if norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm={norm!r}: choose group or layer")
        dims = [1, *conv_dim]
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], conv_kernel[i], conv_stride[i], bias,
                      "layer" if norm == "layer" else ("group" if i == 0 else None))
            for i in range(len(conv_dim)))

    def forward(self, wave: Tensor) -> Tensor:
        x = wave[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)


class FeatureProjection(nn.Module):
    def __init__(self, cin: int, dim: int, layer_norm: bool, eps: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cin, eps=eps) if layer_norm else nn.Identity()
        self.projection = nn.Linear(cin, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.layer_norm(x))


class PositionalConv(nn.Module):
    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x.transpose(1, 2))
        if self.trim:
            h = h[..., :-self.trim]
        return nn.functional.gelu(h).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        y, weights = multihead(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, need_weights)
        return self.out_proj(y), weights


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int, units: int, eps: float, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.attention = Attention(dim, heads)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.feed_forward = FeedForward(dim, units)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        if self.pre_norm:
            y, weights = self.attention(self.layer_norm(x), need_weights)
            x = x + y
            return x + self.feed_forward(self.final_layer_norm(x)), weights
        y, weights = self.attention(x, need_weights)
        x = self.layer_norm(x + y)
        return self.final_layer_norm(x + self.feed_forward(x)), weights


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, units: int, eps: float, pre_norm: bool,
                 pos_kernel: int, pos_groups: int):
        super().__init__()
        self.pos_conv_embed = PositionalConv(dim, pos_kernel, pos_groups)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(Layer(dim, heads, units, eps, pre_norm) for _ in range(depth))


@register("mert")
class MERT(Encoder):
    """MERT-v1 (HuBERT-style) encoder on ``(batch, hop, frames)`` waveform frames. Defaults: MERT-v1-95M."""

    poolings = ("mean",)

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, units: int = 3072,
                 conv_dim: Sequence[int] = (512,) * 7, conv_kernel: Sequence[int] = (10, 3, 3, 3, 3, 2, 2),
                 conv_stride: Sequence[int] = (5, 2, 2, 2, 2, 2, 2), conv_bias: bool = False,
                 feat_extract_norm: str = "group", feat_proj_layer_norm: bool = True, pre_norm: bool = False,
                 pos_kernel: int = 128, pos_groups: int = 16, eps: float = 1e-5, normalize_wave: bool = True):
        super().__init__()
        self.dim, self.depth, self.pre_norm, self.normalize_wave = dim, depth, pre_norm, normalize_wave
        self.hop = math.prod(conv_stride)
        self.conv_kernel, self.conv_stride = list(conv_kernel), list(conv_stride)
        self.feature_extractor = FeatureExtractor(conv_dim, conv_kernel, conv_stride, conv_bias, feat_extract_norm)
        self.feature_projection = FeatureProjection(conv_dim[-1], dim, feat_proj_layer_norm, eps)
        self.encoder = TransformerEncoder(dim, depth, heads, units, eps, pre_norm, pos_kernel, pos_groups)

    def waveform(self, x: Tensor) -> Tensor:
        """``(batch, hop, frames)`` frames -> the normalised ``(batch, samples)`` waveform."""
        if x.shape[1] != self.hop:
            raise ValueError(f"input has {x.shape[1]} samples per frame; this MERT reads frames of {self.hop}")
        wave = x.float().transpose(1, 2).reshape(x.shape[0], -1)
        if self.normalize_wave:
            mean = wave.mean(dim=1, keepdim=True)
            var = (wave - mean).pow(2).mean(dim=1, keepdim=True)
            wave = (wave - mean) / torch.sqrt(var + 1e-7)
        return wave

    def encode(self, x: Tensor, layers: Sequence[int] = (-1,), attention: bool = False) -> EncoderOutput:
        for layer in layers:
            if not (layer == -1 or 0 <= layer <= self.depth):
                raise ValueError(f"layer {layer} out of range (0..{self.depth} or -1)")
        h = self.feature_projection(self.feature_extractor(self.waveform(x)))
        enc = self.encoder
        h = h + enc.pos_conv_embed(h)
        if not self.pre_norm:
            h = enc.layer_norm(h)
        hidden = {0: h} if 0 in layers else {}
        attentions = {}
        last = self.depth if -1 in layers else max(layers)
        for i, block in enumerate(enc.layers[:last], start=1):
            h, weights = block(h, need_weights=attention)
            if weights is not None:
                attentions[i] = weights
            if i in layers:
                hidden[i] = h
        if -1 in layers:
            hidden[-1] = enc.layer_norm(h) if self.pre_norm else h
        return EncoderOutput(hidden=hidden, n_cls=0, grid=(1, h.shape[1]), frames_per_col=1.0, attentions=attentions)

    def token_frames(self) -> tuple[float, int]:
        """One output frame per input frame (``hop`` samples); the conv stack sees
        ``1 + sum((k - 1) * stride so far)`` samples (400 for MERT-v1), i.e. that many frames rounded up."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            field += (k - 1) * jump
            jump *= s
        return 1.0, -(-field // self.hop)
