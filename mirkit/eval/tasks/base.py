"""The task base class (targets, loss, scores, closed-form output gradients) and batched primary metrics
(accuracy, macro ROC-AUC, R²) that score G probe configurations at once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mirkit.eval.tasks.specs import TaskSpec, _missing


# --------------------------------------------------------------------------- task objects
class Task:
    """Base class: ``fit`` learns the label vocabulary from all labelled tracks (no features involved)."""

    level = "track"
    primary = ""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec, self.name = spec, spec.name
        self.n_outputs = 0

    def fit(self, tracks: Sequence[dict]) -> None:
        pass

    def keep(self, track: dict) -> bool:
        """Whether a track has a usable label."""
        return not any(_missing(track.get(c)) for c in self.spec.label)

    def targets(self, tracks: Sequence[dict]) -> np.ndarray:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over everything but the last dim of ``outputs`` ((..., n_outputs))."""
        raise NotImplementedError

    def score(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def primary_scores(self, outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
        """The primary metric of each of G output sets ``(G, rows, n_outputs)`` (what early stopping
        and model selection read); subclasses compute it for all G at once."""
        return np.array([self.score(np.asarray(o), targets)[self.primary] for o in outputs])

    def output_grad(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Gradient of the sum over G configurations of each one's mean loss, with respect to their
        outputs ``(G, rows, n_outputs)``; ``targets`` are shared by the G configurations. Closed form
        in the subclasses; autograd through :meth:`loss` here."""
        with torch.enable_grad():
            out = outputs.detach().requires_grad_(True)
            (self.loss(out, targets.unsqueeze(0).expand(len(out), *targets.shape)) * len(out)).backward()
        assert out.grad is not None
        return out.grad

    def losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of each of G output sets ``(G, rows, n_outputs)``: ``(G,)``."""
        return torch.stack([self.loss(o, targets) for o in outputs])


def batch_accuracy(outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Accuracy of the argmax of each of G output sets ``(G, rows, C)``."""
    out = torch.as_tensor(outputs)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.int64, device=out.device)
    return (out.argmax(-1) == y).double().mean(-1).cpu().numpy()


def batch_r2(outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Mean over outputs of scikit-learn's ``r2_score`` (raw values), for G output sets at once."""
    out = torch.as_tensor(outputs).double()
    y = torch.as_tensor(np.asarray(targets), dtype=torch.float64, device=out.device).reshape(out.shape[1], -1)
    ss_res = (out - y).pow(2).sum(1)
    ss_tot = (y - y.mean(0)).pow(2).sum(0)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300),
                     torch.where(ss_res == 0, 1.0, 0.0).double())
    return r2.mean(-1).cpu().numpy()


def batch_macro_auc(outputs: np.ndarray | torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Macro ROC-AUC over the columns with both positives and negatives (ties count one half, as in
    scikit-learn's ``roc_auc_score``) for G output sets ``(G, rows, C)``: Mann-Whitney U from ranks.
    NaN when no column has both classes."""
    from scipy.stats import rankdata
    s = np.asarray(torch.as_tensor(outputs).double().cpu())
    y = np.asarray(targets, dtype=np.float64)
    pos = y.sum(0)
    ok = (pos > 0) & (pos < len(y))
    if not ok.any():
        return np.full(s.shape[0], np.nan)
    s, y, p = s[..., ok], y[:, ok], pos[ok]
    u = (rankdata(s, axis=1) * y).sum(1) - p * (p + 1) / 2
    return (u / (p * (len(y) - p))).mean(-1)


def _softmax_grad(outputs: torch.Tensor, targets: torch.Tensor, ignore: int | None = None) -> torch.Tensor:
    """d/d(outputs) of the mean cross-entropy of each configuration (rows with ``ignore`` excluded)."""
    g = torch.softmax(outputs, -1)
    y = targets.reshape(-1)
    if ignore is not None:
        valid = y != ignore
        g = g * valid.view(1, -1, 1)
        y = torch.where(valid, y, 0)
        count = int(valid.sum().clamp_min(1))
    else:
        valid, count = None, len(y)
    rows = torch.arange(len(y), device=g.device)
    sub = torch.ones(len(y), dtype=g.dtype, device=g.device) if valid is None else valid.to(g.dtype)
    g[:, rows, y] -= sub
    return g / count
