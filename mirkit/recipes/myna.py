"""Myna: masking-based contrastive learning of musical representations (arXiv 2502.12511;
code: ghost-signal/myna).

Two crops of the same track, each with a uniformly random start, are the positive pair; the
only augmentation is dropping 90 % of each crop's tokens (an independent random subset per
crop). A SimpleViT (16x16, 128x2 or hybrid patches) encodes the kept tokens and a projection
head maps the mean token to the loss space. Choices, each from Myna's code (``utils.py``):

* loss: SogCLR (LibAUC ``GCLoss_v1``, tau 0.1, gamma 0.9; :mod:`mirkit.objectives.sogclr`), with a
  moving average per training track; ``loss: decoupled`` (decoupled InfoNCE, SogCLR's first-step
  gradient up to 2 tau) and ``loss: ntxent`` (SimCLR) are options;
* head: ``linear_head`` = ``Linear(dim, 50)`` (``--num_outputs`` 50, no ``--proj_head``);
  ``proj_dims`` lists the widths of an MLP head as ``--proj_head`` builds it (ReLU between layers);
* crop: ``crop_samples`` through Myna's ``get_n_frames``: 1 + samples // 512 mel frames (nnAudio,
  centred) floored to a multiple of the time patch width. Default 50,000 samples (3.1 s): the paper's
  "two three-second segments" (sec. 3.2, Fig. 3) and ``example.py``'s chunk, i.e. 96 frames for
  square/hybrid and 98 for vertical patches. Myna's ``train.py`` defaults to ``--n_samples 100000``
  (6.25 s: 192 / 196 frames); set ``crop_samples: 100000`` to train that way (docs/recipes.md). The crop
  is also the extraction chunk (``window_frames``);
* hybrid: loss = mean of the square and the vertical passes' losses (paper sec. 3.4), both passes
  sharing the head and SogCLR's moving average (LibAUC updates it once per pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from torch import Tensor, nn

from mirkit.data.store import StoreError
from mirkit.limits import MAX_FRAMES, MAX_WIDTH
from mirkit.models.registry import sizes_of
from mirkit.models.vit import PATCH_KINDS, PATCH_SIZES, SimpleViT
from mirkit.objectives.contrastive import decoupled_infonce, nt_xent
from mirkit.objectives.sogclr import SogCLR
from mirkit.params import ParamsError, param
from mirkit.recipes.base import Example, Preset, PretrainModel, Recipe, Sources

#: mel bins Myna's input has (nnAudio MelSpectrogram n_mels=128); vertical patches span them all.
N_MELS = 128
#: samples per crop at 16 kHz: the paper's three-second segments = ``example.py``'s N_SAMPLES (50000);
#: Myna's ``train.py`` default ``--n_samples`` is 100000
PAPER_SAMPLES, TRAIN_PY_SAMPLES = 50_000, 100_000
#: hop of Myna's mel front end (nnAudio MelSpectrogram default at 16 kHz)
HOP = 512
LOSSES = ("sogclr", "decoupled", "ntxent")


def default_crop(patch: str, samples: int = PAPER_SAMPLES) -> int:
    """Myna's ``get_n_frames``: the 1 + samples // 512 frames of a centred STFT, floored to a multiple
    of the widest time patch (50000 samples: 96 square/hybrid, 98 vertical; 100000: 192 / 196)."""
    width = max(PATCH_SIZES[kind][1] for kind in PATCH_KINDS[patch])
    return (1 + samples // HOP) // width * width


def projection_head(dim: int, widths: list[int]) -> nn.Sequential:
    """Myna's ``add_proj_head``: Linear layers to each width with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers += ([nn.ReLU()] if i else []) + [nn.Linear(dim, width)]
        dim = width
    return nn.Sequential(*layers)

#: Myna's sizes live with the models (``mirkit.models.registry``); the recipe adds patch, bins and log1p
PRESETS: dict[str, Preset] = {name: Preset.of(name) for name in sizes_of("simple-vit")}


@dataclass
class MynaParams:
    preset: str = param("myna-22m", choices=PRESETS, help="model size")
    patch: str = param("square", choices=PATCH_KINDS,
                       help="square 16x16 (Myna-Base), vertical 128x2 (Myna-Vertical) or hybrid (both)")
    mask_ratio: float = param(0.9, ge=0.0, lt=1.0, help="share of tokens dropped from each view")
    loss: str = param("sogclr", choices=LOSSES,
                      help="sogclr (Myna's LibAUC GCLoss_v1), decoupled (InfoNCE without the positive in the "
                           "denominator) or ntxent (SimCLR)")
    temperature: float = param(0.1, gt=0.0, help="contrastive temperature (Myna --sogclr_tau)")
    gamma: float = param(0.9, gt=0.0, le=1.0, help="SogCLR moving-average factor (Myna --sogclr_gamma)")
    crop_samples: int = param(PAPER_SAMPLES, ge=HOP, le=MAX_FRAMES * HOP,
                              help="audio samples (16 kHz) per crop, turned into frames as Myna's get_n_frames: "
                                   "50000 = the paper's three-second segments (96 frames square/hybrid, 98 vertical); "
                                   "100000 = Myna train.py's default (192 / 196)")
    crop_frames: int | None = param(None, gt=0, le=MAX_FRAMES, help="frames per crop, overriding crop_samples; "
                                                                    "null = from crop_samples")
    log1p: bool = param(False, help="apply log1p to the mel power inside the model (Myna --log_mel)")
    proj_dims: list[int] = param([50], help="projection head widths, ReLU between layers (Myna: Linear(dim, 50))")
    n_items: int | None = param(None, ge=1, le=2**31 - 1, help="tracks SogCLR keeps a moving average for "
                                                                 "(set by prepare)")

    def check(self) -> None:
        if not self.proj_dims or any(not 1 <= int(w) <= MAX_WIDTH for w in self.proj_dims):
            raise ParamsError(f"proj_dims={self.proj_dims}: needs one or more widths; every width must be "
                              f"<= {MAX_WIDTH} and >= 1")
        crop = self.crop_frames or default_crop(self.patch, self.crop_samples)
        if crop < 1:
            raise ParamsError(f"crop_samples={self.crop_samples}: shorter than one {self.patch} patch")
        for kind in PATCH_KINDS[self.patch]:
            width = PATCH_SIZES[kind][1]
            if crop % width:
                raise ParamsError(f"crop_frames={self.crop_frames}: must be a multiple of {width}, "
                                  f"the time width of {kind} patches (patch={self.patch})")


class MynaModel(PretrainModel):
    """SimpleViT + projection head (discarded at extraction) + contrastive loss.

    With ``loss="sogclr"`` the loss module (``self.sogclr``) holds one moving average per training
    track (``n_items``), indexed by ``batch["index"]``.
    """

    encoder: SimpleViT

    def __init__(self, encoder: SimpleViT, proj_dims: list[int], mask_ratio: float, temperature: float,
                 loss: str = "sogclr", gamma: float = 0.9, n_items: int = 0):
        super().__init__()
        if loss not in LOSSES:
            raise ParamsError(f"loss={loss!r}: allowed values are {', '.join(LOSSES)}")
        self.encoder = encoder
        self.head = projection_head(encoder.dim, list(proj_dims))
        self.mask_ratio, self.temperature, self.loss = mask_ratio, temperature, loss
        self.sogclr = SogCLR(n_items, temperature, gamma) if loss == "sogclr" else None

    def contrast(self, z1: Tensor, z2: Tensor, index: Tensor | None) -> Tensor:
        if self.sogclr is not None:
            return self.sogclr(z1, z2, index)
        return (nt_xent if self.loss == "ntxent" else decoupled_infonce)(z1, z2, self.temperature)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each view masked independently (the masking *is* the augmentation, so it applies in
        eval mode too); for hybrid, loss = mean of the per-pass losses, also reported."""
        losses: dict[str, Tensor] = {}
        for kind in self.encoder.patch_kinds:
            z1 = self.head(self.encoder.pooled(batch["view1"], kind, self.mask_ratio))
            z2 = self.head(self.encoder.pooled(batch["view2"], kind, self.mask_ratio))
            losses[kind] = self.contrast(z1, z2, batch.get("index"))
        out = {"loss": cast(Tensor, sum(losses.values())) / len(losses)}   # a sum of one or two tensors
        if len(losses) > 1:
            out.update({f"loss_{kind}": loss.detach() for kind, loss in losses.items()})
        return out


class MynaRecipe(Recipe):
    name = "myna"
    paper = "Myna: Masking-Based Contrastive Learning of Musical Representations (arXiv 2502.12511)"
    Params = MynaParams
    presets = PRESETS
    feature_set = "mel16k"

    @property
    def crop_frames(self) -> int:
        return self.params.crop_frames or default_crop(self.params.patch, self.params.crop_samples)

    def prepare(self, sources: Sources) -> None:
        """Check the bins; size SogCLR's state to the feature set's tracks (``batch["index"]``)."""
        if sources.features.n_bins != N_MELS:
            raise StoreError(f"myna needs {N_MELS} mel bins; feature set '{self.feature_set}' has "
                             f"{sources.features.n_bins}")
        self.params.n_items = len(sources.features)

    def sample(self, sources: Sources, track: int, rng: np.random.Generator) -> Example:
        """Two crops of the track with independent uniform starts (zero-padded when short)."""
        feats, crop = sources.features, self.crop_frames
        last_start = max(feats.n_frames(track) - crop, 0)
        views: Example = {}
        for name in ("view1", "view2"):
            start = int(rng.integers(0, last_start + 1))
            frames = feats.read(track, start, crop)                 # (crop, bins)
            views[name] = np.ascontiguousarray(frames.T, dtype=np.float32)
        return views

    def build_encoder(self) -> SimpleViT:
        return SimpleViT(**self.preset().model, patch=self.params.patch, bins=N_MELS, log1p=self.params.log1p)

    def build_model(self) -> MynaModel:
        p = self.params
        return MynaModel(self.build_encoder(), p.proj_dims, p.mask_ratio, p.temperature, p.loss, p.gamma,
                         p.n_items or 0)


RECIPE = MynaRecipe
