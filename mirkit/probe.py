"""Probe training on frozen embeddings: the JukeMIR grid, trained batched, and a quick probe.

Protocol ``jukemir`` follows p-lambda/jukemir (``jukemir/probe``, ``aggregate.py``): 216 configurations
(standardisation fitted on TRAIN only on/off x linear or one hidden layer of 512 x batch 64/256 x
lr 1e-5/1e-4/1e-3 x dropout .25/.5/.75 (input dropout, and after the hidden layer) x weight decay
0/1e-4/1e-3), Adam, random minibatches every step, the validation primary metric evaluated every
``eval_every`` steps, stop after ``patience`` evaluations without improvement and restore the best
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
weights ``(G, in, out)`` with ``torch.baddbmm`` and a manual batched Adam (per-configuration lr and
L2 weight decay, the torch.optim.Adam update). They see the same minibatch indices (the sampler is
seeded by the batch size); each configuration owns a generator, seeded by its grid position, for
its initial weights and dropout masks, so a configuration trains identically alone or in a stack.
Configurations that run out of patience are dropped from the stack. fp32 on every device.

Protocol ``quick``: one configuration of the grid (standardised linear probe, batch 64, lr 1e-3,
dropout .25, no weight decay). Frame-level tasks always use a quick per-frame probe whose early
stopping follows the validation loss (``hidden`` in the task options turns it into an MLP).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mirkit.embeddings import Embeddings
from mirkit.tasks import ENSEMBLES, FrameTask, Songs, Task, TaskDataError, best_ensemble

PROTOCOLS = ("quick", "jukemir")


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
    max_steps: int = 10000
    eval_every: int = 8       # JukeMIR: every 8 steps
    patience: int = 256       # evaluations without improvement (JukeMIR: 256)
    seed: int = 0
    device: str = "cpu"
    eval_rows: int = 8192     # rows per forward pass when evaluating
    stack: int = 0            # most configurations trained together (0 = a whole (batch, hidden) group)


@dataclass
class ConfigResult:
    config: ProbeConfig
    config_id: int
    valid_score: float
    best_step: int
    steps: int
    params: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


# --------------------------------------------------------------------------- stacked probe
def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, device=device) * 2 - 1) * bound


def init_params(config: ProbeConfig, n_in: int, n_out: int, gen: torch.Generator,
                device: torch.device) -> dict[str, torch.Tensor]:
    """One configuration's weights, ``nn.Linear``'s default init (U(±1/sqrt(fan_in)))."""
    sizes = [n_in, config.hidden, n_out] if config.hidden else [n_in, n_out]
    params = {}
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        bound = 1 / math.sqrt(a)
        params[f"w{k}"] = _uniform((a, b), bound, gen, device)
        params[f"b{k}"] = _uniform((1, b), bound, gen, device)
    return params


def _dropout(h: torch.Tensor, keep: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Inverted dropout with one mask per configuration, each drawn from its own generator."""
    u = torch.empty_like(h)
    for j, g in enumerate(gens):
        u[j].uniform_(generator=g)
    return torch.where(u < keep, h / keep, torch.zeros((), dtype=h.dtype, device=h.device))


def forward(params: dict[str, torch.Tensor], x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
            keep: torch.Tensor | None = None, gens: Sequence[torch.Generator] = ()) -> torch.Tensor:
    """Outputs ``(G, rows, n_out)`` of G stacked probes on shared inputs ``x`` ``(rows, in)``.

    ``shift``/``scale`` ``(G, 1, in)`` standardise per configuration (0/1 when off); ``keep``
    ``(G, 1, 1)`` = 1 - dropout enables training-mode dropout.
    """
    h = (x.unsqueeze(0) - shift) * scale
    if keep is not None:
        h = _dropout(h, keep, gens)
    if "w2" in params:
        h = torch.relu(torch.baddbmm(params["b1"], h, params["w1"]))
        if keep is not None:
            h = _dropout(h, keep, gens)
        return torch.baddbmm(params["b2"], h, params["w2"])
    return torch.baddbmm(params["b1"], h, params["w1"])


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
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for k, p in self.params.items():
            g = p.grad + self.wd * p
            self.m[k].mul_(b1).add_(g, alpha=1 - b1)
            self.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.v[k].sqrt() / math.sqrt(c2)).add_(self.eps)
            p.sub_(self.lr / c1 * self.m[k] / denom)
            p.grad = None

    def keep_only(self, mask: torch.Tensor) -> None:
        self.lr, self.wd = self.lr[mask], self.wd[mask]
        self.m = {k: v[mask] for k, v in self.m.items()}
        self.v = {k: v[mask] for k, v in self.v.items()}


def _config_seed(seed: int, config_id: int) -> int:
    return seed * 1_000_003 + 7919 * config_id + 1


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@dataclass
class TrainData:
    """Training rows and a validation scorer.

    ``val_score(outputs)`` maps validation outputs ``(G, val_rows, n_out)`` to one score per
    configuration (higher is better)."""

    x: torch.Tensor
    y: torch.Tensor
    val_x: torch.Tensor
    val_score: Callable[[torch.Tensor], np.ndarray]
    n_out: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std of the TRAIN rows (StandardScaler: constant columns keep scale 1)."""
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True)
    return mean, torch.where(std > 1e-8, 1 / std, torch.ones_like(std))


@torch.no_grad()
def predict(params: dict[str, torch.Tensor], x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
            rows: int = 8192) -> torch.Tensor:
    parts = [forward(params, x[i:i + rows], shift, scale) for i in range(0, len(x), rows)]
    return torch.cat(parts, 1) if parts else torch.zeros(shift.shape[0], 0, params["b1"].shape[-1])


def train_group(configs: Sequence[tuple[int, ProbeConfig]], data: TrainData, settings: TrainSettings,
                on_eval: Callable[[int], None] | None = None) -> list[ConfigResult]:
    """Train configurations sharing (batch size, hidden) as one stack; returns their best states."""
    device = torch.device(settings.device)
    bs, hidden = configs[0][1].batch_size, configs[0][1].hidden
    assert all(c.batch_size == bs and c.hidden == hidden for _, c in configs)
    n_in = data.x.shape[1]
    gens = [_generator(_config_seed(settings.seed, cid), device) for cid, _ in configs]
    per = [init_params(c, n_in, data.n_out, g, device) for (_, c), g in zip(configs, gens)]
    params = {k: torch.stack([p[k] for p in per]).requires_grad_(True) for k in per[0]}
    mean, inv_std = standardizer(data.x)
    std_on = torch.tensor([c.standardize for _, c in configs], device=device).view(-1, 1, 1)
    shift = torch.where(std_on, mean, torch.zeros_like(mean))
    scale = torch.where(std_on, inv_std, torch.ones_like(inv_std))
    keep = torch.tensor([1 - c.dropout for _, c in configs], device=device).view(-1, 1, 1)
    opt = BatchedAdam(params, torch.tensor([c.lr for _, c in configs], device=device).view(-1, 1, 1),
                      torch.tensor([c.weight_decay for _, c in configs], device=device).view(-1, 1, 1))
    sampler = _generator(settings.seed * 1_000_003 + bs, torch.device("cpu"))

    active = list(range(len(configs)))
    best = {k: v.detach().clone() for k, v in params.items()}
    best_score = np.full(len(configs), -np.inf)
    best_step = np.zeros(len(configs), dtype=np.int64)
    waited = np.zeros(len(configs), dtype=np.int64)
    results: dict[int, ConfigResult] = {}

    def finish(pos: list[int], step: int) -> None:
        for j in pos:
            a = active[j]
            cid, cfg = configs[a]
            results[a] = ConfigResult(cfg, cid, float(best_score[a]), int(best_step[a]), step,
                                      {k: v[j].detach().clone() for k, v in best.items()}
                                      | {"shift": shift[j], "scale": scale[j]})

    n = len(data.x)
    step = 0
    while active and step < settings.max_steps:
        idx = torch.randint(n, (bs,), generator=sampler).to(device)
        g = len(active)
        out = forward(params, data.x[idx], shift, scale, keep, gens)
        target = data.y[idx].unsqueeze(0).expand(g, *data.y[idx].shape)
        (data.loss(out, target) * g).backward()   # sum of the per-configuration mean losses
        opt.step()
        step += 1
        if step % settings.eval_every and step != settings.max_steps:
            continue
        with torch.no_grad():
            scores = np.nan_to_num(np.asarray(data.val_score(predict(params, data.val_x, shift, scale,
                                                                     settings.eval_rows)), dtype=np.float64),
                                   nan=-np.inf)
        for j, a in enumerate(active):
            if scores[j] > best_score[a]:
                best_score[a], best_step[a], waited[a] = scores[j], step, 0
                for k in best:
                    best[k][j] = params[k][j].detach()
            else:
                waited[a] += 1
        if on_eval:
            on_eval(step)
        done = [j for j, a in enumerate(active) if waited[a] >= settings.patience]
        if done and step < settings.max_steps:
            finish(done, step)
            mask = torch.ones(g, dtype=torch.bool, device=device)
            mask[done] = False
            with torch.no_grad():
                for k in list(params):
                    params[k] = params[k][mask].detach().requires_grad_(True)
                    best[k] = best[k][mask]
            opt.params = params
            opt.keep_only(mask)
            shift, scale, keep = shift[mask], scale[mask], keep[mask]
            gens = [gg for j, gg in enumerate(gens) if j not in done]
            active = [a for j, a in enumerate(active) if j not in done]
    finish(list(range(len(active))), step)
    return [results[a] for a in range(len(configs))]


def train_configs(configs: Sequence[tuple[int, ProbeConfig]], data: TrainData, settings: TrainSettings,
                  on_eval: Callable[[int], None] | None = None) -> list[ConfigResult]:
    """Train any set of configurations, grouped by (batch size, hidden) into stacks."""
    groups: dict[tuple[int, int], list[tuple[int, ProbeConfig]]] = {}
    for cid, c in configs:
        groups.setdefault((c.batch_size, c.hidden), []).append((cid, c))
    results = []
    for key in sorted(groups):
        group = groups[key]
        size = settings.stack or len(group)
        for lo in range(0, len(group), size):
            results.extend(train_group(group[lo: lo + size], data, settings, on_eval))
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
class TaskResult:
    metrics: dict[str, float]
    details: dict[str, Any]


def _tracks_for(store: Embeddings, task: Task, split: str) -> list[int]:
    return [i for i in store.split(split) if task.keep(store.tracks[i])]


def evaluate_track_task(store: Embeddings, task: Task, configs: Sequence[tuple[int, ProbeConfig]],
                        settings: TrainSettings, on_eval: Callable[[int], None] | None = None) -> TaskResult:
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

    def track_outputs(outputs: torch.Tensor, split: str) -> np.ndarray:
        """Chunk outputs ``(G, rows, out)`` -> per-track outputs ``(G, tracks, out)`` (late fusion)."""
        return fuse(outputs, rows[split][1], len(splits[split])).float().cpu().numpy()

    def val_score(outputs: torch.Tensor) -> np.ndarray:
        fused = track_outputs(outputs, "valid")
        if songs:   # JukeMIR's `score`: the best strategy's song-level score on valid
            return np.array([max(m[task.primary] for m in task.score_songs(f, y_track["valid"], songs["valid"]).values())
                             for f in fused])
        return np.array([task.score(f, y_track["valid"])[task.primary] for f in fused])

    data = TrainData(x_tr, y_rows, val_x, val_score, task.n_outputs, task.loss)
    results = train_configs(configs, data, settings, on_eval)
    chosen = select(results)
    details = {"config": asdict(chosen.config), "config_id": chosen.config_id, "best_step": chosen.best_step,
               "n_configs": len(results), "tracks": {s: len(v) for s, v in splits.items()},
               "chunks": {s: int(len(r[0])) for s, r in rows.items()}}

    def chosen_outputs(split: str) -> np.ndarray:
        return track_outputs(predict_one(chosen, rows[split][0]).unsqueeze(0), split)[0]

    if not songs:
        metrics = task.score(chosen_outputs("test"), y_track["test"])   # the only look at test
        metrics[f"valid_{task.primary}"] = chosen.valid_score
        return TaskResult(metrics, details)
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
    return TaskResult(metrics, details)


def evaluate_frame_task(store: Embeddings, task: FrameTask, settings: TrainSettings,
                        on_eval: Callable[[int], None] | None = None) -> TaskResult:
    """Quick per-frame probe; early stopping on the validation loss; decoding tuned on valid."""
    if not store.has_frames:
        raise TaskDataError(f"task {task.name}: {store.url} has no per-frame embeddings "
                            "(extract with frames enabled)")
    device = torch.device(settings.device)
    splits = {s: _tracks_for(store, task, s) for s in ("train", "valid", "test")}
    for s, idx in splits.items():
        if not idx:
            raise TaskDataError(f"task {task.name}: no annotated tracks in split '{s}'")
    task.fit([])
    frames = {s: [store.frames(i) for i in idx] for s, idx in splits.items()}
    tracks = {s: [store.tracks[i] for i in idx] for s, idx in splits.items()}

    def stack(s: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate([f for f, _ in frames[s]])
        y = np.concatenate([task.frame_targets(t, times) for t, (_, times) in zip(tracks[s], frames[s])])
        return torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)

    x_tr, y_tr = stack("train")
    val_x, val_y = stack("valid")

    def val_score(outputs: torch.Tensor) -> np.ndarray:
        return np.array([-float(task.loss(o, val_y)) for o in outputs])

    config = replace(QUICK, hidden=int(task.spec.options.get("hidden", 0)), batch_size=256)
    data = TrainData(x_tr, y_tr, val_x, val_score, task.n_outputs, task.loss)
    (chosen,) = train_configs([(0, config)], data, settings, on_eval)

    def activations(s: str) -> list[np.ndarray]:
        return [predict_one(chosen, torch.as_tensor(f, device=device)).cpu().numpy() for f, _ in frames[s]]

    times = {s: [t for _, t in frames[s]] for s in splits}
    decode: dict[str, Any] = {}
    if task.spec.type == "beats":   # the peak-picking threshold is tuned on valid
        val_act = activations("valid")
        grid = [round(t, 2) for t in np.arange(0.1, 0.91, 0.1)]
        scores = [task.score_tracks(val_act, times["valid"], tracks["valid"], threshold=t)[task.primary]
                  for t in grid]
        decode["threshold"] = grid[int(np.argmax(scores))]
    metrics = task.score_tracks(activations("test"), times["test"], tracks["test"], **decode)
    details = {"config": asdict(config), "best_step": chosen.best_step, "decode": decode,
               "tracks": {s: len(v) for s, v in splits.items()},
               "frames": {"train": int(len(x_tr)), "valid": int(len(val_x))}}
    return TaskResult(metrics, details)


def protocol_configs(protocol: str) -> list[tuple[int, ProbeConfig]]:
    if protocol == "quick":
        return [(jukemir_grid().index(QUICK), QUICK)]
    if protocol == "jukemir":
        return list(enumerate(jukemir_grid()))
    raise ValueError(f"protocol={protocol!r}: allowed values are {', '.join(PROTOCOLS)}")


def evaluate_task(store: Embeddings, task: Task, protocol: str, settings: TrainSettings,
                  on_eval: Callable[[int], None] | None = None) -> TaskResult:
    torch.manual_seed(settings.seed)
    if isinstance(task, FrameTask):
        return evaluate_frame_task(store, task, settings, on_eval)
    return evaluate_track_task(store, task, protocol_configs(protocol), settings, on_eval)
