"""NT-Xent (SimCLR) with negatives spanning the global batch under DDP.

Used by Myna (a stand-in for its SogCLR loss, temperature 0.1), by the Emergent ViT-1D and by
MT2's second class token (Deezer's NT-Xent: cosine similarity, temperature 0.1, the positive
included in the denominator).
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


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric NT-Xent between two views ``(batch, dim)``; row i of each view is a positive pair.

    Every anchor (both views, this rank) is scored against all 2N embeddings of the global batch
    but itself. Under DDP each rank returns the mean over its own anchors; DDP's gradient
    averaging then equals the gradient of the single-process loss over the global batch.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two (batch, dim) views of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1 = F.normalize(z1.float(), dim=-1)
    z2 = F.normalize(z2.float(), dim=-1)
    g1, offset = gather_with_grad(z1)
    g2, _ = gather_with_grad(z2)
    b, n = z1.shape[0], g1.shape[0]
    anchors = torch.cat([z1, z2], dim=0)                       # (2b, d)
    candidates = torch.cat([g1, g2], dim=0)                    # (2n, d)
    logits = anchors @ candidates.t() / temperature            # (2b, 2n)
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + n])
    positive = torch.cat([local + n, local])
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_idx] = float("-inf")
    return F.cross_entropy(logits, positive)
