"""SogCLR: the global contrastive loss Myna trains with (Yuan et al., "Provable stochastic
optimization for global contrastive learning", ICML 2022; LibAUC ``GCLoss_v1`` as called by
ghost-signal/myna ``utils.get_criterion``: tau 0.1, gamma 0.9, eps 1e-8, constant gamma schedule).

Written from the algorithm. For anchor ``a`` (either view of dataset item ``i``) with cosine
similarities ``s_aj`` to its 2N - 2 negatives (the other items' two views; N = global batch) and
``s_a+`` to its positive:

    g_a   = 1/(2N-2) * sum_j exp(s_aj / tau)                     # this batch's estimate
    u_a   = (1 - gamma) * u[i] + gamma * g_a   (u_a = g_a the first time item i is seen)
    w_aj  = exp(s_aj / tau) / max(u_a, eps)                       # constants (no gradient)
    L_a   = -s_a+ + 1/(2N-2) * sum_j w_aj * s_aj
    loss  = mean over items of (L_view1 + L_view2)
    u[i] <- (u_view1 + u_view2) / 2

``u`` estimates each item's mean exponentiated negative similarity across steps, so the gradient
``-grad s_a+ + sum_j (exp(s_aj/tau) / ((2N-2) u_a)) grad s_aj`` follows the *global* objective
``tau * log mean_j exp((s_aj - s_a+)/tau)`` rather than the mini-batch one. At the first visit
``u_a = g_a``, and the gradient is exactly ``2 tau`` times that of decoupled InfoNCE averaged over
the 2N anchors (the loss is a sum over two views, InfoNCE's a mean over them, and InfoNCE divides
similarities by tau). The reported loss is this surrogate, as in LibAUC.

``u`` is a buffer indexed by dataset item (``batch["index"]``), so it is saved with the model's
state and a resumed run continues exactly. Under DDP each rank scores its own anchors against
the gathered global batch, then all ranks gather (index, u) and apply the same update, so their
buffers stay identical. Two occurrences of one item in a step are averaged. The state is only
updated in training mode; in eval mode ``u_a = g_a`` and no index is needed.

First visits, against LibAUC: mirkit decides per item (``u[i] == 0`` -> ``u = g``); LibAUC per batch
(``u[batch].sum() == 0`` while its epoch-0 flag is set), so under Myna's ``drop_last`` loader an item
first drawn after epoch 0 starts at ``gamma * g`` (0.9 g). mirkit's loader (``mirkit.train.loop``: a
permutation per epoch addressed by a global example counter, batches crossing epochs, nothing dropped)
draws every item inside epoch 0, where both rules give ``u = g``, so that case cannot arise and the
states agree (``tests/test_sogclr.py`` replays LibAUC's rule on the loader's draws).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mirkit.objectives.contrastive import _world, pair_similarities


def _gather(x: Tensor) -> Tensor:
    """All ranks' rows of ``x`` (no gradient), in rank order; ``x`` itself outside DDP."""
    _, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class SogCLR(nn.Module):
    """SogCLR loss with its per-item moving average ``u`` (a buffer of ``n_items`` values)."""

    u: Tensor

    def __init__(self, n_items: int, temperature: float = 0.1, gamma: float = 0.9, eps: float = 1e-8):
        super().__init__()
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"SogCLR gamma must be in (0, 1], got {gamma}")
        self.temperature, self.gamma, self.eps = temperature, gamma, eps
        self.register_buffer("u", torch.zeros(n_items))

    def forward(self, z1: Tensor, z2: Tensor, index: Tensor | None) -> Tensor:
        """The loss of one batch; in training mode also the state update (``index`` is then required)."""
        items = self._checked(index, len(z1)) if self.training else None
        sims, self_idx, positive = pair_similarities(z1, z2)
        rows = torch.arange(len(sims), device=sims.device)
        n_neg = sims.shape[1] - 2
        negative = torch.ones_like(sims, dtype=torch.bool)
        negative[rows, self_idx] = False
        negative[rows, positive] = False
        with torch.no_grad():
            e = torch.exp(sims / self.temperature).masked_fill(~negative, 0.0)
            u = e.sum(dim=1) / n_neg                                      # this batch's estimate g_a
            if items is not None:
                old = self.u[torch.cat([items, items])].to(u.dtype)
                u = torch.where(old > 0, (1 - self.gamma) * old + self.gamma * u, u)
            weights = e / u.clamp_min(self.eps)[:, None]
        per_anchor = -sims[rows, positive] + (weights * sims).sum(dim=1) / n_neg
        b = len(z1)
        if items is not None:
            self._store(items, (u[:b] + u[b:]) / 2)
        return (per_anchor[:b] + per_anchor[b:]).mean()

    def _checked(self, index: Tensor | None, batch: int) -> Tensor:
        if index is None:
            raise ValueError("SogCLR needs the dataset index of every example (batch['index'])")
        index = index.reshape(-1).long()
        if len(index) != batch or (batch and not 0 <= int(index.min()) <= int(index.max()) < len(self.u)):
            raise ValueError(f"SogCLR: batch indices must be {batch} values in 0..{len(self.u) - 1} "
                             f"(n_items={len(self.u)}), got {index.tolist()[:8]}")
        return index

    @torch.no_grad()
    def _store(self, index: Tensor, values: Tensor) -> None:
        """``u[index] = values`` with every rank's rows; repeated items get the mean of their values."""
        index, values = _gather(index), _gather(values.float())
        items, slot = torch.unique(index, return_inverse=True)
        sums = torch.zeros(len(items), dtype=torch.float64, device=values.device).index_add_(0, slot, values.double())
        counts = torch.zeros(len(items), dtype=torch.float64, device=values.device).index_add_(
            0, slot, torch.ones_like(values, dtype=torch.float64))
        self.u[items] = (sums / counts).to(self.u.dtype)
