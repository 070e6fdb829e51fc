"""Masked prediction of random-projection-quantizer tokens plus mel reconstruction (MuSE-LQ §3.4-3.5).

Masking follows MusicFM's per-block semantics (not BEST-RQ's span-start probability): the crop is
cut into non-overlapping blocks of ``block_tokens`` 25 Hz steps (400 ms = 10 steps = 40 mel
frames) and each block is masked independently with probability ``prob``, so about ``prob`` of
the steps are masked. Masked *input* frames are replaced by ``N(0, noise_std^2)`` noise in the
normalised domain (BEST-RQ / MusicFM value 0.1). Difference from the papers: MusicFM and MuSE-LQ
mask the waveform before computing the mel; mirkit masks the stored (normalised) mel frames,
because pretraining reads precomputed features. Targets (tokens, clean stacked mel) are unchanged.

Loss = ``ce_weight * CE(tokens) + mse_weight * MSE(stacked normalised mel)``, both on masked
positions only (MuSE-LQ: "we only calculate the loss for the masked tokens").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def block_mask(valid: Tensor, block_tokens: int, prob: float) -> Tensor:
    """``(batch, steps)`` bool mask: whole blocks of ``block_tokens`` steps, each drawn with ``prob``.

    ``valid`` ``(batch, steps)`` is True at real (non-padded) steps; padded steps are never masked.
    At least one block holding a valid step is masked per batch so the loss is defined. Uses the
    torch global RNG (the training engine seeds it).
    """
    batch, steps = valid.shape
    n_blocks = -(-steps // block_tokens)
    drawn = torch.rand(batch, n_blocks, device=valid.device) < prob
    mask = drawn.repeat_interleave(block_tokens, dim=1)[:, :steps] & valid
    if not bool(mask.any()):
        candidates = valid.flatten().nonzero().squeeze(1)
        if candidates.numel() == 0:
            raise ValueError("block_mask: the batch has no valid step to mask")
        pick = int(candidates[torch.randint(candidates.numel(), (1,), device=valid.device)])
        row, step = divmod(pick, steps)
        start = step // block_tokens * block_tokens
        mask[row, start:start + block_tokens] = valid[row, start:start + block_tokens]
    return mask


def mask_frames(x_norm: Tensor, mask: Tensor, stack: int, noise_std: float) -> Tensor:
    """Replace the ``stack`` input frames of every masked step of ``(batch, bins, frames)`` by noise."""
    frames = x_norm.shape[-1]
    frame_mask = mask.repeat_interleave(stack, dim=1)
    if frame_mask.shape[1] < frames:   # trailing frames beyond the last full step stay as they are
        frame_mask = F.pad(frame_mask, (0, frames - frame_mask.shape[1]))
    frame_mask = frame_mask[:, None, :frames]
    return torch.where(frame_mask, torch.randn_like(x_norm) * noise_std, x_norm)


def stack_frames(x: Tensor, stack: int) -> Tensor:
    """``(batch, bins, frames)`` -> ``(batch, frames // stack, stack * bins)``, frame-major
    (``[frame0 bins, frame1 bins, ...]``, MusicFM's ``b f (t s) -> b t (s f)``)."""
    b, bins, frames = x.shape
    steps = frames // stack
    return x[..., :steps * stack].reshape(b, bins, steps, stack).permute(0, 2, 3, 1).reshape(b, steps, stack * bins)


def masked_prediction_loss(logits: Tensor, tokens: Tensor, mel_pred: Tensor, mel_target: Tensor,
                           mask: Tensor, ce_weight: float = 1.0, mse_weight: float = 1.0) -> dict[str, Tensor]:
    """Weighted CE + MSE over masked steps.

    logits ``(batch, steps, codebooks, codebook_size)``; tokens ``(batch, steps, codebooks)``;
    mel_pred/mel_target ``(batch, steps, stack * bins)``; mask ``(batch, steps)`` bool.
    CE is averaged over masked steps and codebooks, MSE over masked steps and mel values.
    """
    if not bool(mask.any()):
        raise ValueError("masked_prediction_loss: nothing is masked")
    sel_logits = logits[mask].float()                        # (n, codebooks, size)
    sel_tokens = tokens[mask].long()                         # (n, codebooks)
    loss_ce = F.cross_entropy(sel_logits.flatten(0, 1), sel_tokens.flatten())
    loss_mse = F.mse_loss(mel_pred[mask].float(), mel_target[mask].float())
    with torch.no_grad():
        acc = (sel_logits.argmax(dim=-1) == sel_tokens).float().mean()
        masked_frac = mask.float().mean()
    return {"loss": ce_weight * loss_ce + mse_weight * loss_mse, "loss_ce": loss_ce.detach(),
            "loss_mse": loss_mse.detach(), "masked_frac": masked_frac, "acc": acc}
