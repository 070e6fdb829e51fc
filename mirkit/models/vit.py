"""SimpleViT on mel spectrograms, as in Myna (ghost-signal/myna ``vit.py``, itself a modified
lucidrains ``simple_vit``), with Myna's token dropping and its hybrid (two patch shapes) mode.

* Patch embedding: cut ``(bins, frames)`` into patches row-major (frequency rows first, then time
  columns), flatten each patch, LayerNorm(patch_dim) -> Linear(patch_dim, dim) -> LayerNorm(dim).
* Fixed 2-D sin-cos positions (Beyer et al. 2022, temperature 10000) computed for the actual
  grid, so any crop whose length is a multiple of the patch width works. No class token.
* Pre-norm transformer blocks (qkv and output projections without bias, ``dim_head`` 64 in Myna),
  final LayerNorm, mean pooling, no dropout, PyTorch's default initialisation.
* Masking (training only): after adding positions, each sample keeps its own uniformly random
  subset of ``N - int(mask_ratio * N)`` tokens; no mask token (Myna ``utils.mask_inputs``).
* ``hybrid``: a square (16x16) and a vertical (128x2) patch embedding share the transformer and
  the final norm. Embeddings concatenate the two passes (Myna ``hybrid_mode``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirkit.models.base import Encoder, EncoderOutput, pool
from mirkit.models.registry import register

#: (freq, time) size of each patch kind; Myna-Base uses 16x16, Myna-Vertical 128x2.
PATCH_SIZES: dict[str, tuple[int, int]] = {"square": (16, 16), "vertical": (128, 2)}
#: the patch embeddings (passes) each ``patch`` setting uses, in the order embeddings concatenate.
PATCH_KINDS: dict[str, tuple[str, ...]] = {
    "square": ("square",), "vertical": ("vertical",), "hybrid": ("square", "vertical")}


def sincos_2d(rows: int, cols: int, dim: int, temperature: float = 10000.0,
              device: torch.device | str | None = None) -> Tensor:
    """``(rows * cols, dim)`` fixed positions, row-major: ``[sin(x w), cos(x w), sin(y w), cos(y w)]``
    with ``x`` the column (time), ``y`` the row (frequency) and ``w_k = temperature^(-k / (dim/4 - 1))``."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need dim divisible by 4, got {dim}")
    quarter = dim // 4
    k = torch.arange(quarter, device=device, dtype=torch.float32)
    omega = 1.0 / temperature ** (k / max(quarter - 1, 1))
    y, x = torch.meshgrid(torch.arange(rows, device=device, dtype=torch.float32),
                          torch.arange(cols, device=device, dtype=torch.float32), indexing="ij")
    x = x.reshape(-1, 1) * omega
    y = y.reshape(-1, 1) * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


def patchify(x: Tensor, size: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """``(batch, bins, frames)`` -> ``(batch, rows * cols, ph * pw)`` patches, row-major, and the grid."""
    ph, pw = size
    b, bins, frames = x.shape
    if bins % ph:
        raise ValueError(f"input has {bins} bins, not a multiple of the patch height {ph}")
    if frames % pw:
        raise ValueError(f"input has {frames} frames, not a multiple of the patch width {pw}")
    rows, cols = bins // ph, frames // pw
    patches = x.reshape(b, rows, ph, cols, pw).permute(0, 1, 3, 2, 4).reshape(b, rows * cols, ph * pw)
    return patches, (rows, cols)


def random_keep_indices(batch: int, n_tokens: int, mask_ratio: float,
                        device: torch.device | str | None = None) -> Tensor:
    """``(batch, n_keep)`` token indices to keep, ``n_keep = n_tokens - int(mask_ratio * n_tokens)``:
    an independent uniformly random subset per sample, drawn from the torch global RNG."""
    n_keep = n_tokens - int(mask_ratio * n_tokens)
    return torch.rand(batch, n_tokens, device=device).argsort(dim=1)[:, :n_keep]


def keep_tokens(tokens: Tensor, keep: Tensor) -> Tensor:
    """Gather the kept ``(batch, n_keep)`` positions of ``tokens`` ``(batch, n, dim)``."""
    return tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class PatchEmbed(nn.Module):
    """Patches -> LayerNorm -> Linear -> LayerNorm, plus fixed sin-cos positions for the grid."""

    def __init__(self, size: tuple[int, int], dim: int):
        super().__init__()
        self.size: tuple[int, int] = (size[0], size[1])
        patch_dim = size[0] * size[1]
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        patches, (rows, cols) = patchify(x, self.size)
        tokens = self.norm_out(self.proj(self.norm_in(patches)))
        pos = sincos_2d(rows, cols, tokens.shape[-1], device=tokens.device).to(tokens.dtype)
        return tokens + pos, (rows, cols)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention; qkv and output projections have no bias."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if return_attention:   # explicit path, only when maps are asked for (inspection), in fp32
            with torch.autocast(device_type=q.device.type, enabled=False):
                scores = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
                weights = scores.softmax(dim=-1)
                y = (weights @ v.float()).to(v.dtype)
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, -1)), weights


class FeedForward(nn.Module):
    """Pre-norm MLP: LayerNorm -> Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.attn = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        y, weights = self.attn(x, return_attention)
        x = x + y
        return x + self.ff(x), weights


@register("simple-vit")
class SimpleViT(Encoder):
    """Myna's SimpleViT encoder on ``(batch, bins, frames)`` mel crops.

    ``patch``: ``square`` (16x16), ``vertical`` (128x2) or ``hybrid`` (both, sharing the
    transformer). ``log1p``: apply ``log1p`` to the input first (Myna's ``--log_mel``; off for
    Myna's released models, which read raw mel power).

    For ``hybrid``, :meth:`encode` runs one pass, chosen by its ``patch`` argument (default: the
    square pass); :meth:`embed` and :meth:`embed_frames` concatenate both passes (``2 * dim``).
    """

    poolings = ("mean",)

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dim_head: int = 64,
                 patch: str = "square", bins: int = 128, log1p: bool = False):
        super().__init__()
        if patch not in PATCH_KINDS:
            raise ValueError(f"unknown patch kind '{patch}' (choose from {', '.join(PATCH_KINDS)})")
        self.dim, self.depth, self.patch, self.log1p = dim, depth, patch, log1p
        self.patch_kinds = PATCH_KINDS[patch]
        for kind in self.patch_kinds:
            ph, _ = PATCH_SIZES[kind]
            if kind == "vertical":
                continue   # a vertical patch spans all bins
            if bins % ph:
                raise ValueError(f"{bins} bins are not a multiple of the {kind} patch height {ph}")
        sizes = {k: (bins, PATCH_SIZES[k][1]) if k == "vertical" else PATCH_SIZES[k] for k in self.patch_kinds}
        self.patch_embeds = nn.ModuleDict({k: PatchEmbed(sizes[k], dim) for k in self.patch_kinds})
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    # --- pieces ---------------------------------------------------------------------------------
    def patch_width(self, kind: str | None = None) -> int:
        """Input frames per token column of a pass (the default pass when ``kind`` is None)."""
        embed = self.patch_embeds[kind or self.patch_kinds[0]]
        assert isinstance(embed, PatchEmbed)
        return embed.size[1]

    def tokens(self, x: Tensor, kind: str) -> tuple[Tensor, tuple[int, int]]:
        """Embedded tokens with positions ``(batch, rows * cols, dim)`` and their grid."""
        if self.log1p:
            x = torch.log1p(x)
        return self.patch_embeds[kind](x)

    def pooled(self, x: Tensor, kind: str | None = None, mask_ratio: float = 0.0) -> Tensor:
        """``(batch, dim)`` mean of the final-norm tokens of one pass, keeping only a random
        ``1 - mask_ratio`` share of each sample's tokens (the training path)."""
        h, _ = self.tokens(x, kind or self.patch_kinds[0])
        if mask_ratio > 0:
            h = keep_tokens(h, random_keep_indices(h.shape[0], h.shape[1], mask_ratio, h.device))
        for block in self.blocks:
            h, _ = block(h)
        return self.norm(h).mean(dim=1)

    # --- Encoder contract -----------------------------------------------------------------------
    def encode(self, x: Tensor, layers: Sequence[int] = (-1,), attention: bool = False,
               patch: str | None = None) -> EncoderOutput:
        """All tokens (no masking) through one pass (``patch``: a kind of this model; default: its
        first, i.e. the square pass of a hybrid). Layer 0 = embedded tokens with positions."""
        kind = patch or self.patch_kinds[0]
        if kind not in self.patch_embeds:
            raise ValueError(f"this model has no '{kind}' patch embedding (has {', '.join(self.patch_kinds)})")
        for layer in layers:
            if not (layer == -1 or 0 <= layer <= self.depth):
                raise ValueError(f"layer {layer} out of range (0..{self.depth} or -1)")
        h, grid = self.tokens(x, kind)
        last = self.depth if -1 in layers else max(layers)
        hidden = {0: h} if 0 in layers else {}
        attentions = {}
        for i, block in enumerate(self.blocks[:last], start=1):
            h, weights = block(h, return_attention=attention)
            if weights is not None:
                attentions[i] = weights
            if i in layers:
                hidden[i] = h
        if -1 in layers:
            hidden[-1] = self.norm(h)
        return EncoderOutput(hidden=hidden, n_cls=0, grid=grid, frames_per_col=float(self.patch_width(kind)),
                             attentions=attentions)

    def embed(self, x: Tensor, layer: int = -1, pooling: str | None = None) -> Tensor:
        """``(batch, dim)`` per crop; ``(batch, 2 * dim)`` for hybrid (square pass, then vertical)."""
        pooling = pooling or self.poolings[0]
        return torch.cat([pool(self.encode(x, layers=(layer,), patch=k), layer, pooling)
                          for k in self.patch_kinds], dim=-1)

    def token_frames(self) -> tuple[float, int]:
        """Output step: the finest patch width; a frame sees the widest patch's frames."""
        widths = [self.patch_width(k) for k in self.patch_kinds]
        return float(min(widths)), int(max(widths))

    def embed_layers(self, x: Tensor, layers: Sequence[int], pooling: str | None = None,
                     frames: bool = False) -> tuple[dict[int, Tensor], dict[int, Tensor], float]:
        """One forward pass per patch kind for all ``layers``; passes concatenate as in :meth:`embed`
        and :meth:`embed_frames`."""
        pooling = pooling or self.poolings[0]
        outs = [self.encode(x, layers=tuple(layers), patch=k) for k in self.patch_kinds]
        pooled = {i: torch.cat([pool(o, i, pooling) for o in outs], dim=-1) for i in layers}
        step = min(o.frames_per_col for o in outs)
        tokens = {i: torch.cat([o.time_tokens(i).repeat_interleave(int(o.frames_per_col // step), dim=1)
                                for o in outs], dim=-1) for i in layers} if frames else {}
        return pooled, tokens, step

    def embed_frames(self, x: Tensor, layer: int = -1) -> tuple[Tensor, float]:
        """Per-time-step tokens (averaged over frequency rows). For hybrid, each pass's columns are
        repeated to the finest column rate of the two (the vertical 2-frame columns) before the
        two are concatenated, giving ``(batch, frames / 2, 2 * dim)``."""
        outs = [self.encode(x, layers=(layer,), patch=k) for k in self.patch_kinds]
        step = min(o.frames_per_col for o in outs)
        parts = [o.time_tokens(layer).repeat_interleave(int(o.frames_per_col // step), dim=1) for o in outs]
        return torch.cat(parts, dim=-1), step
