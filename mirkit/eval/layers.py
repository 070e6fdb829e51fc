"""Every layer of an encoder in one probe run: layered stores, the layer chosen on validation, and a
learned weighted sum of layers.

Layered store (``extract.layer: all``): the store at ``out`` holds the last layer (``-1``, what a
single-layer store holds) and each other layer ``k`` is a complete embeddings store in the sub-group
``out/layer_<k>`` (same tracks, same chunk and frame rows). :func:`open_layers` returns
``{layer: Embeddings}`` in the encoder's order (block input 0, blocks 1..depth, then -1).

Layer choice (``probe.layers: best``): each layer gets its own probe, chosen as the protocol says, and
the layer with the best VALIDATION score is reported (ties go to the earlier layer); test is scored with
it alone. MERT's and MARBLE's practice of reporting the best layer per task, with the choice made on
validation rather than on test.

Weighted sum (``probe.layers: weighted``): SUPERB's (Yang et al., Interspeech 2021) learnable
softmax-normalised layer weights, trained together with a linear probe on the weighted sum of the
layers (each standardised with the train rows), loss + ``lam/2 ||W||^2`` as in the linear protocol;
full-batch Adam (lr 0.02) from zero weights, validation every 10 steps, the best step kept, stop after
10 evaluations without improvement; the strengths of :data:`LAMBDAS` are trained together and the one
best on validation kept. Deterministic (no random draws).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mirkit.eval.embeddings import Embeddings, EmbeddingsError
from mirkit.eval.tasks import Task

LAYER_GROUP = re.compile(r"^layer_(-?\d+)$")
LAMBDAS = (1.0, 1e-1, 1e-2, 1e-3)   # strongest first: ties go to the stronger regularisation


def layer_url(url: str, layer: int) -> str:
    """Where layer ``layer`` of a layered store at ``url`` lives (``-1`` is the store itself)."""
    return str(url) if layer == -1 else f"{str(url).rstrip('/')}/layer_{layer}"


def open_layers(url: str) -> dict[int, Embeddings]:
    """``{layer: store}`` of a layered store, or ``{layer: store}`` with one entry for a plain store."""
    main = Embeddings(url)
    found = sorted(int(m.group(1)) for name in main.group.group_keys() if (m := LAYER_GROUP.match(name)))
    own = main.layer if isinstance(main.layer, int) else -1
    if not found:
        return {own: main}
    stores = {k: Embeddings(layer_url(url, k)) for k in found if k != own}
    ids = [t.get("track_id") for t in main.tracks]
    for k, s in stores.items():
        if [t.get("track_id") for t in s.tracks] != ids or s.dim != main.dim:
            raise EmbeddingsError(f"{layer_url(url, k)}: layer {k} holds other tracks or dims than {url} "
                                  f"(an interrupted `mirkit extract`? re-run it)")
    stores[own] = main
    return dict(sorted(stores.items(), key=lambda kv: (kv[0] == -1, kv[0])))


def choose_layer(valid_scores: dict[int, float]) -> int:
    """The layer with the best validation score; NaN never wins; ties go to the earlier layer."""
    layers = list(valid_scores)
    scores = np.nan_to_num(np.array([valid_scores[k] for k in layers], dtype=np.float64), nan=-np.inf)
    return layers[int(np.argmax(scores))]


def stack_layers(rows: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per split, the rows of every layer side by side ``(rows, n_layers * dim)`` (layer-major)."""
    first = next(iter(rows.values()))
    out = {}
    for split, (_, group) in first.items():
        parts = [r[split][0] for r in rows.values()]
        if any(len(p) != len(group) for p in parts):
            raise EmbeddingsError(f"split {split}: the layers hold different numbers of rows")
        out[split] = (torch.cat(parts, 1), group)
    return out


def fit_weighted(task: Task, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor,
                 val_score: Callable[[torch.Tensor], np.ndarray], layers: Sequence[int],
                 lambdas: Sequence[float] = LAMBDAS, lr: float = 0.02, max_steps: int = 1000,
                 eval_every: int = 10, patience: int = 10):
    """Train layer weights + a linear probe on ``x`` ``(rows, n_layers * dim)`` (from :func:`stack_layers`);
    returns a ``mirkit.eval.probe.Fitted`` whose ``details`` hold the chosen strength and the weights."""
    from mirkit.eval.probe import Fitted
    n_layers = len(layers)
    n, width = x.shape
    dim = width // n_layers
    x = x.double().view(n, n_layers, dim)
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True)
    inv = torch.where(std > 1e-8, 1 / std, torch.ones_like(std))
    xs = (x - mean) * inv
    k = len(lambdas)
    lam = torch.tensor(list(lambdas), dtype=torch.float64, device=x.device)
    logits = torch.zeros(k, n_layers, dtype=torch.float64, device=x.device, requires_grad=True)
    weight = torch.zeros(k, dim, task.n_outputs, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(k, 1, task.n_outputs, dtype=torch.float64, device=x.device, requires_grad=True)
    params = [logits, weight, bias]
    opt = torch.optim.Adam(params, lr=lr)
    y = y.to(x.device)
    targets = y.double() if y.is_floating_point() else y

    def outputs(rows: torch.Tensor) -> torch.Tensor:   # (k, rows, C) from standardised (rows, L, d)
        mixed = torch.einsum("nld,kl->knd", rows, torch.softmax(logits, -1))
        return torch.baddbmm(bias, mixed, weight)

    val = ((val_x.double().view(len(val_x), n_layers, dim) - mean) * inv)
    best = [p.detach().clone() for p in params]
    best_score = np.full(k, -np.inf)
    best_step = np.zeros(k, dtype=np.int64)
    waited = np.zeros(k, dtype=np.int64)
    step = 0
    for step in range(max_steps + 1):
        if step % eval_every == 0:
            with torch.no_grad():
                scores = np.nan_to_num(np.asarray(val_score(outputs(val).float()), dtype=np.float64), nan=-np.inf)
            better = scores > best_score
            for p, b in zip(params, best, strict=True):
                b[better] = p.detach()[better]
            best_score[better], best_step[better] = scores[better], step
            waited = np.where(better, 0, waited + 1)
            if (waited > patience).all() or step == max_steps:
                break
        opt.zero_grad()
        loss = task.losses(outputs(xs), targets).sum() + (0.5 * lam * weight.pow(2).sum((1, 2))).sum()
        loss.backward()
        opt.step()
    c = int(np.argmax(best_score))   # strongest first: argmax keeps the first maximum
    w_logits, w_weight, w_bias = (b[c] for b in best)
    mix = torch.softmax(w_logits, -1)

    @torch.no_grad()
    def predict(rows: torch.Tensor) -> torch.Tensor:
        z = (rows.double().view(len(rows), n_layers, dim) - mean) * inv
        return (torch.einsum("nld,l->nd", z, mix) @ w_weight + w_bias).float()

    details = {"protocol": "weighted", "lambda": float(lambdas[c]), "best_step": int(best_step[c]), "steps": step,
               "valid_by_lambda": {f"{v:g}": float(s) for v, s in zip(lambdas, best_score, strict=True)},
               "layers": {"mode": "weighted", "weights": {str(layer): float(w) for layer, w in zip(layers, mix, strict=True)}}}
    return Fitted(predict, float(best_score[c]), details)
