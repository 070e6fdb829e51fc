"""NT-Xent (SimCLR) and decoupled InfoNCE with negatives spanning the global batch under DDP.

NT-Xent is the Emergent ViT-1D's loss and MT2's second class token's (Deezer's NT-Xent: cosine
similarity, temperature 0.1, the positive included in the denominator); both are options of Myna,
whose default is SogCLR (:mod:`mirkit.objectives.sogclr`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """All ranks' rows of ``x`` concatenated (gradients flow back to every rank), and the
    offset of this rank's rows in the result. A no-op outside ``torch.distributed``."""
    rank, world = _world()
    if world == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather
    parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0), rank * x.shape[0]


def pair_similarities(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine similarities of this rank's anchors with every embedding of the global batch.

    ``z1``, ``z2``: two views ``(b, dim)``; row i of each is a positive pair. Returns ``sims``
    ``(2b, 2n)`` (anchors: this rank's view-1 rows then view-2 rows; candidates: the global batch's
    view-1 rows then view-2 rows, gathered with gradients), and for each anchor the column of
    itself and of its positive. Computed in fp32 even under autocast.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"contrastive losses expect two (batch, dim) views of equal shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    with torch.autocast(z1.device.type, enabled=False):
        z1 = F.normalize(z1.float(), dim=-1)
        z2 = F.normalize(z2.float(), dim=-1)
        g1, offset = gather_with_grad(z1)
        g2, _ = gather_with_grad(z2)
        b, n = z1.shape[0], g1.shape[0]
        sims = torch.cat([z1, z2]) @ torch.cat([g1, g2]).t()          # (2b, 2n)
    local = torch.arange(b, device=z1.device) + offset
    return sims, torch.cat([local, local + n]), torch.cat([local + n, local])


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric NT-Xent between two views ``(batch, dim)``; row i of each view is a positive pair.

    Every anchor (both views, this rank) is scored against all 2N embeddings of the global batch
    but itself. Under DDP each rank returns the mean over its own anchors; DDP's gradient
    averaging then equals the gradient of the single-process loss over the global batch.
    """
    sims, self_idx, positive = pair_similarities(z1, z2)
    logits = sims / temperature
    logits[torch.arange(len(logits), device=logits.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, positive)


def decoupled_infonce(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """Decoupled InfoNCE (Yeh et al., "Decoupled contrastive learning", 2022): NT-Xent with the
    positive removed from the denominator. Per anchor ``-s_pos/tau + log sum_neg exp(s/tau)`` over
    its 2N - 2 negatives (the other pairs' two views), averaged over the 2N anchors like ``nt_xent``.
    """
    sims, self_idx, positive = pair_similarities(z1, z2)
    rows = torch.arange(len(sims), device=sims.device)
    logits = sims / temperature
    negatives = logits.clone()
    negatives[rows, self_idx] = float("-inf")
    negatives[rows, positive] = float("-inf")
    return (torch.logsumexp(negatives, dim=1) - logits[rows, positive]).mean()
