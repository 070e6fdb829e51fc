"""MuSE-LQ (Vavaroutsos, Palamas, Vikatos; SAC 2026): Branchformer/Conformer with MHSA or
SummaryMixing, trained to predict random-projection-quantizer tokens and the mel of masked steps.

Paper facts: 24 kHz mel, n_fft 2048, hop 240, 128 bins (feature set ``mel24k``), 4 frames stacked
-> 25 Hz; codebook 8192 x dim 16 (tokens come from ``mirkit tokens``); 400 ms blocks masked with
probability 0.2; loss CE + MSE on masked steps; 30 s crops (3000 frames); Table 2 layers/widths.
The code is not public. Where the paper is silent we follow MusicFM (front end, global mean/std,
per-block masking, noise 0.1) and SpeechBrain/SummaryMixing recipe sizes; each choice is a
parameter.

Preset sizes. Paper rows give only layers and width; the unspecified sizes are chosen uniformly so
every count lands within 5 % (build on the ``meta`` device, count numel; heads included):
conv_dim 512 (MusicFM), cgMLP/FFN units 4096 (= 4 x 1024; kept for the 768-wide rows too), one
codebook of 8192, 16 heads at d=1024, 12 at d=768 (heads hold no params). SummaryMixing uses the
defaults of SamsungLabs/SummaryMixing's ``Branchformer.py``/``Conformer.py`` (local f: d->512->512,
summary s: d->1024->1024, or d->1024->d in a Conformer) split into as many groups as the MHSA rows
have heads (their recipes pass one ``nhead`` to either attention type), and its layouts: combiner
to ``summary_out``, Branchformer merge ``Linear(summary_out + d -> 1024) -> GELU -> Linear(1024 -> d)
-> GELU``. Per-block weights (biases omitted), d = width, U = 4096, g = 16:

* front end 27*512^2 + 16384*d; heads d*8192 + d*512
* Conformer: 2 FFN 4dU + MHSA 4d^2 + conv module 3d^2 (+31d)
  | SummaryMixing (d*512 + 512^2)/g + 2*1024d/g + (512 + d)*d
* Branchformer: MHSA 4d^2 + cgMLP 1.5dU + merge 2d^2
  | SummaryMixing (d*512 + 512^2)/g + (1024d + 1024^2)/g + 1536*1024 + merge (1024 + d)*1024 + 1024d

giving (whole model / encoder only) cnf-att-95m 95.8M / 89.1M (+0.8 %), cnf-att-330m 325.3M / 316.4M
(-1.4 %), cnf-sum-302m 296.0M / 287.1M (-2.0 %), brn-att-60m 62.1M / 55.4M (+3.5 %), brn-att-187m
187.2M / 178.2M (+0.1 %), brn-sum-164m 170.5M / 161.5M (+3.9 %). SummaryMixing saves 9.0 %
(Conformer) and 8.9 % (Branchformer) of the whole model here; the paper reports 8.5 % and 12.3 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mirkit.data.store import StoreError
from mirkit.limits import MAX_CODEBOOKS, MAX_CODES, MAX_FRAMES
from mirkit.models.muse import BLOCKS, MIXERS, STACK, MuseEncoder
from mirkit.models.registry import sizes_of
from mirkit.objectives.masked_prediction import block_mask, mask_frames, masked_prediction_loss, stack_frames
from mirkit.params import ParamsError, param
from mirkit.recipes.base import Example, Preset, PretrainModel, Recipe, Sources

#: token vocabulary of the paper (Table 2 rows); the sizes live in ``mirkit.models.registry``
CODEBOOK_SIZE = 8192

PRESETS: dict[str, Preset] = {name: Preset.of(name, codebook_size=CODEBOOK_SIZE) for name in sizes_of("muse")}


@dataclass
class MuseLQParams:
    preset: str = param("brn-sum-tiny", choices=PRESETS, help="model size (Table 2 rows or CPU-sized)")
    block: str | None = param(None, choices=BLOCKS, help="override the preset's block type")
    attention: str | None = param(None, choices=MIXERS, help="override the preset's global branch")
    crop_frames: int = param(400, gt=0, le=MAX_FRAMES, help="training crop at 100 Hz (paper: 3000 = 30 s); multiple of mask_block_frames")
    mask_prob: float = param(0.2, ge=0.0, le=1.0, help="probability of masking each block (paper 0.2, MusicFM semantics)")
    mask_block_frames: int = param(40, gt=0, help="mask block length in mel frames (400 ms; multiple of stack)")
    noise_std: float = param(0.1, ge=0.0, help="std of the noise replacing masked normalised frames (BEST-RQ/MusicFM)")
    ce_weight: float = param(1.0, ge=0.0, help="weight of the token cross-entropy")
    mse_weight: float = param(1.0, ge=0.0, help="weight of the mel reconstruction MSE")
    mean: float | None = param(None, help="global mel mean (copied from the token store by prepare)")
    std: float | None = param(None, gt=0.0, help="global mel std (copied from the token store by prepare)")
    codebook_size: int | None = param(None, gt=1, le=MAX_CODES, help="token vocabulary (copied from the token store)")
    num_codebooks: int | None = param(None, gt=0, le=MAX_CODEBOOKS, help="codebooks per step (copied from the token store)")
    stack: int = param(STACK, choices=(STACK,), help="mel frames per token (the front end subsamples by 4)")

    def check(self) -> None:
        if self.mask_block_frames % self.stack:
            raise ParamsError(f"mask_block_frames={self.mask_block_frames}: must be a multiple of stack={self.stack}")
        if self.crop_frames % self.mask_block_frames:
            raise ParamsError(f"crop_frames={self.crop_frames}: must be a multiple of mask_block_frames={self.mask_block_frames}")


class MuseLQModel(PretrainModel):
    """Encoder + one token head per codebook + a stacked-mel reconstruction head."""

    encoder: MuseEncoder

    def __init__(self, encoder: MuseEncoder, codebook_size: int, num_codebooks: int, mask_prob: float,
                 mask_block_frames: int, noise_std: float, ce_weight: float, mse_weight: float):
        super().__init__()
        self.encoder = encoder
        self.token_heads = nn.ModuleList(nn.Linear(encoder.dim, codebook_size) for _ in range(num_codebooks))
        self.mel_head = nn.Linear(encoder.dim, STACK * encoder.n_mels)
        self.mask_prob, self.block_tokens, self.noise_std = mask_prob, mask_block_frames // STACK, noise_std
        self.ce_weight, self.mse_weight = ce_weight, mse_weight

    def predict(self, x_input: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Token logits ``(b, steps, codebooks, size)`` and stacked-mel predictions ``(b, steps, 4*bins)``
        from an already normalised (and masked) input ``(b, bins, frames)``."""
        h = self.encoder.encode_normalised(x_input, (-1,), padding_mask=padding_mask).hidden[-1]
        return torch.stack([head(h) for head in self.token_heads], dim=2), self.mel_head(h)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.encoder.normalise(batch["mel"].float())
        tokens = batch["tokens"]
        steps = x.shape[-1] // STACK
        if tokens.shape[1] != steps:
            raise StoreError(f"tokens cover {tokens.shape[1]} steps but the mel crop gives {steps} (token store and features disagree)")
        valid = batch.get("valid")
        valid = torch.ones(x.shape[0], steps, dtype=torch.bool, device=x.device) if valid is None else valid.bool()
        mask = block_mask(valid, self.block_tokens, self.mask_prob)
        logits, mel_pred = self.predict(mask_frames(x, mask, STACK, self.noise_std),
                                        None if bool(valid.all()) else ~valid)
        return masked_prediction_loss(logits, tokens, mel_pred, stack_frames(x, STACK), mask,
                                      self.ce_weight, self.mse_weight)


class MuseLQRecipe(Recipe):
    name = "muse-lq"
    paper = "Vavaroutsos et al., Linear Complexity Self-Supervised Learning for Music Understanding with Random Quantizer (SAC 2026)"
    Params = MuseLQParams
    presets = PRESETS
    needs_tokens = True
    feature_set = "mel24k"

    def prepare(self, sources: Sources) -> None:
        """Copy the token store's normalisation stats and codebook shape into the params."""
        if sources.tokens is None:
            raise ParamsError("pretrain.tokens: muse-lq needs a token store (run `mirkit tokens` first)")
        attrs = sources.tokens.attrs
        missing = [k for k in ("mean", "std", "codebook_size", "num_codebooks") if k not in attrs]
        if missing:
            raise StoreError(f"token store attrs lack {', '.join(missing)}")
        stack = int(attrs.get("stack", STACK))
        if stack != STACK:
            raise StoreError(f"token store stack={stack}, but the muse-lq front end subsamples by {STACK}")
        n_mels = self.model_kwargs()["n_mels"]
        if sources.features.n_bins != n_mels:
            raise StoreError(f"features have {sources.features.n_bins} bins, muse-lq expects {n_mels}")
        p = self.params
        p.mean, p.std = float(attrs["mean"]), float(attrs["std"])
        p.codebook_size, p.num_codebooks, p.stack = int(attrs["codebook_size"]), int(attrs["num_codebooks"]), stack

    def sample(self, sources: Sources, track: int, rng: np.random.Generator) -> Example:
        """A crop aligned to a 4-frame step plus its tokens; ``valid`` marks steps inside the track."""
        if sources.tokens is None:
            raise ParamsError("pretrain.tokens: muse-lq needs a token store (run `mirkit tokens` first)")
        stack, crop = self.params.stack, self.params.crop_frames
        steps = crop // stack
        available = min(sources.features.n_frames(track) // stack, sources.tokens.n_frames(track))
        start = int(rng.integers(0, max(0, available - steps) + 1))
        mel = sources.features.read(track, start * stack, crop).astype(np.float32).T
        tokens = sources.tokens.read(track, start, steps).astype(np.int64)
        valid = np.arange(steps) < available - start
        return {"mel": np.ascontiguousarray(mel), "tokens": tokens, "valid": valid}

    def model_kwargs(self) -> dict[str, Any]:
        """Encoder constructor arguments: the preset, the block/attention overrides and the stats."""
        kw = dict(self.preset().model)
        kw.pop("codebook_size")
        p = self.params
        kw["block"] = p.block or kw["block"]
        kw["attention"] = p.attention or kw["attention"]
        kw["mean"] = 0.0 if p.mean is None else p.mean
        kw["std"] = 1.0 if p.std is None else p.std
        kw.setdefault("n_mels", 128)
        return kw

    def build_model(self) -> MuseLQModel:
        p = self.params
        return MuseLQModel(MuseEncoder(**self.model_kwargs()),
                           codebook_size=p.codebook_size or self.preset().model["codebook_size"],
                           num_codebooks=p.num_codebooks or 1, mask_prob=p.mask_prob,
                           mask_block_frames=p.mask_block_frames, noise_std=p.noise_std,
                           ce_weight=p.ce_weight, mse_weight=p.mse_weight)


RECIPE = MuseLQRecipe
