"""The one training loop, shared by every recipe.

It knows nothing about papers: a recipe (``mirkit.recipes``) says which features to read, how to
draw one example and what the loss is. The loop does devices, bf16 autocast on CUDA (fp32 on
CPU), AdamW/Adam with cosine schedule and warm-up, gradient clipping, optional torch.compile,
DDP under ``torchrun``, atomic checkpoints, exact resume, NaN guards, a validation loss on a
held-out split and step metrics through dvclive (:mod:`mirkit.train.live`).

Reproducibility: example ``k`` of the run (a global counter over steps × global batch) is drawn
from ``numpy.random.default_rng([seed, k])`` and the torch RNG is re-seeded at every step from
``(seed, step, rank)``; so a resumed run replays exactly what an uninterrupted one would do, and
under DDP the global batch holds the same examples whatever the number of processes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from mirkit import recipes
from mirkit.data import store
from mirkit.data.manifest import read_manifest
from mirkit.device import DEVICES, pick
from mirkit.errors import MirkitError
from mirkit.files import write_json
from mirkit.params import ParamsError, param, resolve
from mirkit.recipes.base import Example, Recipe, Sources
from mirkit.train import checkpoint
from mirkit.train.callbacks import Callback, OnStep, RunInfo
from mirkit.train.live import TrainLog, grouped


@dataclass
class PretrainParams:
    """Section ``pretrain`` of params.yaml."""

    recipe: str = param("myna", help="myna | contrastive | mt2 | muse-lq")
    preset: str | None = param(None, help="model preset; null = the recipe's own default")
    recipe_params: dict = param({}, help="per-recipe parameters: {recipe name: {key: value}}")
    features: str = param("data/features.zarr", help="feature store written by `mirkit mels`")
    tokens: str = param("data/tokens.zarr", help="token store written by `mirkit tokens` (muse-lq)")
    manifest: str | None = param(None, help="optional manifest to restrict training tracks by split")
    splits: list[str] = param(["train"], help="splits of `manifest` used for pretraining")
    val_split: str | None = param(None, help="split of `manifest` held out for the validation loss (the "
                                             "recipe's own loss on fixed crops); null = none")
    val_every: int = param(100, ge=1, help="steps between validation losses (also at the last step)")
    val_batches: int = param(4, ge=1, help="held-out batches of `batch_size` fixed examples per validation")
    out: str = param("models/pretrain", help="training run folder: step-N/model (encoder) + step-N/training (resume)")
    log: str = param("results/pretrain/live", help="dvclive folder: metrics.json (dvc metrics / exp show) "
                                                   "and one curve per metric under plots/metrics (dvc plots)")
    summary: str = param("results/pretrain/summary.json", help="final numbers (a DVC metric)")
    steps: int = param(200, ge=1)
    batch_size: int = param(16, ge=2, help="GLOBAL batch (split over DDP ranks)")
    optimizer: str = param("adamw", choices=("adamw", "adam"))
    lr: float = param(3e-4, gt=0.0)
    min_lr_ratio: float = param(0.01, ge=0.0, le=1.0, help="cosine floor as a fraction of lr")
    warmup_steps: int = param(10, ge=0)
    weight_decay: float = param(0.01, ge=0.0)
    betas: list[float] = param([0.9, 0.98])
    grad_clip: float = param(1.0, ge=0.0, help="max gradient norm; 0 disables")
    seed: int = param(42)
    num_workers: int = param(0, ge=0)
    in_memory: bool = param(True, help="load the feature set into RAM; false: read from the store, keeping "
                                       "recently used tracks in a 1 GiB cache per loader process")
    stream: bool = param(False, help="stream a store larger than RAM in large chunk-aligned blocks through "
                                     "per-lane shuffle buffers (mirkit.data.stream; docs/scale.md)")
    stream_block_mib: float = param(16.0, gt=0.0, help="target size of one block read (whole Zarr shards)")
    stream_buffer: int = param(4, ge=1, help="blocks per lane in the shuffle buffer")
    stream_lanes: int = param(8, ge=1, help="block streams the global batch is cut into (divides batch_size; "
                                            "a multiple of the DDP processes)")
    stream_memory_gib: float = param(4.0, gt=0.0, help="bound on one rank's loader buffers (+ read-ahead)")
    stream_read_threads: int = param(2, ge=1, help="background block readers per loader process")
    stream_repeat: int = param(1, ge=1, help="examples per streamed track per pass (independent crops of one read)")
    compile: bool = param(False, help="torch.compile the model")
    device: str = param("auto", choices=DEVICES)
    precision: str = param("auto", choices=("auto", "bf16", "fp32"), help="auto = bf16 on CUDA, fp32 on CPU")
    online_probe: dict = param({}, help="online probes: {manifest, tasks, every, protocol, ...} "
                                       "(mirkit.eval.online_probe); empty = none. Read by the pretrain "
                                       "command, which passes them to the loop as a callback")
    log_every: int = param(10, ge=1)
    checkpoint_every: int = param(100, ge=1)

    def check(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ParamsError(f"pretrain.betas={self.betas}: expected two numbers in [0, 1)")
        if self.warmup_steps >= self.steps and self.steps > 1:
            raise ParamsError(f"pretrain.warmup_steps={self.warmup_steps}: must be < steps ({self.steps})")
        if self.val_split is not None and self.val_split in self.splits:
            raise ParamsError(f"pretrain.val_split={self.val_split!r} is also in pretrain.splits={self.splits}: "
                              "the validation loss must be measured on tracks the model does not train on")
        if self.val_split is not None and not self.manifest:
            raise ParamsError(f"pretrain.val_split={self.val_split!r} needs pretrain.manifest (which names the splits)")


#: per-process LRU of whole tracks when the set is not loaded into RAM (``in_memory: false``)
TRACK_CACHE_BYTES = 1 << 30


class TrainingDiverged(MirkitError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def make_recipe(p: PretrainParams) -> Recipe:
    """The recipe named by ``p.recipe`` with its validated parameters (preset from ``p.preset``)."""
    cls = recipes.get(p.recipe)
    raw = p.recipe_params.get(p.recipe) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"pretrain.recipe_params.{p.recipe}={raw!r}: expected a mapping of the recipe's keys, "
                          f"e.g. {{preset: ...}}")
    raw = dict(raw)
    if p.preset:
        raw["preset"] = p.preset
    return cls(resolve(cls.Params, raw, section=f"pretrain.recipe_params.{p.recipe}"))


def open_sources(p: PretrainParams, recipe: Recipe) -> tuple[Sources, list[int]]:
    """Open the recipe's feature (and token) sets and pick the training tracks."""
    try:
        feats = store.open_set(p.features, recipe.feature_set)
    except store.StoreError as exc:
        raise store.StoreError(f"{exc} — run `mirkit mels` with '{recipe.feature_set}' in mels.feature_sets") from None
    tokens = None
    if recipe.needs_tokens:
        try:
            tokens = store.open_set(p.tokens, recipe.feature_set)
        except store.StoreError as exc:
            raise store.StoreError(f"{exc} — run `mirkit tokens` on feature set '{recipe.feature_set}'") from None
        if [t.track_id for t in tokens.tracks] != [t.track_id for t in feats.tracks]:
            raise store.StoreError(f"{p.tokens}: tokens are not aligned with {p.features} (re-run `mirkit tokens`)")
    in_memory = choose_in_memory(p, feats, tokens)
    for frames in (feats, tokens):
        if frames is not None:   # streaming reads blocks itself; the track cache serves the validation split
            frames.load_into_memory() if in_memory else frames.cache_tracks(TRACK_CACHE_BYTES)
    chosen = tracks_of_splits(p, feats, p.splits) if p.manifest else list(range(len(feats)))
    if len(chosen) < 2:
        raise store.StoreError(f"{p.features}/{recipe.feature_set}: {len(chosen)} usable track(s); pretraining needs at least 2")
    return Sources(feats, tokens), chosen


#: ``in_memory: true`` refuses a set that would take more than this share of the RAM available now
RAM_SHARE = 0.5


def choose_in_memory(p: PretrainParams, *sets: Any) -> bool:
    """Whether to load the sets into RAM, from their estimated size: ``stream: true`` never does;
    ``in_memory: true`` refuses (one line, advising ``stream: true``) a corpus larger than half the
    RAM available, rather than failing in the middle of loading it."""
    from mirkit.data import stream
    if p.stream:
        return False
    if p.in_memory:
        size = sum(stream.estimated_bytes(s) for s in sets if s is not None)
        free = stream.available_ram()
        if size > RAM_SHARE * free:
            raise ParamsError(f"pretrain.in_memory=true: the feature set is ~{stream.human(size)}, more than half the "
                              f"{stream.human(free)} of RAM available; set pretrain.stream: true (docs/scale.md)")
    return p.in_memory


def make_loader(p: PretrainParams, recipe: Recipe, sources: Sources, tracks: list[int], start: int,
                info: DistInfo, device: torch.device) -> Any:
    """The batches of this rank for steps ``start..steps-1``: streamed blocks (``stream: true``) or
    examples addressed by global counters from RAM / the track cache."""
    if p.stream:
        from mirkit.data import stream
        settings = stream.StreamSettings(p.stream_block_mib, p.stream_buffer, p.stream_lanes, p.stream_memory_gib,
                                         p.stream_read_threads, p.stream_repeat)
        return stream.make_loader(recipe, sources, tracks, settings, batch=p.batch_size, seed=p.seed, start=start,
                                  steps=p.steps, rank=info.rank, world=info.world, workers=p.num_workers,
                                  pin_memory=device.type == "cuda")
    return DataLoader(ExampleStream(recipe, sources, tracks, p.seed),
                      batch_sampler=batch_indices(start, p.steps, p.batch_size, info.rank, info.world),
                      num_workers=p.num_workers, pin_memory=device.type == "cuda", persistent_workers=False)


def tracks_of_splits(p: PretrainParams, feats: Any, splits: list[str]) -> list[int]:
    """Positions in the feature set of the manifest's tracks whose split is in ``splits``."""
    if not p.manifest:
        raise ParamsError(f"pretrain.splits={splits}: choosing tracks by split needs pretrain.manifest")
    wanted = {t.track_id for t in read_manifest(p.manifest) if t.split in splits}
    return [i for i, t in enumerate(feats.tracks) if t.track_id in wanted]


class Validation:
    """The recipe's own loss on held-out tracks: ``val_batches`` batches of fixed examples (crops
    drawn once from ``rng([seed, 1, k])``), the model in eval mode, masks from a fixed seed inside a
    forked RNG, so the numbers are deterministic and the training RNG stream is untouched (resume
    stays exact). Under DDP every rank evaluates its share of each batch (contrastive negatives span
    the global batch, as in training) and the means are averaged."""

    def __init__(self, p: PretrainParams, recipe: Recipe, sources: Sources, info: DistInfo, device: torch.device):
        if p.val_split is None:
            raise ParamsError("pretrain.val_split: the validation loss needs a split to hold out")
        tracks = tracks_of_splits(p, sources.features, [p.val_split])
        if not tracks:
            raise store.StoreError(f"{p.features}/{recipe.feature_set}: no track of split '{p.val_split}' of "
                                   f"{p.manifest} (pretrain.val_split)")
        from torch.utils.data import default_collate
        stream = ExampleStream(recipe, sources, tracks, p.seed)
        self.batches = [default_collate([stream[k] for k in idx])
                        for idx in batch_indices(0, p.val_batches, p.batch_size, info.rank, info.world)]
        self.n_tracks, self.seed, self.info, self.device = len(tracks), p.seed, info, device

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, bf16: bool) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            for batch in self.batches:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(batch)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        model.train(was_training)
        return _mean_across({k: v / len(self.batches) for k, v in sums.items()}, self.info, self.device)


class ExampleStream(Dataset):
    """Example ``k`` of the run: track from a per-epoch permutation, views from ``rng([seed, k])``;
    ``index`` is the track's position in the feature set (per-item state such as SogCLR's keys on it)."""

    def __init__(self, recipe: Recipe, sources: Sources, tracks: list[int], seed: int):
        self.recipe, self.sources, self.tracks, self.seed = recipe, sources, tracks, seed

    def __len__(self) -> int:  # examples are addressed by a global counter
        return 2 ** 62

    def track_of(self, k: int) -> int:
        n = len(self.tracks)
        perm = np.random.default_rng([self.seed, 0, k // n]).permutation(n)
        return self.tracks[int(perm[k % n])]

    def __getitem__(self, k: int) -> Example:
        track = self.track_of(k)
        return {**self.recipe.sample(self.sources, track, np.random.default_rng([self.seed, 1, k])),
                "index": np.int64(track)}


def batch_indices(start_step: int, steps: int, batch: int, rank: int, world: int) -> list[list[int]]:
    """Global example counters of this rank's share of every step."""
    local = batch // world
    return [[s * batch + rank * local + j for j in range(local)] for s in range(start_step, steps)]


def lr_factor(step: int, p: PretrainParams) -> float:
    """Linear warm-up, then cosine from 1 to ``min_lr_ratio``."""
    if step < p.warmup_steps:
        return (step + 1) / (p.warmup_steps + 1)
    progress = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
    return p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and other 1-D parameters (common ViT/STONE practice)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, prm in model.named_parameters():
        if prm.requires_grad:
            (decay if prm.ndim >= 2 else no_decay).append(prm)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the model whose forward computes the loss (so the gradient hooks see the whole objective).
    Every recipe uses all its parameters at every step, so no unused-parameter search is needed."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)


def _mean_across(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    if info.world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist(), strict=True)}


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    seconds: float
    samples_per_s: float
    n_params: int
    out: str
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    eval_seconds: float = 0.0          # validation loss and callbacks' evaluations (inside ``seconds``)
    callback_seconds: dict[str, float] = field(default_factory=dict)   # per callback name (inside ``eval_seconds``)


def train(p: PretrainParams, resume: bool = False,
          on_step: Callable[[int, dict[str, float]], None] | None = None,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Pretrain ``p.recipe`` on the feature store; returns the final numbers. ``callbacks``
    (:mod:`mirkit.train.callbacks`) take part in the run, e.g. online probes; ``on_step(step, row)``
    is a shorthand for a callback called after every logged step."""
    info = init_distributed(p.device)
    if p.batch_size % info.world:
        raise ParamsError(f"pretrain.batch_size={p.batch_size}: must be divisible by the {info.world} DDP processes")
    device = pick(p.device)
    if device.type == "cuda" and info.world > 1:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    bf16 = p.precision == "bf16" or (p.precision == "auto" and device.type == "cuda")

    recipe = make_recipe(p)
    sources, tracks = open_sources(p, recipe)
    recipe.prepare(sources)
    torch.manual_seed(p.seed)
    model = recipe.build_model().to(device)
    if info.world > 1 and device.type == "cuda":  # batch statistics over the global batch (CUDA-only in torch)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_params = sum(x.numel() for x in model.parameters())

    start = 0
    opt_cls = torch.optim.AdamW if p.optimizer == "adamw" else torch.optim.Adam
    # fused: one vectorised pass over each parameter instead of a Python loop of elementwise ops
    # (torch's CPU default); a fixed per-step cost that dominates once Myna drops 90 % of its tokens
    # (bench/bench_mfu.py, docs/benchmarks.md)
    # check() guarantees exactly two betas
    optimizer = opt_cls(param_groups(model, p.weight_decay), lr=p.lr, betas=(p.betas[0], p.betas[1]),
                        fused=device.type in ("cpu", "cuda"))
    if resume and checkpoint.has_train_state(p.out):
        state = checkpoint.load_train_state(p.out)
        step_w = checkpoint.load_weights(p.out, model)
        if step_w != state["step"]:
            raise checkpoint.CheckpointError(f"{p.out}: weights (step {step_w}) and training state "
                                             f"(step {state['step']}) are from different moments")
        checkpoint.restore_optimizer(optimizer, state, p.out)
        start = int(state["step"])
    train_module: torch.nn.Module = wrap_ddp(model, device) if info.world > 1 else model
    if p.compile:
        train_module = cast(torch.nn.Module, torch.compile(train_module))   # an OptimizedModule

    loader = make_loader(p, recipe, sources, tracks, start, info, device)
    config = checkpoint.make_config(recipe, sources.features.spec, start, _plain(p))
    validation = Validation(p, recipe, sources, info, device) if p.val_split else None
    log = TrainLog(p.log, start) if info.main else None
    hooks = [*callbacks, *([OnStep(on_step)] if on_step else [])]
    run = RunInfo(model=model, device=device, rank=info.rank, world=info.world, steps=p.steps, start=start,
                  features=p.features, feature_set=recipe.feature_set, out=p.out,
                  config=lambda s: checkpoint.make_config(recipe, sources.features.spec, s, _plain(p)))
    for hook in hooks:
        hook.on_start(run)
    callback_seconds = {hook.name: 0.0 for hook in hooks}

    def evaluate(done: int) -> dict[str, float]:
        """Validation loss and the callbacks' values at their steps (dvclive names); step 0 is the
        untrained baseline."""
        values: dict[str, float] = {}
        if validation is not None and (done % p.val_every == 0 or done == p.steps):
            values.update(grouped("val", validation(model, bf16)))
        for hook in hooks:
            t = time.perf_counter()
            values.update(hook.evaluate(run, done))
            callback_seconds[hook.name] += time.perf_counter() - t
        return values

    history: list[dict[str, float]] = []
    model.train()
    last: dict[str, float]
    t0, seen, last, eval_seconds = time.perf_counter(), 0, {}, 0.0
    if start == 0:   # the untrained baseline
        first = evaluate(0)
        if first:
            history.append({**first, "step": 0})
            if log is not None:
                log.log(0, first)
        eval_seconds = time.perf_counter() - t0
    step = start
    for step, batch in enumerate(loader, start=start):
        for group in optimizer.param_groups:
            group["lr"] = p.lr * lr_factor(step, p)
        torch.manual_seed(p.seed * 1_000_003 + step * 4099 + info.rank)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = train_module(batch)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()).all():
            raise TrainingDiverged(f"step {step}: loss is {loss.item()}; stopped. The last good checkpoint "
                                   f"in {p.out} (step {config.step}) is kept — lower pretrain.lr or check the data.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip if p.grad_clip > 0 else float("inf"))
        if not torch.isfinite(grad_norm):
            raise TrainingDiverged(f"step {step}: gradient norm is {grad_norm.item()}; stopped. The last good "
                                   f"checkpoint in {p.out} (step {config.step}) is kept.")
        optimizer.step()
        seen += p.batch_size
        done = step + 1
        values: dict[str, float] = {}
        if done % p.log_every == 0 or done == p.steps:
            train_time = time.perf_counter() - t0 - eval_seconds
            row = {k: float(v.detach()) for k, v in out.items()}
            row = _mean_across(row, info, device)
            row.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm),
                       samples_per_s=seen / max(train_time, 1e-9))
            values.update(grouped("train", row))
        t_eval = time.perf_counter()
        values.update(evaluate(done))
        eval_seconds += time.perf_counter() - t_eval     # throughput counts training time only
        if values:
            row = {**{k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("train/")},
                   **{k: v for k, v in values.items() if not k.startswith("train/")}, "step": done}
            history.append(row)
            last = {**last, **row}
            if log is not None:
                # wall-clock throughput stays in the terminal and the run summary: in the DVC-tracked
                # curves it would change the outputs' hashes on every run (dvc.lock would never settle)
                log.log(done, {k: v for k, v in values.items() if k != "train/samples_per_s"})
        if info.main and (done % p.checkpoint_every == 0 or done == p.steps):
            config = checkpoint.make_config(recipe, sources.features.spec, done, _plain(p))
            checkpoint.save(p.out, model, config, {"optimizer": optimizer.state_dict()})
            for hook in hooks:
                hook.at_checkpoint(run, done)
        for hook in hooks:
            hook.after_step(run, done, last)
    seconds = time.perf_counter() - t0
    train_rows = [r for r in history if "loss" in r]
    result = TrainResult(steps=p.steps, final_loss=last.get("loss", float("nan")), seconds=seconds,
                         samples_per_s=seen / max(seconds - eval_seconds, 1e-9), n_params=n_params, out=p.out,
                         resumed_from=start, history=history, eval_seconds=eval_seconds,
                         callback_seconds=callback_seconds)
    if info.main:
        write_json(p.summary, {"recipe": recipe.name, "preset": recipe.params.preset, "steps": p.steps,
                               "final_loss": result.final_loss, "n_params": n_params,
                               "first_logged_loss": train_rows[0]["loss"] if train_rows else None,
                               "final_val_loss": last.get("val/loss")})
    return result


def _plain(p: PretrainParams) -> dict[str, Any]:
    import dataclasses
    return dataclasses.asdict(p)
