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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mirkit.eval.embeddings import Embeddings
from mirkit.eval.linear_probe import LAMBDAS, choose, fit_linear, one_hot
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

PROTOCOLS = ("linear", "quick", "jukemir")


@dataclass(frozen=True)
class ProbeConfig:
    standardize: bool
    hidden: int            # 0 = linear probe
    batch_size: int
    lr: float
    dropout: float
    weight_decay: float

    def label(self) -> str:
        arch = f"mlp{self.hidden}" if self.hidden else "linear"
        return (f"{arch} std={'on' if self.standardize else 'off'} bs={self.batch_size} lr={self.lr:g} "
                f"p={self.dropout:g} wd={self.weight_decay:g}")


def jukemir_grid() -> list[ProbeConfig]:
    """The 216 configurations of JukeMIR's ``_PAPER_GRID``, in a fixed order (ids = positions)."""
    return [ProbeConfig(s, h, b, lr, p, wd) for s, h, b, lr, p, wd in itertools.product(
        (False, True), (0, 512), (64, 256), (1e-5, 1e-4, 1e-3), (0.25, 0.5, 0.75), (0.0, 1e-4, 1e-3))]


QUICK = ProbeConfig(standardize=True, hidden=0, batch_size=64, lr=1e-3, dropout=0.25, weight_decay=0.0)


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
@dataclass
class TestUnits:
    """What a track-level test score was computed from, for resampling intervals: the scored units'
    ids (test tracks, or songs under the chosen ensemble) and ``primary(idx)``, the task's primary
    metric on the units at positions ``idx`` (repeats allowed: a bootstrap resample)."""

    ids: list[str]
    primary: Callable[[np.ndarray], float]


@dataclass
class TaskResult:
    metrics: dict[str, float]
    details: dict[str, Any]
    test: TestUnits | None = None


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
                    lambdas: tuple[float, ...] = LAMBDAS) -> Fitted:
    """The ``linear`` protocol: every strength fitted at once, the one best on ``val_score`` kept."""
    kind, targets, rows = _linear_targets(task, y)
    if rows is not None:
        x, targets = x[rows], targets[rows]
    fit = fit_linear(x, targets, kind, lambdas, device=device)
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


def evaluate_track_task(store: Embeddings, task: Task, protocol: str | Sequence[tuple[int, ProbeConfig]],
                        settings: TrainSettings, on_progress: Progress | None = None) -> TaskResult:
    """Probe a track-level task: fit on the train chunks, choose on valid (late fusion), score test once.
    ``protocol``: ``linear`` or the configurations to train."""
    device = torch.device(settings.device)
    splits = {s: _tracks_for(store, task, s) for s in ("train", "valid", "test")}
    for s, idx in splits.items():
        if not idx:
            raise TaskDataError(f"task {task.name}: no labelled tracks in split '{s}'")
    task.fit([store.tracks[i] for s in splits.values() for i in s])
    rows, y_track = {}, {}
    for s, idx in splits.items():
        x, group = store.chunk_rows(idx)
        rows[s] = (torch.as_tensor(x, device=device), torch.as_tensor(group, device=device))
        y_track[s] = task.targets([store.tracks[i] for i in idx])
        if len(x) == 0:
            raise TaskDataError(f"task {task.name}: split '{s}' has no chunk embeddings")
    x_tr, g_tr = rows["train"]
    y_rows = torch.as_tensor(y_track["train"], device=device)[g_tr]
    val_x, val_g = rows["valid"]
    songs = ({s: Songs.of([store.tracks[i] for i in idx], task.spec.group) for s, idx in splits.items()}
             if task.spec.group else {})

    def track_outputs(outputs: torch.Tensor, split: str) -> torch.Tensor:
        """Chunk outputs ``(G, rows, out)`` -> per-track outputs ``(G, tracks, out)`` (late fusion)."""
        return fuse(outputs, rows[split][1], len(splits[split]))

    def val_score(outputs: torch.Tensor) -> np.ndarray:
        fused = track_outputs(outputs, "valid")
        if songs:   # JukeMIR's `score`: the best strategy's song-level score on valid
            assert isinstance(task, Multiclass)
            return task.song_primary_scores(fused, y_track["valid"], songs["valid"])
        return task.primary_scores(fused, y_track["valid"])

    if protocol == "linear":
        chosen = fit_linear_task(task, x_tr, y_rows, val_x, val_score, device)
    else:
        configs = protocol_configs(protocol) if isinstance(protocol, str) else list(protocol)
        data = TrainData(x_tr, y_rows, val_x, val_score, task.n_outputs, task.output_grad)
        chosen = fit_grid(configs, data, settings, on_progress)
    details = dict(chosen.details, tracks={s: len(v) for s, v in splits.items()},
                   chunks={s: int(len(r[0])) for s, r in rows.items()})

    def chosen_outputs(split: str) -> np.ndarray:
        return track_outputs(chosen.outputs(rows[split][0]).unsqueeze(0), split)[0].float().cpu().numpy()

    test_ids = [str(store.tracks[i]["track_id"]) for i in splits["test"]]
    if not songs:
        test_out, y_test = chosen_outputs("test"), y_track["test"]
        metrics = task.score(test_out, y_test)   # the only look at test
        metrics[f"valid_{task.primary}"] = chosen.valid_score
        return TaskResult(metrics, details, TestUnits(
            test_ids, lambda idx: float(task.primary_scores(test_out[idx][None], y_test[idx])[0])))
    assert isinstance(task, Multiclass)   # parse_tasks allows `group` only on GROUPED_TYPES
    valid = task.score_songs(chosen_outputs("valid"), y_track["valid"], songs["valid"])
    strategy = best_ensemble(valid, task.primary)   # fixed before test is looked at
    test_out = chosen_outputs("test")
    test = task.score_songs(test_out, y_track["test"], songs["test"])   # the only look at test labels
    metrics = dict(test[strategy])
    metrics.update({f"clip_{k}": v for k, v in task.score(test_out, y_track["test"]).items()})
    metrics[f"valid_{task.primary}"] = chosen.valid_score
    details["ensemble"] = {"strategy": strategy, "group": task.spec.group,
                           "songs": {s: len(v.ids) for s, v in songs.items()},
                           "valid": {e: valid[e][task.primary] for e in ENSEMBLES},
                           "test": {e: test[e][task.primary] for e in ENSEMBLES}}
    song_pred = ensemble(test_out, songs["test"])[strategy]
    song_y = songs["test"].song_targets(y_track["test"])
    return TaskResult(metrics, details, TestUnits(
        list(songs["test"].ids), lambda idx: float(task.primary_labels(song_pred[idx], song_y[idx]))))


def evaluate_frame_task(store: Embeddings, task: FrameTask, protocol: str, settings: TrainSettings,
                        on_progress: Progress | None = None) -> TaskResult:
    """Per-frame probe chosen on the validation frame loss (vectorised; no mir_eval while fitting):
    the ``linear`` solver (strength chosen on the validation loss) or, for ``quick``/``jukemir``, the
    quick configuration early-stopped on the validation loss. Decoding (the beat threshold) is then
    tuned on valid with mir_eval, and test is scored once."""
    if not store.has_frames:
        raise TaskDataError(f"task {task.name}: {store.url} has no per-frame embeddings "
                            "(extract with frames enabled)")
    device = torch.device(settings.device)
    splits = {s: _tracks_for(store, task, s) for s in ("train", "valid", "test")}
    for s, idx in splits.items():
        if not idx:
            raise TaskDataError(f"task {task.name}: no annotated tracks in split '{s}'")
    task.fit([])
    store.load_frames()
    frames = {s: [store.frames(i) for i in idx] for s, idx in splits.items()}
    tracks = {s: [store.tracks[i] for i in idx] for s, idx in splits.items()}

    def stack(s: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate([f for f, _ in frames[s]])
        y = np.concatenate([task.frame_targets(t, times) for t, (_, times) in zip(tracks[s], frames[s], strict=True)])
        return torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)

    x_tr, y_tr = stack("train")
    val_x, val_y = stack("valid")

    def val_score(outputs: torch.Tensor) -> np.ndarray:
        return -task.losses(outputs.float(), val_y).cpu().numpy()

    if protocol == "linear":
        chosen = fit_linear_task(task, x_tr, y_tr, val_x, val_score, device)
    else:
        config = replace(QUICK, hidden=int(task.spec.options.get("hidden", 0)), batch_size=256)
        data = TrainData(x_tr, y_tr, val_x, val_score, task.n_outputs, task.output_grad)
        chosen = fit_grid([(0, config)], data, settings, on_progress)

    def activations(s: str) -> list[np.ndarray]:
        return [chosen.outputs(torch.as_tensor(f, device=device)).float().cpu().numpy() for f, _ in frames[s]]

    times = {s: [t for _, t in frames[s]] for s in splits}
    decode: dict[str, Any] = {}
    if task.spec.type == "beats":   # the peak-picking threshold is tuned on valid
        val_act = activations("valid")
        grid = [round(t, 2) for t in np.arange(0.1, 0.91, 0.1)]
        scores = [task.score_tracks(val_act, times["valid"], tracks["valid"], threshold=t)[task.primary]
                  for t in grid]
        decode["threshold"] = grid[int(np.argmax(scores))]
    metrics = task.score_tracks(activations("test"), times["test"], tracks["test"], **decode)
    details = dict(chosen.details, decode=decode, tracks={s: len(v) for s, v in splits.items()},
                   frames={"train": int(len(x_tr)), "valid": int(len(val_x))})
    return TaskResult(metrics, details)


def protocol_configs(protocol: str) -> list[tuple[int, ProbeConfig]]:
    if protocol == "quick":
        return [(jukemir_grid().index(QUICK), QUICK)]
    if protocol == "jukemir":
        return list(enumerate(jukemir_grid()))
    raise ValueError(f"protocol={protocol!r}: allowed values are {', '.join(PROTOCOLS)}")


def evaluate_task(store: Embeddings, task: Task, protocol: str, settings: TrainSettings,
                  on_progress: Progress | None = None) -> TaskResult:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: allowed values are {', '.join(PROTOCOLS)}")
    torch.manual_seed(settings.seed)
    if isinstance(task, FrameTask):
        return evaluate_frame_task(store, task, protocol, settings, on_progress)
    return evaluate_track_task(store, task, protocol, settings, on_progress)
