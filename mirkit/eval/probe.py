"""Probe training on frozen embeddings: the linear protocol, the JukeMIR grid (trained batched) and a quick probe.

Protocol ``linear`` (default; ``mirkit.eval.linear_probe``): standardised L2-regularised softmax / logistic /
ridge probes solved full-batch for a grid of strengths, the strength chosen on VALIDATION only.

Protocol ``jukemir`` follows p-lambda/jukemir (``jukemir/probe``, ``aggregate.py``): 216 configurations
(standardisation fitted on TRAIN only on/off x linear or one hidden layer of 512 x batch 64/256 x
lr 1e-5/1e-4/1e-3 x dropout .25/.5/.75 (input dropout, and after the hidden layer) x weight decay
0/1e-4/1e-3), Adam, random minibatches every step, the validation primary metric evaluated every
``eval_every`` steps from step 0, stop after ``patience`` evaluations without improvement and restore the best
state; the configuration is chosen on VALIDATION only and the test split is scored once, with that
configuration alone. Unlike JukeMIR (one vector per clip), examples are chunk embeddings carrying
their track's label and chunk outputs are averaged per track before scoring (late fusion, as in
Myna's evaluate.py and MARBLE).

Song-level ensembling (a task with ``group``, JukeMIR's GiantSteps protocol): the validation score
that drives early stopping and the grid selection is JukeMIR's ``score``, the song-level primary
metric of the strategy that is best on validation (i.e. the best of the four on validation); the
chosen configuration's VALIDATION outputs then fix the strategy, and test is scored once with it.
Test metrics: the song-level primary metric (and accuracy) under the chosen strategy, plus the
clip-level ones prefixed ``clip_``.

Batching: configurations that share (batch size, hidden size) are trained together as stacked
weights ``(G, in, out)``: batched matrix products with closed-form gradients (no autograd) and a
manual batched Adam (per-configuration lr and L2 weight decay, the torch.optim.Adam update);
validation outputs of the stack come from one matrix product and are scored at once
(``Task.primary_scores``). Minibatches are uniform random subsets drawn without replacement each
step (JukeMIR's ``random.sample``), shared by the stack (the sampler is seeded by the batch size);
initial weights and dropout masks come from one generator seeded by ``seed`` alone (JukeMIR runs every
configuration with seed 0), so a configuration trains identically alone or in a stack.
Configurations that run out of patience are dropped from the stack. fp32 on every device.
Deviations from JukeMIR's code are listed in docs/probes.md.

Protocol ``quick``: one configuration of the grid (standardised linear probe, batch 64, lr 1e-3,
dropout .25, no weight decay). Frame-level tasks choose on the validation frame loss (vectorised;
mir_eval only once the probe is chosen): the linear solver under ``linear``, else a quick per-frame
probe early-stopped on it (``hidden`` in the task options turns it into an MLP).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mirkit.eval.bootstrap import UnitScores, seed_summary
from mirkit.eval.embeddings import Embeddings
from mirkit.eval.linear_probe import LAMBDAS, choose, fit_linear, one_hot
from mirkit.eval.protocols import (
    DEFAULT_FUSION,
    QUICK,
    ProbeConfig,
    Protocol,
    Setup,
    as_setup,
    jukemir_grid,  # noqa: F401  (re-exported: mirkit.eval.probe.jukemir_grid)
)
from mirkit.eval.protocols import PROTOCOLS as _PROTOCOLS
from mirkit.eval.tasks import (
    ENSEMBLES,
    IGNORE,
    Beats,
    FrameTask,
    Multiclass,
    Multilabel,
    Regression,
    Songs,
    Task,
    TaskDataError,
    best_ensemble,
    ensemble,
)

PROTOCOLS = tuple(_PROTOCOLS)   # the registered protocol names (mirkit.eval.protocols)


@dataclass
class TrainSettings:
    max_steps: int = 1_000_000   # a safety cap only (JukeMIR has none); a configuration that hits it is reported
    eval_every: int = 8          # JukeMIR: every 8 steps, from step 0
    patience: int = 256          # evaluations without improvement (JukeMIR: 256)
    seed: int = 0
    device: str = "cpu"
    eval_rows: int = 8192        # rows per matrix product when evaluating
    stack: int = 0               # most configurations trained together (0 = a whole (batch, hidden) group)


@dataclass
class ConfigResult:
    config: ProbeConfig
    config_id: int
    valid_score: float
    best_step: int
    steps: int
    params: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    capped: bool = False         # stopped by ``max_steps`` rather than by early stopping


# --------------------------------------------------------------------------- stacked probe
def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, device=device) * 2 - 1) * bound


def init_params(config: ProbeConfig, n_in: int, n_out: int, gen: torch.Generator,
                device: torch.device) -> dict[str, torch.Tensor]:
    """One configuration's weights, ``nn.Linear``'s default init (U(±1/sqrt(fan_in)))."""
    sizes = [n_in, config.hidden, n_out] if config.hidden else [n_in, n_out]
    params = {}
    for k, (a, b) in enumerate(itertools.pairwise(sizes), start=1):
        bound = 1 / math.sqrt(a)
        params[f"w{k}"] = _uniform((a, b), bound, gen, device)
        params[f"b{k}"] = _uniform((1, b), bound, gen, device)
    return params


def forward(params: dict[str, torch.Tensor], x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
            rows: int = 8192) -> torch.Tensor:
    """Evaluation-mode outputs ``(G, rows, n_out)`` of G stacked probes on shared inputs ``x`` ``(rows, in)``.

    ``shift``/``scale`` ``(G, 1, in)`` standardise per configuration (0/1 when off); they are folded
    into the first layer so the G probes share one matrix product with ``x``."""
    w1 = params["w1"] * scale.transpose(1, 2)                              # (G, in, h)
    b1 = params["b1"] - torch.bmm(shift * scale, params["w1"])             # (G, 1, h)
    g, n_in, h = w1.shape
    flat = w1.permute(1, 0, 2).reshape(n_in, g * h)
    parts = []
    for i in range(0, len(x), rows):
        z = (x[i:i + rows] @ flat).view(-1, g, h).transpose(0, 1) + b1
        if "w2" in params:
            z = torch.baddbmm(params["b2"], torch.relu_(z), params["w2"])
        parts.append(z)
    return torch.cat(parts, 1) if parts else torch.zeros(g, 0, params[f"b{2 if 'w2' in params else 1}"].shape[-1],
                                                         device=x.device)


predict = torch.no_grad()(forward)


class BatchedAdam:
    """torch.optim.Adam's update (L2 weight decay added to the gradient) for stacked parameters
    with a learning rate and weight decay per configuration (leading dim)."""

    def __init__(self, params: dict[str, torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.wd = params, lr, weight_decay
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor] | None = None) -> None:
        """One update from ``grads`` (default: each parameter's ``.grad``)."""
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for k, p in self.params.items():
            grad = grads[k] if grads is not None else p.grad
            assert grad is not None
            g = grad + self.wd * p
            self.m[k].mul_(b1).add_(g, alpha=1 - b1)
            self.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.v[k].sqrt() / math.sqrt(c2)).add_(self.eps)
            p.sub_(self.lr / c1 * self.m[k] / denom)
            p.grad = None

    def keep_only(self, mask: torch.Tensor) -> None:
        self.lr, self.wd = self.lr[mask], self.wd[mask]
        self.params = {k: v[mask] for k, v in self.params.items()}
        self.m = {k: v[mask] for k, v in self.m.items()}
        self.v = {k: v[mask] for k, v in self.v.items()}


def _probe_seed(seed: int) -> int:
    """The seed of every configuration's initial weights and dropout masks (JukeMIR: seed 0 for every
    run, so configurations of one architecture start from the same weights)."""
    return seed * 1_000_003 + 1


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def minibatches(sampler: torch.Generator, n: int, batch_size: int, steps: int) -> torch.Tensor:
    """Row indices of the next ``steps`` minibatches ``(steps, min(batch_size, n))``: each a uniform
    random subset drawn without replacement, independently per step (JukeMIR's ``random.sample``)."""
    if batch_size >= n:
        return torch.arange(n).expand(steps, n)
    return torch.rand(steps, n, generator=sampler).topk(batch_size, dim=1, sorted=False).indices


class DropoutStream:
    """Uniform numbers of the dropout masks of a stack, from one generator, in the order one step at
    a time would draw them (input mask, then hidden mask), ``chunk`` steps per call. Every
    configuration of the stack reads the same numbers (its mask keeps those below its keep rate), as
    every JukeMIR run draws the same stream from seed 0."""

    def __init__(self, gen: torch.Generator, sizes: tuple[int, ...], device: torch.device,
                 budget: int = 1 << 22, most: int = 64) -> None:
        self.gen, self.sizes = gen, sizes
        self.chunk = max(1, min(most, budget // max(1, sum(sizes))))
        self.buf = torch.empty(self.chunk, sum(sizes), device=device)
        self.pos = self.chunk

    def next(self) -> list[torch.Tensor]:
        if self.pos == self.chunk:
            self.buf.uniform_(generator=self.gen)
            self.pos = 0
        row = self.buf[self.pos]
        self.pos += 1
        return list(row.split(self.sizes))


@dataclass
class TrainData:
    """Training rows and a validation scorer.

    ``val_score(outputs)`` maps validation outputs ``(G, val_rows, n_out)`` to one score per
    configuration (higher is better); ``grad(outputs, targets)`` is the gradient of the sum of the
    G configurations' mean training losses with respect to their outputs (``Task.output_grad``)."""

    x: torch.Tensor
    y: torch.Tensor
    val_x: torch.Tensor
    val_score: Callable[[torch.Tensor], np.ndarray]
    n_out: int
    grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std of the TRAIN rows (StandardScaler: constant columns keep scale 1)."""
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True)
    return mean, torch.where(std > 1e-8, 1 / std, torch.ones_like(std))


Progress = Callable[[int, int], None]   # (configurations finished, step of the current stack)


@torch.no_grad()
def train_group(configs: Sequence[tuple[int, ProbeConfig]], data: TrainData, settings: TrainSettings,
                on_progress: Progress | None = None) -> list[ConfigResult]:
    """Train configurations sharing (batch size, hidden) as one stack; returns their best states.

    Each step: one minibatch shared by the stack, per-configuration dropout masks, batched matrix
    products forward and backward (closed-form gradients, no autograd), one batched Adam update.
    Validation at step 0 and every ``eval_every`` steps, scored for the whole stack at once."""
    device = torch.device(settings.device)
    configs = sorted(configs, key=lambda c: (c[1].standardize, c[0]))   # standardised ones last
    bs, hidden = configs[0][1].batch_size, configs[0][1].hidden
    assert all(c.batch_size == bs and c.hidden == hidden for _, c in configs)
    n, n_in = data.x.shape
    gen = _generator(_probe_seed(settings.seed), device)
    first = init_params(configs[0][1], n_in, data.n_out, gen, device)   # the same for the whole stack
    params = {k: v.unsqueeze(0).repeat(len(configs), 1, 1) for k, v in first.items()}
    mean, inv_std = standardizer(data.x)
    std_on = torch.tensor([c.standardize for _, c in configs], device=device).view(-1, 1, 1)
    shift = torch.where(std_on, mean, torch.zeros_like(mean))
    scale = torch.where(std_on, inv_std, torch.ones_like(inv_std))
    keep = torch.tensor([1 - c.dropout for _, c in configs], device=device).view(-1, 1, 1)
    opt = BatchedAdam(params, torch.tensor([c.lr for _, c in configs], device=device).view(-1, 1, 1),
                      torch.tensor([c.weight_decay for _, c in configs], device=device).view(-1, 1, 1))
    sampler = _generator(settings.seed * 1_000_003 + bs, torch.device("cpu"))
    rows = min(bs, n)
    masks = DropoutStream(gen, (rows * n_in,) + ((rows * hidden,) if hidden else ()), device)
    n_off = sum(not c.standardize for _, c in configs)

    G = len(configs)
    active = torch.arange(G)
    best = {k: v.clone() for k, v in params.items()}
    best_score = np.full(G, -np.inf)
    best_step = np.zeros(G, dtype=np.int64)
    waited = np.zeros(G, dtype=np.int64)
    results: dict[int, ConfigResult] = {}
    batches = torch.zeros(0, rows, dtype=torch.int64)

    def finish(pos: np.ndarray, step: int, capped: bool) -> None:
        for j in pos:
            a = int(active[j])
            cid, cfg = configs[a]
            results[a] = ConfigResult(cfg, cid, float(best_score[a]), int(best_step[a]), step,
                                      {k: v[j].clone() for k, v in best.items()}
                                      | {"shift": shift[j], "scale": scale[j]}, capped)

    step = 0
    while True:
        if step % settings.eval_every == 0 or step == settings.max_steps:
            scores = np.nan_to_num(np.asarray(data.val_score(forward(params, data.val_x, shift, scale,
                                                                     settings.eval_rows)), dtype=np.float64),
                                   nan=-np.inf)
            a = active.numpy()
            improved = scores > best_score[a]
            best_score[a[improved]], best_step[a[improved]] = scores[improved], step
            waited[a] = np.where(improved, 0, waited[a] + 1)
            if improved.any():
                sel = torch.as_tensor(improved, device=device)
                for k in best:
                    best[k][sel] = params[k][sel]
            done = waited[a] >= settings.patience
            if step == settings.max_steps:
                finish(np.flatnonzero(~done), step, True)
                finish(np.flatnonzero(done), step, False)
                break
            if done.any():
                finish(np.flatnonzero(done), step, False)
                if done.all():
                    break
                mask = torch.as_tensor(~done, device=device)
                params = {k: v[mask] for k, v in params.items()}
                best = {k: v[mask] for k, v in best.items()}
                opt.keep_only(mask)
                opt.params = params
                shift, scale, keep = shift[mask], scale[mask], keep[mask]
                n_off = int(mask[:n_off].sum())
                active = active[mask.cpu()]
            if on_progress:
                on_progress(len(results), step)
        if not len(batches):
            batches = minibatches(sampler, n, bs, max(1, (1 << 20) // max(n, 1)))
        idx, batches = batches[0].to(device), batches[1:]
        xb = data.x[idx]
        yb = data.y[idx]
        u = masks.next()
        # input dropout with the standardisation folded into the mask: h0 = (x - shift) * scale * m / keep
        h0 = torch.where(u[0].view(rows, n_in) < keep, scale / keep, 0.0)
        h0[:n_off] *= xb
        h0[n_off:] *= xb - shift[n_off:]
        if hidden:   # hidden dropout: h1 = relu(a1) * m2, with the 1/keep folded into w2
            h1 = torch.baddbmm(params["b1"], h0, params["w1"]).clamp_min_(0).mul_(u[1].view(rows, hidden) < keep)
            w2 = params["w2"] / keep
            r = data.grad(torch.baddbmm(params["b2"], h1, w2), yb)
            dh = torch.bmm(r, w2.transpose(1, 2)).mul_(h1 > 0)
            grads = {"w1": torch.bmm(h0.transpose(1, 2), dh), "b1": dh.sum(1, keepdim=True),
                     "w2": torch.bmm(h1.transpose(1, 2), r).div_(keep), "b2": r.sum(1, keepdim=True)}
        else:
            r = data.grad(torch.baddbmm(params["b1"], h0, params["w1"]), yb)
            grads = {"w1": torch.bmm(h0.transpose(1, 2), r), "b1": r.sum(1, keepdim=True)}
        opt.step(grads)
        step += 1
    return [results[a] for a in range(G)]


def train_configs(configs: Sequence[tuple[int, ProbeConfig]], data: TrainData, settings: TrainSettings,
                  on_progress: Progress | None = None) -> list[ConfigResult]:
    """Train any set of configurations, grouped by (batch size, hidden) into stacks."""
    groups: dict[tuple[int, int], list[tuple[int, ProbeConfig]]] = {}
    for cid, c in configs:
        groups.setdefault((c.batch_size, c.hidden), []).append((cid, c))
    results: list[ConfigResult] = []
    for key in sorted(groups):
        group = groups[key]
        size = settings.stack or len(group)
        for lo in range(0, len(group), size):
            offset = len(results)
            report = (lambda done, step, offset=offset: on_progress(offset + done, step)) if on_progress else None
            results.extend(train_group(group[lo: lo + size], data, settings, report))
    return sorted(results, key=lambda r: r.config_id)


def select(results: Sequence[ConfigResult]) -> ConfigResult:
    """Best validation score; ties go to the earlier grid position. Never looks at test data."""
    return max(results, key=lambda r: (r.valid_score, -r.config_id))


def predict_one(result: ConfigResult, x: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    params = {k: v.unsqueeze(0) for k, v in result.params.items() if k not in ("shift", "scale")}
    return predict(params, x, result.params["shift"].unsqueeze(0), result.params["scale"].unsqueeze(0), rows)[0]


# --------------------------------------------------------------------------- late fusion
def fuse(outputs: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of chunk outputs per track: ``(G, rows, out)`` -> ``(G, n_groups, out)``."""
    sums = torch.zeros(outputs.shape[0], n_groups, outputs.shape[-1], dtype=outputs.dtype, device=outputs.device)
    sums.index_add_(1, group, outputs)
    counts = torch.bincount(group, minlength=n_groups).clamp_min(1).to(outputs.dtype)
    return sums / counts.view(1, -1, 1)


# --------------------------------------------------------------------------- task evaluation
@dataclass(frozen=True)
class Splits:
    """Which split fits the probe, which chooses it (strength, configuration, layer), and which are
    scored once with the chosen probe. The first scored split's metrics are reported unprefixed,
    the others as ``<split>_<metric>``. The online probe scores ``valid`` (``Splits(score=("valid",))``)."""

    fit: str = "train"
    choose: str = "valid"
    score: tuple[str, ...] = ("test",)

    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.fit, self.choose, *self.score)))


SPLITS = Splits()


@dataclass
class TaskResult:
    metrics: dict[str, float]
    details: dict[str, Any]
    #: per scored split: the primary metric over its evaluation units (tracks or songs), for
    #: bootstrap intervals (``mirkit.eval.bootstrap``)
    units: dict[str, UnitScores] = field(default_factory=dict)


def _tracks_for(store: Embeddings, task: Task, split: str) -> list[int]:
    return [i for i in store.split(split) if task.keep(store.tracks[i])]


class Fitted:
    """A chosen probe: ``outputs(x)`` predicts, ``details`` says what was chosen and how."""

    def __init__(self, outputs: Callable[[torch.Tensor], torch.Tensor], valid_score: float,
                 details: dict[str, Any]) -> None:
        self.outputs, self.valid_score, self.details = outputs, valid_score, details


def _linear_targets(task: Task, y: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """Solver kind, float64 targets and a row mask (rows to keep) of a task for :func:`fit_linear`."""
    if isinstance(task, Regression):
        return "ridge", y.double(), None
    if isinstance(task, (Multilabel, Beats)):
        return "logistic", y.double().reshape(len(y), -1), None
    keep = y != IGNORE
    return "softmax", one_hot(torch.where(keep, y, 0), task.n_outputs) * keep.unsqueeze(1), keep


def fit_linear_task(task: Task, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor,
                    val_score: Callable[[torch.Tensor], np.ndarray], device: torch.device,
                    lambdas: tuple[float, ...] = LAMBDAS, tol: float = 1e-4) -> Fitted:
    """The ``linear`` protocol: every strength fitted at once, the one best on ``val_score`` kept."""
    kind, targets, rows = _linear_targets(task, y)
    if rows is not None:
        x, targets = x[rows], targets[rows]
    fit = fit_linear(x, targets, kind, lambdas, device=device, tol=tol)
    scores = np.nan_to_num(np.asarray(val_score(fit.outputs(val_x).float()), dtype=np.float64), nan=-np.inf)
    best = choose(scores)
    chosen = fit.take(best)
    details = {"protocol": "linear", "solver": kind, "lambda": float(fit.lambdas[best]),
               "valid_by_lambda": {f"{v:g}": float(s) for v, s in zip(fit.lambdas, scores, strict=True)},
               "iterations": fit.iterations, "converged": bool(fit.converged.all())}
    return Fitted(lambda rows_x: chosen.outputs(rows_x)[0].float(), float(scores[best]), details)


def fit_grid(configs: Sequence[tuple[int, ProbeConfig]], data: TrainData, settings: TrainSettings,
             on_progress: Progress | None = None) -> Fitted:
    """The ``quick`` / ``jukemir`` protocols: train the configurations, keep the one best on valid."""
    results = train_configs(configs, data, settings, on_progress)
    chosen = select(results)
    details = {"config": asdict(chosen.config), "config_id": chosen.config_id, "best_step": chosen.best_step,
               "n_configs": len(results), "steps": int(sum(r.steps for r in results))}
    capped = [r.config_id for r in results if r.capped]
    if capped:
        details["capped"] = {"max_steps": settings.max_steps, "configs": capped}
    return Fitted(lambda x: predict_one(chosen, x, settings.eval_rows), chosen.valid_score, details)


def _fit(task: Task, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor,
         val_score: Callable[[torch.Tensor], np.ndarray], protocol: Protocol, settings: TrainSettings,
         on_progress: Progress | None, frame: bool = False) -> Fitted:
    if protocol.grid is None:
        return fit_linear_task(task, x, y, val_x, val_score, x.device)
    if frame:   # frame tasks: the quick configuration (an MLP with options.hidden), batch 256
        configs = [(0, replace(QUICK, hidden=int(task.spec.options.get("hidden", 0)), batch_size=256))]
    else:
        configs = protocol.configs()
    data = TrainData(x, y, val_x, val_score, task.n_outputs, task.output_grad)
    return fit_grid(configs, data, settings, on_progress)


# --------------------------------------------------------------------------- track-level tasks
@dataclass
class TrackSet:
    """A task's labelled tracks per split, their targets and songs (the same for every layer)."""

    task: Task
    splits: Splits
    index: dict[str, list[int]]
    tracks: dict[str, list[dict]]
    y: dict[str, np.ndarray]
    songs: dict[str, Songs]

    def ids(self, split: str) -> list[str]:
        return [str(t.get("track_id")) for t in self.tracks[split]]


Rows = dict[str, tuple[torch.Tensor, torch.Tensor]]   # split -> (rows, track position of each row)


def track_set(store: Embeddings, task: Task, splits: Splits = SPLITS) -> TrackSet:
    index = {s: _tracks_for(store, task, s) for s in splits.names()}
    for s, idx in index.items():
        if not idx:
            raise TaskDataError(f"task {task.name}: no labelled tracks in split '{s}'")
    task.fit([store.tracks[i] for s in index.values() for i in s])
    tracks = {s: [store.tracks[i] for i in idx] for s, idx in index.items()}
    songs = ({s: Songs.of(t, task.spec.group) for s, t in tracks.items()} if task.spec.group else {})
    y = {} if isinstance(task, FrameTask) else {s: task.targets(t) for s, t in tracks.items()}   # frames: per frame
    return TrackSet(task, splits, index, tracks, y, songs)


def track_rows(store: Embeddings, ts: TrackSet, fusion: str, device: torch.device) -> Rows:
    """Probe rows per split: the chunk embeddings (``late``) or their mean per track (``mean``)."""
    rows = {}
    for s, idx in ts.index.items():
        x_np, group_np = store.chunk_rows(idx)
        if len(x_np) == 0:
            raise TaskDataError(f"task {ts.task.name}: split '{s}' has no chunk embeddings")
        x, group = torch.as_tensor(x_np, device=device), torch.as_tensor(group_np, device=device)
        if fusion == "mean":
            x = fuse(x.unsqueeze(0), group, len(idx))[0]
            group = torch.arange(len(idx), device=device)
        elif fusion != "late":
            raise ValueError(f"fusion={fusion!r}: allowed values are mean, late")
        rows[s] = (x, group)
    return rows


def _track_val_score(ts: TrackSet, rows: Rows) -> Callable[[torch.Tensor], np.ndarray]:
    split = ts.splits.choose
    task = ts.task

    def val_score(outputs: torch.Tensor) -> np.ndarray:
        fused = fuse(outputs, rows[split][1], len(ts.index[split]))
        if ts.songs:   # JukeMIR's `score`: the best strategy's song-level score on valid
            assert isinstance(task, Multiclass)
            return task.song_primary_scores(fused, ts.y[split], ts.songs[split])
        return task.primary_scores(fused, ts.y[split])

    return val_score


def fit_track(ts: TrackSet, rows: Rows, protocol: Protocol, settings: TrainSettings,
              on_progress: Progress | None = None) -> Fitted:
    """Fit on the fit split's rows (each carrying its track's label), choose on the choose split."""
    x_tr, g_tr = rows[ts.splits.fit]
    y_rows = torch.as_tensor(ts.y[ts.splits.fit], device=x_tr.device)[g_tr]
    return _fit(ts.task, x_tr, y_rows, rows[ts.splits.choose][0], _track_val_score(ts, rows), protocol,
                settings, on_progress)


def track_outputs(ts: TrackSet, rows: Rows, chosen: Fitted, split: str) -> np.ndarray:
    """Per-track outputs of the chosen probe (chunk outputs averaged per track under late fusion)."""
    x, group = rows[split]
    return fuse(chosen.outputs(x).unsqueeze(0), group, len(ts.index[split]))[0].float().cpu().numpy()


def _primary_over(task: Task, outputs: np.ndarray, targets: np.ndarray) -> Callable[[np.ndarray], float]:
    def score(idx: np.ndarray) -> float:
        return float(task.primary_scores(outputs[None, idx], targets[idx])[0])
    return score


def _song_primary(task: Multiclass, pred: np.ndarray, y_song: np.ndarray) -> Callable[[np.ndarray], float]:
    def score(idx: np.ndarray) -> float:
        return float(task.primary_labels(pred[idx], y_song[idx]))
    return score


def _mean_of(values: np.ndarray) -> Callable[[np.ndarray], float]:
    def score(idx: np.ndarray) -> float:
        return _nanmean(values[idx])
    return score


def _mean_over(parts: Sequence[UnitScores]) -> Callable[[np.ndarray], float]:
    def score(idx: np.ndarray) -> float:
        return float(np.mean([p.score(idx) for p in parts]))
    return score


def score_track(ts: TrackSet, rows: Rows, chosen: Fitted) -> TaskResult:
    """Score each split of ``ts.splits.score`` once with the chosen probe."""
    task = ts.task
    details = dict(chosen.details, tracks={s: len(v) for s, v in ts.index.items()},
                   chunks={s: int(len(r[0])) for s, r in rows.items()})
    metrics: dict[str, float] = {}
    units: dict[str, UnitScores] = {}
    strategy = ""
    if ts.songs:
        assert isinstance(task, Multiclass)   # parse_tasks allows `group` only on GROUPED_TYPES
        valid = task.score_songs(track_outputs(ts, rows, chosen, ts.splits.choose), ts.y[ts.splits.choose],
                                 ts.songs[ts.splits.choose])
        strategy = best_ensemble(valid, task.primary)   # fixed before a scored split is looked at
        details["ensemble"] = {"strategy": strategy, "group": task.spec.group,
                               "songs": {s: len(v.ids) for s, v in ts.songs.items()},
                               "valid": {e: valid[e][task.primary] for e in ENSEMBLES}}
    for k, split in enumerate(ts.splits.score):
        out, y = track_outputs(ts, rows, chosen, split), ts.y[split]   # the only look at this split's labels
        prefix = f"{split}_" if k else ""
        if not ts.songs:
            values = task.score(out, y)
            units[split] = UnitScores(ts.ids(split), _primary_over(task, out, y))
        else:
            assert isinstance(task, Multiclass)
            songs = ts.songs[split]
            by_strategy = task.score_songs(out, y, songs)
            values = dict(by_strategy[strategy])
            values.update({f"clip_{m}": v for m, v in task.score(out, y).items()})
            details["ensemble"][split] = {e: by_strategy[e][task.primary] for e in ENSEMBLES}
            pred, y_song = ensemble(out, songs)[strategy], songs.song_targets(y)
            units[split] = UnitScores(songs.ids, _song_primary(task, pred, y_song), unit="song")
        metrics.update({prefix + m: v for m, v in values.items()})
    metrics[f"valid_{task.primary}"] = chosen.valid_score
    return TaskResult(metrics, details, units)


def evaluate_track_task(store: Embeddings | Mapping[int, Embeddings], task: Task,
                        protocol: str | Protocol | Setup | Sequence[tuple[int, ProbeConfig]],
                        settings: TrainSettings, on_progress: Progress | None = None, *,
                        fusion: str = DEFAULT_FUSION, splits: Splits = SPLITS, layers: str | int = "best") -> TaskResult:
    """Probe a track-level task on one store or on every layer of a layered store (``layers``):
    fit on the fit split, choose on the choose split, score the scored splits once."""
    from mirkit.eval.layers import choose_layer, fit_weighted, stack_layers
    stores = _layer_stores(store, task, layers)
    setup = as_setup(protocol)
    device = torch.device(settings.device)
    ts = track_set(next(iter(stores.values())), task, splits)
    if layers == "weighted" and len(stores) > 1:
        rows = stack_layers({k: track_rows(s, ts, fusion, device) for k, s in stores.items()})
        x_tr, g_tr = rows[splits.fit]
        y_rows = torch.as_tensor(ts.y[splits.fit], device=device)[g_tr]
        chosen = fit_weighted(task, x_tr, y_rows, rows[splits.choose][0], _track_val_score(ts, rows), list(stores))
        result = score_track(ts, rows, chosen)
        result.details["fusion"] = fusion
        return result
    fitted = {}
    for k, (layer, s) in enumerate(stores.items()):
        rows = track_rows(s, ts, fusion, device)
        report = _offset_progress(on_progress, k * setup.protocol.n_configs())
        fitted[layer] = (rows, fit_track(ts, rows, setup.protocol, settings, report))
    best = choose_layer({layer: f.valid_score for layer, (_, f) in fitted.items()})
    result = score_track(ts, *fitted[best])
    result.details["fusion"] = fusion
    if len(fitted) > 1:   # the per-layer curve: scored after the choice, which read valid only
        curve = {str(layer): {"valid": f.valid_score,
                              "test": score_track(ts, rows, f).metrics.get(task.primary, float("nan"))}
                 for layer, (rows, f) in fitted.items()}
        result.details["layers"] = {"mode": "best", "chosen": best, "curve": curve}
    return result


def _offset_progress(on_progress: Progress | None, offset: int) -> Progress | None:
    if on_progress is None or not offset:
        return on_progress
    return lambda done, step: on_progress(offset + done, step)


def _layer_stores(store: Embeddings | Mapping[int, Embeddings], task: Task,
                  layers: str | int) -> dict[int, Embeddings]:
    """The stores a task is probed on: one store, or the layers of a layered store (all of them, or
    the one ``layers`` names)."""
    if isinstance(store, Embeddings):
        return {store.layer if isinstance(store.layer, int) else -1: store}
    stores = dict(store)
    if isinstance(layers, int) and not isinstance(layers, bool):
        if layers not in stores:
            raise TaskDataError(f"task {task.name}: layer {layers} is not stored (layers: "
                                f"{', '.join(map(str, stores))})")
        return {layers: stores[layers]}
    if not stores:
        raise TaskDataError(f"task {task.name}: no embeddings store given")
    return stores


# --------------------------------------------------------------------------- frame-level tasks
FrameRows = dict[str, list[tuple[np.ndarray, np.ndarray]]]   # split -> per track (frames, times)


def _frame_stack(task: FrameTask, tracks: list[dict], frames: list[tuple[np.ndarray, np.ndarray]],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.concatenate([f for f, _ in frames])
    y = np.concatenate([task.frame_targets(t, times) for t, (_, times) in zip(tracks, frames, strict=True)])
    return torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)


def fit_frame(store: Embeddings, ts: TrackSet, protocol: Protocol, settings: TrainSettings,
              on_progress: Progress | None = None) -> tuple[FrameRows, Fitted]:
    """Per-frame probe chosen on the choose split's frame loss (vectorised; no mir_eval while fitting)."""
    task = ts.task
    assert isinstance(task, FrameTask)
    if not store.has_frames:
        raise TaskDataError(f"task {task.name}: {store.url} has no per-frame embeddings "
                            "(extract with frames enabled)")
    device = torch.device(settings.device)
    store.load_frames()
    frames = {s: [store.frames(i) for i in idx] for s, idx in ts.index.items()}
    x_tr, y_tr = _frame_stack(task, ts.tracks[ts.splits.fit], frames[ts.splits.fit], device)
    val_x, val_y = _frame_stack(task, ts.tracks[ts.splits.choose], frames[ts.splits.choose], device)

    def val_score(outputs: torch.Tensor) -> np.ndarray:
        return -task.losses(outputs.float(), val_y).cpu().numpy()

    chosen = _fit(task, x_tr, y_tr, val_x, val_score, protocol, settings, on_progress, frame=True)
    chosen.details["frames"] = {ts.splits.fit: int(len(x_tr)), ts.splits.choose: int(len(val_x))}
    return frames, chosen


def score_frame(ts: TrackSet, frames: FrameRows, chosen: Fitted, device: torch.device) -> TaskResult:
    """Tune the decoding on the choose split with mir_eval (the beat threshold), then score each scored
    split once; per-track scores are kept for bootstrap intervals."""
    task = ts.task
    assert isinstance(task, FrameTask)

    def activations(s: str) -> list[np.ndarray]:
        return [chosen.outputs(torch.as_tensor(f, device=device)).float().cpu().numpy() for f, _ in frames[s]]

    times = {s: [t for _, t in frames[s]] for s in frames}
    decode: dict[str, Any] = {}
    if task.spec.type == "beats":   # the peak-picking threshold is tuned on valid
        val_act = activations(ts.splits.choose)
        grid = [round(t, 2) for t in np.arange(0.1, 0.91, 0.1)]
        scores = [task.score_tracks(val_act, times[ts.splits.choose], ts.tracks[ts.splits.choose],
                                    threshold=t)[task.primary] for t in grid]
        decode["threshold"] = grid[int(np.argmax(scores))]
    metrics: dict[str, float] = {}
    units: dict[str, UnitScores] = {}
    for k, split in enumerate(ts.splits.score):
        act = activations(split)
        values = task.score_tracks(act, times[split], ts.tracks[split], **decode)
        metrics.update({(f"{split}_" if k else "") + m: v for m, v in values.items()})
        per = np.array([_one_track(task, a, t, tr, decode)
                        for a, t, tr in zip(act, times[split], ts.tracks[split], strict=True)])
        units[split] = UnitScores(ts.ids(split), _mean_of(per))
    details = dict(chosen.details, decode=decode, tracks={s: len(v) for s, v in ts.index.items()})
    return TaskResult(metrics, details, units)


def _one_track(task: FrameTask, act: np.ndarray, times: np.ndarray, track: dict, decode: dict[str, Any]) -> float:
    try:
        return float(task.score_tracks([act], [times], [track], **decode)[task.primary])
    except TaskDataError:   # e.g. a track without a majmin-scorable chord: left out, as in the mean
        return float("nan")


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if len(values) else float("nan")


def evaluate_frame_task(store: Embeddings | Mapping[int, Embeddings], task: FrameTask,
                        protocol: str | Protocol | Setup | Sequence[tuple[int, ProbeConfig]],
                        settings: TrainSettings, on_progress: Progress | None = None, *,
                        splits: Splits = SPLITS, layers: str | int = "best") -> TaskResult:
    """Per-frame probe chosen on the validation frame loss: the ``linear`` solver (strength chosen on the
    validation loss) or, for grid protocols, the quick configuration early-stopped on it. With several
    layers the layer is chosen on the same validation loss (``weighted`` is not offered for frames: the
    best layer is used). Decoding (the beat threshold) is then tuned on valid with mir_eval, and the
    scored splits are scored once."""
    from mirkit.eval.layers import choose_layer
    stores = _layer_stores(store, task, layers)
    setup = as_setup(protocol)
    ts = track_set(next(iter(stores.values())), task, splits)
    fitted = {layer: fit_frame(s, ts, setup.protocol, settings, _offset_progress(on_progress, k))
              for k, (layer, s) in enumerate(stores.items())}
    best = choose_layer({layer: f.valid_score for layer, (_, f) in fitted.items()})
    result = score_frame(ts, *fitted[best], torch.device(settings.device))
    if len(fitted) > 1:
        curve = {str(layer): {"valid": f.valid_score, "test": None} for layer, (_, f) in fitted.items()}
        result.details["layers"] = {"mode": "best", "chosen": best, "curve": curve,
                                    "note": "frame tasks choose the layer on the validation frame loss; "
                                            "only the chosen layer is decoded and scored"
                                            + ("; weighted is not offered for frame tasks" if layers == "weighted" else "")}
    return result


def protocol_configs(protocol: str) -> list[tuple[int, ProbeConfig]]:
    """The grid configurations of a registered protocol (kept for callers of the former API)."""
    from mirkit.eval.protocols import get_protocol
    return get_protocol(protocol).configs()


def evaluate_task(store: Embeddings | Mapping[int, Embeddings], task: Task,
                  protocol: str | Protocol | Setup | Sequence[tuple[int, ProbeConfig]] = "linear",
                  settings: TrainSettings | None = None, on_progress: Progress | None = None, *,
                  fusion: str = DEFAULT_FUSION, splits: Splits = SPLITS, layers: str | int = "best") -> TaskResult:
    """Probe one task: fit on ``splits.fit``, choose on ``splits.choose`` (never on a scored split's labels),
    score ``splits.score`` once. ``store``: an embeddings store or ``{layer: store}`` (every layer of a
    layered store, ``mirkit.eval.layers.open_layers``). ``fusion`` (track-level tasks): ``mean`` or ``late``."""
    settings = settings or TrainSettings()
    torch.manual_seed(settings.seed)
    if isinstance(task, FrameTask):
        return evaluate_frame_task(store, task, protocol, settings, on_progress, splits=splits, layers=layers)
    return evaluate_track_task(store, task, protocol, settings, on_progress, fusion=fusion, splits=splits,
                               layers=layers)


def combine_seeds(results: Sequence[TaskResult], primary: str) -> TaskResult:
    """Results of one task over several seeds: every metric averaged, ``<primary>_sd`` the standard
    deviation of the primary metric over seeds, and each split's units scored by the mean over seeds."""
    if len(results) == 1:
        return results[0]
    keys = [k for k in results[0].metrics if all(k in r.metrics for r in results)]
    metrics = {k: float(np.mean([r.metrics[k] for r in results])) for k in keys}
    values = [r.metrics.get(primary, float("nan")) for r in results]
    metrics[primary], metrics[f"{primary}_sd"] = seed_summary(values)
    units = {}
    for split, first in results[0].units.items():
        parts = [r.units[split] for r in results]
        if any(list(p.ids) != list(first.ids) for p in parts):
            continue
        units[split] = UnitScores(first.ids, _mean_over(parts),
                                  first.groups, first.unit)
    details = dict(results[0].details, seeds={"n": len(results), primary: values})
    return TaskResult(metrics, details, units)
