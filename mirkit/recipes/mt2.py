"""``mt2``: ViT-1D with two class tokens, CPSD on token 1 and NT-Xent on token 2 (Kong et al.,
"Multi-Class-Token Transformer for Multitask Self-supervised MIR", WASPAA 2025).

MT2's code is not public; where its abstract is silent this module follows STONE's public code
(``shared/notes/anchors-mt2.md`` §1) and says so:

* Input: the ``cqt22k`` feature set (22.05 kHz, fmin 27.5 Hz, 99 bins, 12 bins/octave, hop 512,
  STONE's dB scaling ``AmplitudeToDB(top_db=80) / 80 + 1``), cropped to ``crop_bins`` = 84 bins
  (STONE's ``CropCQT``). Segment length is not published: ``segment_frames`` defaults to 172
  frames (4 s, the Emergent segment duration).
* Views (STONE ``src/stone12/stone.py``): segments 1 and 2 are two positions of the track (chosen
  with the contrastive recipe's silence rule), both cropped at bin offset ``o1`` ~ U{1..12}; view 3
  is segment 1 cropped at ``o2 = (o1 + t) mod 12`` with ``t`` ~ U{1..11}, so ``o2`` is in 0..11 and
  ``d = o2 - o1`` in -11..10, never 0 (P(d = k) = (11 - k)/132 for k = 1..10, (13 + k)/132 for
  k = -11..-1). A larger crop offset moves content DOWN in bin index: view 3 is view 1
  pitch-shifted down by ``d`` semitones (see :mod:`mirkit.objectives.cpsd` for the matching sign).
* Token 1 -> ``Linear(width, 12)`` -> softmax -> CPSD over the circle of fifths (``c`` = 7).
* Token 2 -> projection head (as in ``contrastive``) -> NT-Xent between segments 1 and 2.
* Total = ``cpsd_weight`` * CPSD + ``ntxent_weight`` * NT-Xent (equal weighting, 1 and 1: the
  notes' simplest assumption; MT2's weights are not published).
* ``key_frontend``: ``linear`` (default) reads the key profile from class token 1 through
  ``Linear(width, 12)``, as MT2's abstract describes. ``chroma`` adds STONE's ChromaNet idea beside
  the ViT-1D (:mod:`mirkit.models.chroma_key`): a frequency-convolution + octave-pooling front end
  whose 12 logits rotate with the crop by construction are the key profile (as ChromaNet's; no
  linear head: one on the class token can hold a constant profile, the CPSD plateau), and its
  pooled pitch-class features are added to the key token's input. This is our setting, not the
  paper's: on real music the linear key token stays on the CPSD plateau (docs/recipes.md, "MT2").
* ``objectives``: "both" (MT2), or "cpsd" / "ntxent" for the paper's single-class-token ablations;
  a single-objective model has ONE class token (k = 1) that the chosen objective trains, as the
  paper's "single-class-token ViT-1D models".
* Each frame is standardised over its 84 bins by a ``LayerNorm`` with per-bin gain and bias
  before the ViT-1D's tokeniser (``frame_norm``, on by default): STONE's ChromaNet starts with
  exactly this layer. It is not optional in practice: STONE's dB scaling puts the CQT's noise
  floor at 0.5-0.85, and a linear tokeniser fed that raw sees a large constant vector plus a small
  pitch-dependent part; CPSD then sits on the constant-profile plateau (2.79) instead of learning
  (docs/training.md, "MT2"). MT2's own input normalisation is not published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from mirkit.limits import MAX_FRAMES
from mirkit.models.chroma_key import ChromaKeyViT1D
from mirkit.models.registry import sizes_of
from mirkit.models.vit1d import ViT1D
from mirkit.objectives.contrastive import nt_xent
from mirkit.objectives.cpsd import cpsd_terms
from mirkit.params import ParamsError, param
from mirkit.recipes.base import Example, Preset, PretrainModel, Recipe, Sources
from mirkit.recipes.contrastive import DEFAULT_PROJ_DIMS, ProjectionHead, check_proj_dims, pick_two_segments, take_view

#: backbone sizes (width, depth, heads) from the one size table; the recipe adds bins, length, class tokens
VIT1D_SIZES = {name: dict(size.args) for name, size in sizes_of("vit1d").items()}

CROP_BINS = 84
SEGMENT_FRAMES = 172   # 4 s at 22.05 kHz, hop 512
N_PITCH_CLASSES = 12


def cqt_power(frames: np.ndarray) -> np.ndarray:
    """Per-frame mean power of STONE-scaled CQT frames (``v = dB / 80 + 1`` -> ``10^(dB/10)``)."""
    return np.power(10.0, 8.0 * (frames.astype(np.float64) - 1.0)).mean(axis=1)


def crop_bins(view: np.ndarray, offset: int, n_bins: int) -> np.ndarray:
    """Bins ``[offset, offset + n_bins)`` of a ``(bins, frames)`` view (STONE's ``CropCQT``)."""
    if offset < 0 or offset + n_bins > view.shape[0]:
        raise ValueError(f"crop [{offset}, {offset + n_bins}) outside {view.shape[0]} bins")
    return np.ascontiguousarray(view[offset:offset + n_bins])


#: largest crop offset STONE uses (``original`` in 1..12); crops need crop_bins + 12 stored bins
MAX_OFFSET = 12


def draw_offsets(rng: np.random.Generator) -> tuple[int, int]:
    """STONE's crop offsets: ``o1`` ~ U{1..12}, ``o2 = (o1 + t) mod 12`` with ``t`` ~ U{1..11}."""
    o1 = int(rng.integers(1, 13))
    t = int(rng.integers(1, 12))
    return o1, (o1 + t) % N_PITCH_CLASSES


class MT2Model(PretrainModel):
    """ViT-1D + key head (token 1, CPSD) + projection head (token 2, NT-Xent)."""

    encoder: ViT1D

    def __init__(self, encoder: ViT1D, objectives: str, proj_dims: list[int], c: int,
                 ntxent_weight: float, temperature: float, cpsd_weight: float = 1.0):
        super().__init__()
        self.encoder, self.objectives = encoder, objectives
        self.c, self.ntxent_weight, self.temperature = c, ntxent_weight, temperature
        self.cpsd_weight = cpsd_weight
        # with a chroma front end the profile is its equivariant logits alone (STONE's ChromaNet output):
        # a linear head on the class token can hold a constant profile, the CPSD plateau on real music
        self.chroma = isinstance(encoder, ChromaKeyViT1D) and objectives != "ntxent"
        self.key_head = (nn.Linear(encoder.dim, N_PITCH_CLASSES)
                         if objectives != "ntxent" and not self.chroma else None)
        self.head = ProjectionHead(encoder.dim, proj_dims) if objectives != "cpsd" else None
        #: which class token each objective reads
        self.key_token = 0
        self.contrastive_token = 1 if objectives == "both" else 0

    def key_profiles(self, cls_tokens: Tensor | None, x: Tensor | None = None) -> Tensor:
        """``(batch, 12)`` softmax profiles from ``(batch, n_cls, width)`` class tokens, or, with a
        chroma front end, from its equivariant logits of the input ``x``."""
        if self.chroma and isinstance(self.encoder, ChromaKeyViT1D):
            if x is None:
                raise ValueError("a chroma key front end needs the input")
            return torch.softmax(self.encoder.key_logits(x).float(), dim=-1)
        if self.key_head is None or cls_tokens is None:
            raise RuntimeError(f"objectives={self.objectives!r}: this model has no key head")
        return torch.softmax(self.key_head(cls_tokens[:, self.key_token]).float(), dim=-1)

    @property
    def has_key_profiles(self) -> bool:
        """Whether the model was trained with CPSD (a linear key head or the chroma front end)."""
        return self.key_head is not None or self.chroma

    def profiles_of(self, x: Tensor) -> Tensor:
        """``(batch, 12)`` key profiles of inputs ``x`` (``(batch, bins, frames)``), as CPSD trained them."""
        cls = None if self.chroma else self.encoder.encode(x, layers=(-1,)).cls_tokens(-1)
        return self.key_profiles(cls, x)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = batch["view1"].shape[0]
        use_cpsd = self.objectives != "ntxent"
        views = [batch["view1"], batch["view2"]] + ([batch["view3"]] if use_cpsd else [])
        x = torch.cat(views)
        cls = self.encoder.encode(x, layers=(-1,)).cls_tokens(-1)
        out: dict[str, Tensor] = {}
        loss = cls.new_zeros((), dtype=torch.float32)
        if use_cpsd:
            y1, y2, y3 = self.key_profiles(cls, x).split(b)
            terms = cpsd_terms(y1, y2, y3, batch["shift"], self.c)
            cpsd = cast(Tensor, sum(terms.values()))   # a sum of three tensors
            loss = loss + self.cpsd_weight * cpsd
            out.update({"cpsd": cpsd.detach(), **{k: v.detach() for k, v in terms.items()}})
        if self.head is not None:
            p = self.head(cls[: 2 * b, self.contrastive_token])
            ntx = nt_xent(p[:b], p[b:], self.temperature)
            loss = loss + self.ntxent_weight * ntx
            out["ntxent"] = ntx.detach()
        out["loss"] = loss
        return out


@dataclass
class MT2Params:
    preset: str = param("vit1d-tiny", choices=tuple(VIT1D_SIZES), help="backbone size")
    segment_frames: int = param(SEGMENT_FRAMES, ge=8, le=MAX_FRAMES, help="frames per view (172 = 4 s at 22.05 kHz, hop 512)")
    crop_bins: int = param(CROP_BINS, ge=12, help="CQT bins the model sees (STONE: 84 = 7 octaves)")
    objectives: str = param("both", choices=("both", "cpsd", "ntxent"),
                            help="both = MT2; cpsd / ntxent = single-class-token ablations")
    c: int = param(7, choices=(1, 5, 7, 11), help="CPSD frequency: 7 = circle of fifths, 1 = semitones")
    ntxent_weight: float = param(1.0, ge=0, help="lambda in cpsd_weight * CPSD + lambda * NT-Xent")
    cpsd_weight: float = param(1.0, ge=0, help="weight of CPSD in the total loss")
    key_frontend: str = param("linear", choices=("linear", "chroma"),
                              help="linear = MT2's key head on class token 1; chroma = add STONE's "
                                   "frequency-conv + octave-pool front end (mirkit.models.chroma_key)")
    chroma_channels: int = param(16, ge=1, help="channels of the chroma key front end")
    temperature: float = param(0.1, gt=0, help="NT-Xent temperature")
    silence_db: float = param(-7.5, le=0, help="segments this many dB (power) below the track are silent")
    proj_dims: list[int] | None = param(None, help="projection head widths (default: per preset)")
    frame_norm: bool = param(True, help="standardise each CQT frame over its bins (STONE's first layer); "
                                        "off = raw STONE-scaled input, where CPSD collapses")

    def check(self) -> None:
        check_proj_dims(self.proj_dims)
        if self.key_frontend == "chroma" and self.objectives == "ntxent":
            raise ParamsError("key_frontend=chroma: objectives=ntxent has no key token to feed")
        if self.key_frontend == "chroma" and self.crop_bins % N_PITCH_CLASSES:
            raise ParamsError(f"crop_bins={self.crop_bins}: key_frontend=chroma octave-pools, so it needs a "
                              f"multiple of {N_PITCH_CLASSES} bins")


class MT2Recipe(Recipe):
    name = "mt2"
    paper = "Kong et al., Multi-Class-Token Transformer for Multitask Self-supervised MIR (WASPAA 2025)"
    Params = MT2Params
    presets = {name: Preset.of(name, in_bins=CROP_BINS, max_len=SEGMENT_FRAMES, n_cls=2,
                               description=(f"ViT-1D {size['width']}/{size['depth']}/{size['heads']} (2 class tokens, CQT 84)"
                                            + (", CPU-sized" if name != "vit1d-tiny" else ", the papers' ViT-Tiny (~5.4 M)")))
               for name, size in VIT1D_SIZES.items()}

    feature_set = "cqt22k"
    crop_param = "segment_frames"

    @property
    def n_cls(self) -> int:
        return 2 if self.params.objectives == "both" else 1

    def prepare(self, sources: Sources) -> None:
        n_bins = sources.features.n_bins
        need = self.params.crop_bins + MAX_OFFSET
        if n_bins < need:
            raise ParamsError(f"crop_bins={self.params.crop_bins}: STONE's crop offsets reach {MAX_OFFSET} bins, so "
                              f"crop_bins + {MAX_OFFSET} = {need} exceeds the {n_bins} bins of feature set "
                              f"'{self.feature_set}'")

    def sample(self, sources: Sources, track: int, rng: np.random.Generator) -> Example:
        p = self.params
        frames = sources.features.read(track)   # whole track: the silence rule needs its level
        s1, s2 = pick_two_segments(cqt_power(frames), p.segment_frames, rng, p.silence_db)
        seg1, seg2 = take_view(frames, s1, p.segment_frames), take_view(frames, s2, p.segment_frames)
        o1, o2 = draw_offsets(rng)
        out: Example = {"view1": crop_bins(seg1, o1, p.crop_bins), "view2": crop_bins(seg2, o1, p.crop_bins)}
        if p.objectives != "ntxent":
            out["view3"] = crop_bins(seg1, o2, p.crop_bins)
            out["shift"] = np.int64(o2 - o1)
        return out

    def build_encoder(self) -> ViT1D:
        model = {**self.preset().model, "in_bins": self.params.crop_bins,
                 "max_len": self.params.segment_frames, "n_cls": self.n_cls, "frame_norm": self.params.frame_norm}
        if self.params.key_frontend == "chroma":
            return ChromaKeyViT1D(**model, chroma_channels=self.params.chroma_channels)
        return ViT1D(**model)

    def build_model(self) -> MT2Model:
        p = self.params
        return MT2Model(self.build_encoder(), p.objectives, p.proj_dims or DEFAULT_PROJ_DIMS[p.preset],
                        p.c, p.ntxent_weight, p.temperature, p.cpsd_weight)


RECIPE = MT2Recipe
