"""The ``linear`` probe protocol: standardised features, L2-regularised linear models solved full-batch.

For every strength ``lam`` of a small grid the objective is the mean training loss plus
``lam / 2 * ||W||^2`` (the intercept is not penalised), on features standardised with the TRAIN rows'
mean and standard deviation (scikit-learn's ``StandardScaler``):

- ``softmax``: multinomial logistic regression (multiclass, key, chords; targets may be soft);
  ``LogisticRegression(C=1 / (n * lam))`` in scikit-learn's terms;
- ``logistic``: one independent logistic regression per output (multilabel tags, beat frames, soft
  targets allowed); ``LogisticRegression`` per column;
- ``ridge``: least squares, closed form; ``Ridge(alpha=n * lam)``.

One eigendecomposition of the training Gram matrix serves the whole grid: ridge is solved in
closed form for every strength from it, and the logistic objectives are minimised by an L-BFGS
(float64) whose initial inverse Hessian is the ridge inverse ``(c * X'X / n + lam)^-1`` from the same
eigenvectors, so a few dozen iterations reach a gradient of ``tol``. All strengths are optimised
together in one batch (shared matrix products, a line search per strength), and the strength is then
chosen on the VALIDATION split only (ties go to the stronger regularisation). There is no
stochasticity: the result depends on the data alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

LAMBDAS = tuple(10.0 ** k for k in range(2, -7, -1))   # 100 ... 1e-6, strongest first
KINDS = ("softmax", "logistic", "ridge")
METRICS = {"multiclass": "accuracy", "multilabel": "roc_auc", "regression": "r2"}
KIND_OF = {"multiclass": "softmax", "multilabel": "logistic", "regression": "ridge"}


@dataclass
class LinearFit:
    """Weights of every strength, in the standardised feature space."""

    kind: str
    lambdas: np.ndarray          # (L,)
    weight: torch.Tensor         # (L, d, C) float64
    bias: torch.Tensor           # (L, C)
    mean: torch.Tensor           # (d,) standardisation of the training rows
    inv_std: torch.Tensor        # (d,)
    iterations: int = 0
    converged: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @torch.no_grad()
    def outputs(self, x: torch.Tensor | np.ndarray, rows: int = 65536) -> torch.Tensor:
        """Logits (or regression outputs) ``(L, rows, C)`` of every strength for raw features ``x``."""
        x = torch.as_tensor(x, device=self.weight.device)
        w = self.weight * self.inv_std.view(1, -1, 1)                      # standardisation folded in
        b = self.bias - torch.einsum("d,ldc->lc", self.mean * self.inv_std, self.weight)
        L, d, C = w.shape
        flat = w.permute(1, 0, 2).reshape(d, L * C)
        parts = [(x[i:i + rows].to(w.dtype) @ flat).view(-1, L, C) for i in range(0, len(x), rows)]
        out = torch.cat(parts) if parts else torch.zeros(0, L, C, dtype=w.dtype, device=w.device)
        return out.permute(1, 0, 2) + b.unsqueeze(1)

    def take(self, i: int) -> LinearFit:
        """The fit of strength ``i`` alone."""
        return LinearFit(self.kind, self.lambdas[i:i + 1], self.weight[i:i + 1], self.bias[i:i + 1],
                         self.mean, self.inv_std, self.iterations, self.converged[i:i + 1])


# --------------------------------------------------------------------------- solver
def _spectrum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues ``s`` and eigenvectors ``V`` (d, k) of ``X'X / n`` for centred ``X`` (n, d);
    through the n x n kernel when d > n (k = n then; the rest of the spectrum is zero)."""
    n, d = x.shape
    if d <= n:
        s, v = torch.linalg.eigh((x.T @ x / n).double())
    else:
        s, u = torch.linalg.eigh((x @ x.T / n).double())
        x = x.double()
        keep = s > s.max().clamp_min(1e-30) * 1e-12
        s, u = s[keep], u[:, keep]
        v = x.T @ u / torch.sqrt(s * n)
    return s.clamp_min(0), v


def fit_linear(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, kind: str,
               lambdas: tuple[float, ...] | list[float] = LAMBDAS, *, tol: float = 1e-4,
               max_iter: int = 500, history: int = 10, products: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> LinearFit:
    """Fit every strength of ``lambdas`` on training rows ``x`` (n, d).

    ``y``: class indices (n,) or class probabilities (n, C) for ``softmax``; 0/1 or probabilities
    (n, C) for ``logistic``; values (n, C) or (n,) for ``ridge``. ``tol`` bounds the largest absolute
    gradient entry at convergence (logistic kinds; scikit-learn's default ``tol`` on the same scale).
    The matrix products over the rows run in ``products`` precision (float32: twice as fast; the
    optimiser's state, losses and the eigendecomposition are float64)."""
    return fit_linear_layers([x], y, kind, lambdas, tol=tol, max_iter=max_iter, history=history,
                             products=products, device=device)[0]


def fit_linear_layers(xs: Sequence[torch.Tensor | np.ndarray], y: torch.Tensor | np.ndarray, kind: str,
                      lambdas: tuple[float, ...] | list[float] = LAMBDAS, *, tol: float = 1e-4,
                      max_iter: int = 500, history: int = 10, products: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> list[LinearFit]:
    """:func:`fit_linear` for several feature sets of the same rows and targets (the layers of an
    encoder), solved together: one batched L-BFGS over every (layer, strength) block, each layer with
    its own standardisation and preconditioner. Each layer's fit equals its fit alone (the blocks are
    independent problems; only the loop is shared)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: allowed values are {', '.join(KINDS)}")
    dev = torch.device(device)
    y = torch.as_tensor(y, device=dev)
    feats = [torch.as_tensor(x, device=dev).to(torch.float64) for x in xs]
    if not feats:
        raise ValueError("fit_linear: no feature sets given")
    for x in feats:
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0 or x.shape[1] != feats[0].shape[1]:
            raise ValueError(f"fit_linear: expected features (n, d) and n targets, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
    n, d = feats[0].shape
    if kind == "softmax" and y.ndim == 1:
        raise ValueError("fit_linear(kind='softmax'): give targets as (n, C) probabilities "
                         "(use one_hot for class indices)")
    y = y.to(torch.float64)
    if y.ndim == 1:
        y = y.unsqueeze(1)
    lam = torch.tensor([float(v) for v in lambdas], dtype=torch.float64, device=dev)
    if not len(lam) or bool((lam <= 0).any()):
        raise ValueError(f"lambdas={list(lambdas)}: give positive regularisation strengths")
    stats, standard, spectra = [], [], []
    for x in feats:
        mean = x.mean(0)
        std = x.std(0, unbiased=False)
        inv_std = torch.where(std > 1e-8, 1 / std, torch.ones_like(std))
        xs_l = (x - mean) * inv_std
        s, v = _spectrum(xs_l.to(products if kind != "ridge" else torch.float64))
        stats.append((mean, inv_std))
        standard.append(xs_l)
        spectra.append((s.double(), v.double()))
    lam_np = lam.cpu().numpy()
    if kind == "ridge":
        fits = []
        ybar = y.mean(0)
        for (mean, inv_std), xs_l, (s, v) in zip(stats, standard, spectra, strict=True):
            proj = v.T @ (xs_l.T @ (y - ybar)) / n                                  # (k, C)
            w = torch.einsum("dk,lkc->ldc", v, proj.unsqueeze(0) / (s.view(1, -1, 1) + lam.view(-1, 1, 1)))
            b = ybar.expand(len(lam), -1).clone()
            fits.append(LinearFit(kind, lam_np, w, b, mean, inv_std, 0, np.ones(len(lam), bool)))
        return fits
    n_lam = len(lam)
    block_lam = lam.repeat(len(feats))                                       # layer-major blocks
    block_layer = np.repeat(np.arange(len(feats)), n_lam)
    w, b, iters, conv = _lbfgs(standard, y, kind, block_lam, block_layer, spectra, tol, max_iter, history, products)
    return [LinearFit(kind, lam_np, w[k * n_lam:(k + 1) * n_lam], b[k * n_lam:(k + 1) * n_lam], mean, inv_std,
                      iters, conv[k * n_lam:(k + 1) * n_lam]) for k, (mean, inv_std) in enumerate(stats)]


def _groups(layer: np.ndarray, device: torch.device) -> list[tuple[int, torch.Tensor | slice]]:
    """Positions of the blocks of each layer (a slice when there is one layer)."""
    if len(layer) and (layer == layer[0]).all():
        return [(int(layer[0]), slice(None))]
    return [(int(k), torch.as_tensor(np.flatnonzero(layer == k), device=device)) for k in np.unique(layer)]


def one_hot(labels: torch.Tensor | np.ndarray, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.int64), n_classes).to(torch.float64)


class _Objective:
    """Mean loss + lam/2 ||W||^2 and its gradient for k stacked parameter blocks ``(k, d + 1, C)``
    (the last row is the intercept), with two matrix products over the shared rows."""

    def __init__(self, xs: Sequence[torch.Tensor], y: torch.Tensor, kind: str, dtype: torch.dtype) -> None:
        self.x1 = [torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1).to(dtype) for x in xs]
        self.dtype = dtype
        self.y, self.kind, self.n = y, kind, len(xs[0])
        if kind == "logistic":   # the minimum of the loss (0 for hard targets): entropy of soft targets
            p = y.clamp(1e-300, 1)
            q = (1 - y).clamp(1e-300, 1)
            self.floor = -(y * p.log() + (1 - y) * q.log()).sum() / self.n
        else:
            self.floor = -(y * y.clamp_min(1e-300).log()).sum() / self.n

    def __call__(self, theta: torch.Tensor, lam: torch.Tensor, layer: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        k, d1, c = theta.shape
        groups = _groups(layer, theta.device)
        z = torch.empty(self.n, k, c, dtype=torch.float64, device=theta.device)
        for g, pos in groups:
            th = theta[pos]
            z[:, pos] = (self.x1[g] @ th.permute(1, 0, 2).reshape(d1, -1).to(self.dtype)).view(self.n, -1, c).double()
        y = self.y.unsqueeze(1)
        if self.kind == "softmax":
            logp = torch.log_softmax(z, -1)
            loss = -(y * logp).sum((0, 2)) / self.n - self.floor
            r = (logp.exp() * y.sum(-1, keepdim=True) - y) / self.n
        else:
            loss = (torch.nn.functional.softplus(z) - y * z).sum((0, 2)) / self.n - self.floor
            r = (torch.sigmoid(z) - y) / self.n
        grad = torch.empty_like(theta)
        for g, pos in groups:
            rg = r[:, pos]
            grad[pos] = (self.x1[g].T @ rg.reshape(self.n, -1).to(self.dtype)).view(d1, -1, c).permute(1, 0, 2).double()
        w = theta[:, :-1]
        loss = loss + 0.5 * lam * w.pow(2).sum((1, 2))
        grad[:, :-1] += lam.view(-1, 1, 1) * w
        return loss, grad


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((1, 2))


def _lbfgs(xs: Sequence[torch.Tensor], y: torch.Tensor, kind: str, lam: torch.Tensor, layer: np.ndarray,
           spectra: Sequence[tuple[torch.Tensor, torch.Tensor]], tol: float, max_iter: int, history: int,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, int, np.ndarray]:
    """Batched L-BFGS over blocks (a strength ``lam[b]`` on the features of layer ``layer[b]``),
    preconditioned by each layer's ridge inverse; Armijo backtracking per block. Returns weights
    (B, d, C), intercepts (B, C), iterations, converged flags."""
    x = xs[0]
    n, d = x.shape
    C = y.shape[1]
    L = len(lam)
    f = _Objective(xs, y, kind, dtype)
    curv = 0.25   # the largest curvature of the logistic loss; scaled per strength by L-BFGS below

    def precondition(g: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(c X'X/n + lam)^-1 on the weights, 1/c on the intercept, of blocks ``idx``."""
        out = torch.empty_like(g)
        for k, pos in _groups(layer[idx.cpu().numpy()], g.device):
            s, v = spectra[k]
            lam_i = lam[idx][pos].view(-1, 1, 1)
            gw = g[pos][:, :-1]
            coef = 1 / (curv * s.view(1, -1, 1) + lam_i) - 1 / lam_i                  # (k, r, 1)
            proj = torch.einsum("dr,kdc->krc", v, gw)
            sub = torch.empty_like(g[pos])
            sub[:, :-1] = gw / lam_i + torch.einsum("dr,krc->kdc", v, coef * proj)
            sub[:, -1] = g[pos][:, -1] / curv
            out[pos] = sub
        return out

    theta = torch.zeros(L, d + 1, C, dtype=torch.float64, device=x.device)
    if kind == "softmax":   # intercept at the log class frequencies
        theta[:, -1] = (y.mean(0).clamp_min(1e-12)).log()
    else:
        p = y.mean(0).clamp(1e-12, 1 - 1e-12)
        theta[:, -1] = (p / (1 - p)).log()
    active = torch.arange(L, device=x.device)
    loss, grad = f(theta, lam, layer)
    mem_s: list[torch.Tensor] = []
    mem_y: list[torch.Tensor] = []
    mem_rho: list[torch.Tensor] = []
    gamma = torch.ones(L, dtype=torch.float64, device=x.device)
    converged = np.zeros(L, bool)
    final = theta.clone()
    it = 0
    stalled = torch.zeros(L, dtype=torch.bool, device=x.device)
    for it in range(1, max_iter + 1):
        done = (grad.abs().amax((1, 2)) <= tol) | stalled   # stalled: no decrease left in float64
        if bool(done.any()):
            converged[active[done].cpu().numpy()] = True
            final[active[done]] = theta[done]
            keep = ~done
            active, theta, loss, grad, gamma = active[keep], theta[keep], loss[keep], grad[keep], gamma[keep]
            stalled = stalled[keep]
            mem_s, mem_y, mem_rho = [m[keep] for m in mem_s], [m[keep] for m in mem_y], [m[keep] for m in mem_rho]
            if not len(active):
                it -= 1
                break
        # two-loop recursion with H0 = gamma * P
        q = grad.clone()
        alphas = []
        for sv, yv, rho in zip(reversed(mem_s), reversed(mem_y), reversed(mem_rho), strict=True):
            a = rho * _dot(sv, q)
            q -= a.view(-1, 1, 1) * yv
            alphas.append(a)
        r = gamma.view(-1, 1, 1) * precondition(q, active)
        for (sv, yv, rho), a in zip(zip(mem_s, mem_y, mem_rho, strict=True), reversed(alphas), strict=True):
            bta = rho * _dot(yv, r)
            r += (a - bta).view(-1, 1, 1) * sv
        direction = -r
        slope = _dot(grad, direction)
        bad = slope >= 0   # not a descent direction (numerical trouble): restart from the preconditioner
        if bool(bad.any()):
            direction[bad] = -precondition(grad[bad], active[bad])
            slope = _dot(grad, direction)
        step = torch.ones(len(active), dtype=torch.float64, device=x.device)
        new_theta, new_loss, new_grad = theta.clone(), loss.clone(), grad.clone()
        searching = torch.arange(len(active), device=x.device)
        for _ in range(40):   # Armijo backtracking, only the strengths still searching are evaluated
            trial = theta[searching] + step[searching].view(-1, 1, 1) * direction[searching]
            t_loss, t_grad = f(trial, lam[active[searching]], layer[active[searching].cpu().numpy()])
            ok = t_loss <= loss[searching] + 1e-4 * step[searching] * slope[searching]
            ok |= ~torch.isfinite(loss[searching])
            acc = searching[ok]
            new_theta[acc], new_loss[acc], new_grad[acc] = trial[ok], t_loss[ok], t_grad[ok]
            searching = searching[~ok]
            if not len(searching):
                break
            step[searching] *= 0.5
        sv, yv = new_theta - theta, new_grad - grad
        sy = _dot(sv, yv)
        rho = torch.where(sy > 1e-12, 1 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        py = precondition(yv, active)
        ypy = _dot(yv, py)
        gamma = torch.where(sy > 1e-12, sy / ypy.clamp_min(1e-300), gamma)
        mem_s.append(sv)
        mem_y.append(yv)
        mem_rho.append(rho)
        if len(mem_s) > history:
            mem_s, mem_y, mem_rho = mem_s[1:], mem_y[1:], mem_rho[1:]
        stalled = (loss - new_loss).abs() <= 1e-15 * new_loss.abs().clamp_min(1.0)
        theta, loss, grad = new_theta, new_loss, new_grad
    final[active] = theta
    return final[:, :-1].contiguous(), final[:, -1].contiguous(), it, converged


# --------------------------------------------------------------------------- selection
def choose(valid_scores: np.ndarray) -> int:
    """Index of the best validation score; ties (and NaN) go to the stronger regularisation."""
    scores = np.nan_to_num(np.asarray(valid_scores, dtype=np.float64), nan=-np.inf)
    return int(np.argmax(scores))   # the grid runs strongest first: argmax keeps the first maximum


def primary_scores(task: str, outputs: torch.Tensor | np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The primary metric of each of L output sets ``(L, rows, C)`` at once: accuracy (multiclass),
    macro ROC-AUC over the columns with both classes (multilabel), mean R^2 (regression)."""
    from mirkit.eval.tasks import batch_accuracy, batch_macro_auc, batch_r2
    fn = {"multiclass": batch_accuracy, "multilabel": batch_macro_auc, "regression": batch_r2}.get(task)
    if fn is None:
        raise ValueError(f"task={task!r}: allowed values are {', '.join(METRICS)}")
    return fn(outputs, targets)


@dataclass
class LinearProbeResult:
    """A fitted, validation-selected linear probe."""

    metric: str                  # accuracy | roc_auc | r2
    lam: float                   # the chosen strength
    valid_score: float
    valid_scores: dict[float, float]
    test_score: float | None
    fit: LinearFit               # the chosen strength's weights (``fit.outputs(x)[0]`` predicts)


def linear_probe(x_train: np.ndarray | torch.Tensor, y_train: np.ndarray | torch.Tensor,
                 x_valid: np.ndarray | torch.Tensor, y_valid: np.ndarray | torch.Tensor, task: str, *,
                 x_test: np.ndarray | torch.Tensor | None = None, y_test: np.ndarray | torch.Tensor | None = None,
                 lambdas: tuple[float, ...] | list[float] = LAMBDAS, n_classes: int | None = None,
                 score: Callable[[torch.Tensor, np.ndarray], np.ndarray] | None = None,
                 device: str | torch.device = "cpu") -> LinearProbeResult:
    """Fit a linear probe for every strength, choose one on validation, optionally score test once.

    ``task``: ``multiclass`` (``y`` = class indices, softmax regression, accuracy), ``multilabel``
    (``y`` = (n, C) 0/1, independent logistic regressions, macro ROC-AUC) or ``regression`` (``y`` =
    (n,) or (n, C) values, ridge, mean R^2). ``score(outputs (L, rows, C), y_valid) -> (L,)`` replaces
    the default metric (e.g. a key score). Rows are examples (e.g. pooled embeddings of clips).
    """
    if task not in KIND_OF:
        raise ValueError(f"task={task!r}: allowed values are {', '.join(KIND_OF)}")
    kind = KIND_OF[task]
    y_tr = np.asarray(torch.as_tensor(y_train).cpu())
    if task == "multiclass":
        c = n_classes or int(max(y_tr.max(), np.asarray(torch.as_tensor(y_valid).cpu()).max())) + 1
        y_fit = one_hot(y_tr, c)
    else:
        y_fit = torch.as_tensor(y_tr, dtype=torch.float64)
    fit = fit_linear(x_train, y_fit, kind, lambdas, device=device)
    scorer = score or (lambda out, y: primary_scores(task, out, y))
    y_va = np.asarray(torch.as_tensor(y_valid).cpu())
    valid = np.asarray(scorer(fit.outputs(x_valid), y_va), dtype=np.float64)
    best = choose(valid)
    chosen = fit.take(best)
    test = None
    if x_test is not None and y_test is not None:
        test = float(scorer(chosen.outputs(x_test), np.asarray(torch.as_tensor(y_test).cpu()))[0])
    return LinearProbeResult(METRICS[task], float(fit.lambdas[best]), float(valid[best]),
                             {float(lam): float(v) for lam, v in zip(fit.lambdas, valid, strict=True)}, test, chosen)
