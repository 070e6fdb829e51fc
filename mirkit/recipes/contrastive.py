"""``contrastive``: ViT-1D trained with NT-Xent on its class token (Kong et al., "Emergent musical
properties of a transformer under contrastive self-supervised learning", ISMIR 2025).

* Input: the ``mel16k-db`` feature set (16 kHz, n_fft 1024, hop 512, 128 mels, dB), 4 s views of
  126 frames (``segment_frames``).
* Views: two *different, non-silent* segments of the same track, following Deezer's
  ``multi-view-ssl-benchmark`` (``get_segments``): the track is cut into segment-long chunks, a
  chunk whose level relative to the whole track is ``<= silence_db`` is silent, and two distinct
  non-silent chunks are drawn. Here the chunk grid starts at a random phase, and the level is
  ``10 log10(mean 10^(dB/10) over the chunk / the same over the track)`` (a power ratio). Deezer
  compares ``10 log10`` of an *RMS* ratio to -7.5, i.e. -15 dB of power; ``silence_db=-15``
  reproduces that literally, the default -7.5 applies the threshold to power.
  Short tracks fall back gracefully: under two segments long, two random (overlapping) crops; under
  one segment, the zero-padded track twice.
* Objective: NT-Xent (``mirkit.objectives.contrastive.nt_xent``, temperature 0.1) on class token 1
  through an MLP projection head. The ViT-1D head is unknown; the head follows the benchmark's
  ResNet head (Linear without bias -> BatchNorm1d -> ReLU per hidden layer, plain Linear last).
* Input normalisation: CoJEPA describes the ViT-1D input as a "normalised mel"; :meth:`prepare`
  estimates a global mean/std of the stored dB values (unless given) and the encoder keeps them as
  buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mirkit.limits import MAX_FRAMES
from mirkit.models.registry import sizes_of
from mirkit.models.vit1d import ViT1D
from mirkit.objectives.contrastive import nt_xent
from mirkit.params import ParamsError, param
from mirkit.recipes.base import CropSource, Example, Preset, PretrainModel, Recipe, Sources

#: backbone sizes (width, depth, heads) from the one size table; the recipe adds bins, length, class tokens
VIT1D_SIZES = {name: dict(size.args) for name, size in sizes_of("vit1d").items()}

MEL_BINS = 128
SEGMENT_FRAMES = 126  # 4 s at 16 kHz, hop 512

#: projection-head widths per backbone size (Deezer's ResNet benchmark head for the paper size)
DEFAULT_PROJ_DIMS = {"vit1d-tiny": [1024, 1024, 2048], "vit1d-mini": [256, 128], "vit1d-micro": [128, 64]}


# --- views -----------------------------------------------------------------------------------
def db_power(frames: np.ndarray) -> np.ndarray:
    """Per-frame mean power ``mean_bins 10^(dB/10)`` of ``(frames, bins)`` dB values."""
    return np.power(10.0, frames.astype(np.float64) / 10.0).mean(axis=1)


def pick_two_segments(frame_power: np.ndarray, seg: int, rng: np.random.Generator,
                      silence_db: float = -7.5) -> tuple[int, int]:
    """Start frames of two different non-silent ``seg``-long segments of a track.

    ``frame_power``: ``(n_frames,)`` linear power per frame. The track is cut into chunks on a
    grid with a random phase; a chunk is silent when ``10 log10(chunk power / track power)`` is
    ``<= silence_db``. Two distinct non-silent chunks are drawn; with fewer than two, the loudest
    chunks fill in. Tracks shorter than ``2 * seg`` get two random crops (overlap allowed).
    """
    n = len(frame_power)
    if n <= seg:
        return 0, 0
    if n < 2 * seg:
        a, b = rng.integers(0, n - seg + 1, size=2)
        return int(a), int(b)
    phase = int(rng.integers(0, min(seg, n - 2 * seg + 1)))  # keeps at least two chunks
    starts = np.arange(phase, n - seg + 1, seg)
    seg_power = np.array([frame_power[s:s + seg].mean() for s in starts])
    track_power = max(float(frame_power.mean()), 1e-30)
    level_db = 10 * np.log10(np.maximum(seg_power, 1e-30) / track_power)
    loud = np.flatnonzero(level_db > silence_db)
    if len(loud) >= 2:
        i, j = rng.choice(loud, size=2, replace=False)
    else:
        i, j = np.argsort(-seg_power, kind="stable")[:2]
    return int(starts[i]), int(starts[j])


def take_view(frames: np.ndarray, start: int, length: int) -> np.ndarray:
    """``(bins, length)`` float32 crop of ``(n_frames, bins)`` frames (the encoder's layout),
    zero-padded past the track's end like ``CropSource.read``."""
    crop = np.zeros((length, frames.shape[1]), dtype=np.float32)
    part = frames[start:start + length]
    crop[: len(part)] = part
    return np.ascontiguousarray(crop.T)


# --- model -----------------------------------------------------------------------------------
class ProjectionHead(nn.Sequential):
    """MLP head: (Linear without bias -> BatchNorm1d -> ReLU) per hidden width, then a Linear."""

    def __init__(self, in_dim: int, dims: list[int]):
        layers: list[nn.Module] = []
        for width in dims[:-1]:
            layers += [nn.Linear(in_dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            in_dim = width
        layers.append(nn.Linear(in_dim, dims[-1]))
        super().__init__(*layers)


class ContrastiveModel(PretrainModel):
    """ViT-1D + projection head; NT-Xent between the class tokens of two views."""

    def __init__(self, encoder: ViT1D, head: nn.Module, temperature: float):
        super().__init__()
        self.encoder, self.head, self.temperature = encoder, head, temperature

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = batch["view1"].shape[0]
        out = self.encoder.encode(torch.cat([batch["view1"], batch["view2"]]), layers=(-1,))
        p = self.head(out.cls_tokens(-1)[:, 0])
        loss = nt_xent(p[:b], p[b:], self.temperature)
        return {"loss": loss, "ntxent": loss.detach()}


# --- recipe ----------------------------------------------------------------------------------
def check_proj_dims(dims: list[int] | None, key: str = "proj_dims") -> None:
    if dims is not None and (not dims or any(d < 1 for d in dims)):
        raise ParamsError(f"{key}={dims!r}: expected a non-empty list of positive widths")


@dataclass
class ContrastiveParams:
    preset: str = param("vit1d-tiny", choices=tuple(VIT1D_SIZES), help="backbone size")
    segment_frames: int = param(SEGMENT_FRAMES, ge=8, le=MAX_FRAMES, help="frames per view (126 = 4 s at 16 kHz, hop 512)")
    temperature: float = param(0.1, gt=0, help="NT-Xent temperature")
    silence_db: float = param(-7.5, le=0, help="segments this many dB (power) below the track are silent")
    proj_dims: list[int] | None = param(None, help="projection head widths (default: per preset)")
    input_mean: float | None = param(None, help="input normalisation mean (estimated by prepare when unset)")
    input_std: float | None = param(None, gt=0, help="input normalisation std (estimated by prepare when unset)")

    def check(self) -> None:
        check_proj_dims(self.proj_dims)


def _presets(n_bins: int, max_len: int, n_cls: int, what: str) -> dict[str, Preset]:
    out = {}
    for name, size in VIT1D_SIZES.items():
        desc = (f"ViT-1D {size['width']}/{size['depth']}/{size['heads']} ({what})"
                + (", CPU-sized" if name != "vit1d-tiny" else ", the papers' ViT-Tiny (~5.4 M)"))
        out[name] = Preset.of(name, description=desc, in_bins=n_bins, max_len=max_len, n_cls=n_cls)
    return out


def estimate_input_stats(source: CropSource, length: int, n_tracks: int = 32, seed: int = 0) -> tuple[float, float]:
    """Global mean/std of stored values over one random crop of up to ``n_tracks`` tracks."""
    rng = np.random.default_rng(seed)
    tracks = rng.permutation(len(source))[:n_tracks]
    crops = []
    for t in tracks:
        n = source.n_frames(int(t))
        start = int(rng.integers(0, max(n - length, 0) + 1))
        crops.append(source.read(int(t), start, min(length, max(n, 1))).astype(np.float64))
    values = np.concatenate([c.ravel() for c in crops]) if crops else np.zeros(1)
    return float(values.mean()), float(max(values.std(), 1e-6))


class ContrastiveRecipe(Recipe):
    name = "contrastive"
    paper = "Kong et al., Emergent musical properties of a transformer under contrastive SSL (ISMIR 2025)"
    Params = ContrastiveParams
    presets = _presets(MEL_BINS, SEGMENT_FRAMES, 1, "1 class token, mel 128")
    feature_set = "mel16k-db"
    crop_param = "segment_frames"

    def prepare(self, sources: Sources) -> None:
        n_bins = sources.features.n_bins
        if n_bins != MEL_BINS:
            raise ParamsError(f"feature set '{self.feature_set}' has {n_bins} bins; the contrastive recipe expects {MEL_BINS}")
        if self.params.input_mean is None or self.params.input_std is None:
            mean, std = estimate_input_stats(sources.features, self.params.segment_frames)
            self.params.input_mean = mean if self.params.input_mean is None else self.params.input_mean
            self.params.input_std = std if self.params.input_std is None else self.params.input_std

    def sample(self, sources: Sources, track: int, rng: np.random.Generator) -> Example:
        seg = self.params.segment_frames
        frames = sources.features.read(track)   # whole track: the silence rule needs its level
        s1, s2 = pick_two_segments(db_power(frames), seg, rng, self.params.silence_db)
        return {"view1": take_view(frames, s1, seg), "view2": take_view(frames, s2, seg)}

    def build_encoder(self) -> ViT1D:
        p = self.params
        model = {**self.preset().model, "max_len": p.segment_frames,
                 "input_mean": p.input_mean if p.input_mean is not None else 0.0,
                 "input_std": p.input_std if p.input_std is not None else 1.0}
        return ViT1D(**model)

    def build_model(self) -> ContrastiveModel:
        encoder = self.build_encoder()
        dims = self.params.proj_dims or DEFAULT_PROJ_DIMS[self.params.preset]
        return ContrastiveModel(encoder, ProjectionHead(encoder.dim, dims), self.params.temperature)


RECIPE = ContrastiveRecipe
