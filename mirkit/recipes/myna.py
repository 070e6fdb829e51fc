"""Myna: masking-based contrastive learning of musical representations (arXiv 2502.12511;
code: ghost-signal/myna).

Two crops of the same track, each with a uniformly random start, are the positive pair; the
only augmentation is dropping 90 % of each crop's tokens (an independent random subset per
crop). A SimpleViT (16x16, 128x2 or hybrid patches) encodes the kept tokens, an MLP head
projects the mean token, and a symmetric NT-Xent at temperature 0.1 contrasts the views.
Myna's code trains with LibAUC's SogCLR loss (``GCLoss_v1``); the paper states InfoNCE, and
plain NT-Xent is the stand-in used here. The hybrid loss is the mean of the square and the
vertical passes' losses (paper sec. 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from mirkit.limits import MAX_FRAMES, MAX_WIDTH
from mirkit.models.vit import PATCH_KINDS, PATCH_SIZES, SimpleViT
from mirkit.objectives.contrastive import nt_xent
from mirkit.params import ParamsError, param
from mirkit.recipes.base import PretrainModel, Preset, Recipe, Sources

#: mel bins Myna's input has (nnAudio MelSpectrogram n_mels=128); vertical patches span them all.
N_MELS = 128

PRESETS: dict[str, Preset] = {
    "myna-22m": Preset(dict(dim=384, depth=12, heads=6, mlp_dim=1536, dim_head=64),
                       "Myna 22M (vit-s-32 in Myna's code; the released checkpoints)", paper_params=21.4),
    "myna-85m": Preset(dict(dim=768, depth=12, heads=12, mlp_dim=3072, dim_head=64),
                       "Myna 85M (vit-b-16 in Myna's code; Myna-85M-Hybrid)", paper_params=85.2),
    "myna-small": Preset(dict(dim=192, depth=4, heads=3, mlp_dim=768, dim_head=64),
                         "CPU-sized: 192-d, 4 blocks", cpu_sized=True),
    "myna-tiny": Preset(dict(dim=64, depth=2, heads=2, mlp_dim=128, dim_head=32),
                        "CPU-sized: 64-d, 2 blocks (tests and smoke runs)", cpu_sized=True),
}


@dataclass
class MynaParams:
    preset: str = param("myna-22m", choices=PRESETS, help="model size")
    patch: str = param("square", choices=PATCH_KINDS,
                       help="square 16x16 (Myna-Base), vertical 128x2 (Myna-Vertical) or hybrid (both)")
    mask_ratio: float = param(0.9, ge=0.0, lt=1.0, help="share of tokens dropped from each view")
    temperature: float = param(0.1, gt=0.0, help="NT-Xent temperature")
    crop_frames: int = param(96, gt=0, le=MAX_FRAMES, help="frames per crop (96 = 3 s at hop 512 / 16 kHz)")
    log1p: bool = param(False, help="apply log1p to the mel power inside the model (Myna --log_mel)")
    proj_dim: int = param(128, ge=1, le=MAX_WIDTH, help="projection head output size")
    proj_hidden: int = param(512, ge=1, le=MAX_WIDTH, help="projection head hidden size")

    def check(self) -> None:
        for kind in PATCH_KINDS[self.patch]:
            width = PATCH_SIZES[kind][1]
            if self.crop_frames % width:
                raise ParamsError(f"crop_frames={self.crop_frames}: must be a multiple of {width}, "
                                  f"the time width of {kind} patches (patch={self.patch})")


class MynaModel(PretrainModel):
    """SimpleViT + projection head (Linear -> GELU -> Linear, discarded at extraction)."""

    def __init__(self, encoder: SimpleViT, proj_hidden: int, proj_dim: int,
                 mask_ratio: float, temperature: float):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(encoder.dim, proj_hidden), nn.GELU(), nn.Linear(proj_hidden, proj_dim))
        self.mask_ratio, self.temperature = mask_ratio, temperature

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each view masked independently (the masking *is* the augmentation, so it applies in
        eval mode too); for hybrid, loss = mean of the per-pass losses, also reported."""
        losses = {}
        for kind in self.encoder.patch_kinds:
            z1 = self.head(self.encoder.pooled(batch["view1"], kind, self.mask_ratio))
            z2 = self.head(self.encoder.pooled(batch["view2"], kind, self.mask_ratio))
            losses[kind] = nt_xent(z1, z2, self.temperature)
        out = {"loss": sum(losses.values()) / len(losses)}
        if len(losses) > 1:
            out.update({f"loss_{kind}": loss.detach() for kind, loss in losses.items()})
        return out


class MynaRecipe(Recipe):
    name = "myna"
    paper = "Myna: Masking-Based Contrastive Learning of Musical Representations (arXiv 2502.12511)"
    Params = MynaParams
    presets = PRESETS
    feature_set = "mel16k"

    def prepare(self, sources: Sources) -> None:
        if sources.features.n_bins != N_MELS:
            raise ValueError(f"myna needs {N_MELS} mel bins; feature set '{self.feature_set}' has "
                             f"{sources.features.n_bins}")

    def sample(self, sources: Sources, track: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Two crops of the track with independent uniform starts (zero-padded when short)."""
        feats, crop = sources.features, self.params.crop_frames
        last_start = max(feats.n_frames(track) - crop, 0)
        views = {}
        for name in ("view1", "view2"):
            start = int(rng.integers(0, last_start + 1))
            frames = feats.read(track, start, crop)                 # (crop, bins)
            views[name] = np.ascontiguousarray(frames.T, dtype=np.float32)
        return views

    def build_encoder(self) -> SimpleViT:
        return SimpleViT(**self.preset().model, patch=self.params.patch, bins=N_MELS, log1p=self.params.log1p)

    def build_model(self) -> MynaModel:
        p = self.params
        return MynaModel(self.build_encoder(), p.proj_hidden, p.proj_dim, p.mask_ratio, p.temperature)


RECIPE = MynaRecipe
