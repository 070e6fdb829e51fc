"""End-to-end checks of an artifact: a feature/token store, an embeddings store, a model folder or a
training run folder.

Stages run the cheap part of these checks whenever they open an artifact (the index against the
arrays, chunk files present: :class:`mirkit.data.store.FrameSet`, :class:`mirkit.eval.embeddings.Embeddings`);
:func:`verify` adds the full scan (every chunk decoded, values finite) for ``mirkit verify``.

Model directories run the checks in :data:`MODEL_CHECKS`, a list other modules extend (the
checkpoint format registers its own consistency checks there) with functions ``Path -> findings``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mirkit.errors import InputError, MirkitError


@dataclass(frozen=True)
class Finding:
    part: str      # the set, array or file looked at
    check: str     # what was checked
    ok: bool
    detail: str = ""


def kind_of(path: str) -> str:
    """``"model"``, ``"embeddings"`` or ``"frames"`` (feature / token store or shard folder)."""
    p = Path(path)
    if (p / "config.json").is_file() or (p / "model.safetensors").is_file() or (p / "LATEST").is_file():
        return "model"
    attrs_file = p / "zarr.json"
    if attrs_file.is_file():
        try:
            attrs = json.loads(attrs_file.read_text()).get("attributes", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            attrs = {}
        if "committed" in attrs:
            return "embeddings"
        return "frames"
    from mirkit.data import store
    if "://" in str(path) or store.find_shards(str(path)):
        return "frames"
    if not p.exists():
        raise InputError(f"{path}: nothing here to verify")
    raise InputError(f"{path}: not a mirkit store or model directory (no zarr.json, config.json or shard stores)")


def verify(path: str) -> tuple[str, list[Finding]]:
    """The kind of artifact at ``path`` and every finding (``ok=False`` ones are damage)."""
    kind = kind_of(path)
    checks = {"model": _model, "embeddings": _embeddings, "frames": _frames}[kind]
    return kind, list(checks(path))


# -- feature / token stores -----------------------------------------------------------------------
def _frames(url: str) -> Iterable[Finding]:
    from mirkit.data import store
    holder = store.lock_holder(url)
    if holder:
        yield Finding("store", "writer lock", True, f"held or left by pid {holder.get('pid')} on "
                                                    f"{holder.get('host')} since {holder.get('since')}")
    try:
        names = store.set_names(url)
    except store.StoreError as exc:
        yield Finding("store", "open", False, str(exc))
        return
    if not names:
        yield Finding("store", "sets", False, f"{url}: holds no frame set")
    for name in names:
        try:
            fs = store.open_set(url, name)
        except store.StoreError as exc:
            yield Finding(name, "index vs arrays, chunk files", False, str(exc))
            continue
        yield Finding(name, "index vs arrays, chunk files", True,
                      f"{len(fs)} tracks, {fs.total_frames} frames of {fs.n_bins} bins")
        parts = fs.shards if isinstance(fs, store.ShardedSet) else [fs]
        bare = [p.url for p in parts if not p.checksums]
        yield Finding(name, "chunk checksums (crc32c)", True,
                      f"none in {', '.join(bare[:2])}: written before checksums, a flipped byte cannot be detected; "
                      f"rebuild the set to add them" if bare else "on every array")
        problems = [f"{p.url}: {msg}" if len(parts) > 1 else msg for p in parts for msg in store.scan_set(p)]
        yield Finding(name, "every chunk decoded, values valid", not problems, "; ".join(problems[:3]) or
                      ("finite" if not fs.attrs.get("codebook_size") else "codes in range"))


# -- embeddings -----------------------------------------------------------------------------------
def _embeddings(url: str) -> Iterable[Finding]:
    from mirkit.data import store
    from mirkit.eval.embeddings import Embeddings, scan
    holder = store.lock_holder(url)
    if holder:
        yield Finding("store", "writer lock", True, f"held or left by pid {holder.get('pid')} on "
                                                    f"{holder.get('host')} since {holder.get('since')}")
    try:
        emb = Embeddings(url)
    except InputError as exc:
        yield Finding("embeddings", "index vs arrays, chunk files", False, str(exc))
        return
    yield Finding("embeddings", "index vs arrays, chunk files", True,
                  f"{len(emb)} tracks, {emb._n_chunks} chunks, {emb._n_frames} frames, dim {emb.dim}")
    yield Finding("embeddings", "chunk checksums (crc32c)", True,
                  "on every array" if emb.checksums else "none: written before checksums, a flipped byte cannot be "
                                                         "detected; re-run `mirkit extract` into a new store")
    problems = scan(emb)
    yield Finding("embeddings", "every chunk decoded, values finite", not problems, "; ".join(problems[:3]) or "finite")


# -- model directories ----------------------------------------------------------------------------
ModelCheck = Callable[[Path], Iterable[Finding]]


def _model_config(path: Path) -> Iterable[Finding]:
    """config.json (of the model folder, or of a run folder's current step): readable, of this format,
    architecture and arguments known, feature spec and window within bounds, depth bounded and memory
    estimated before building, and equal to the config the weights were written with (the binding)."""
    from mirkit.train import checkpoint
    try:
        folder = checkpoint.model_dir(path)
        config = checkpoint.load_config(folder)
    except MirkitError as exc:
        yield Finding("config.json", "in bounds, bound to weights", False, str(exc))
        return
    yield Finding(str(folder.relative_to(path) / checkpoint.CONFIG_FILE) if folder != path else "config.json",
                  "in bounds, bound to weights", True,
                  f"{config.architecture} ({config.preset or 'custom'}), step {config.step}")


def _model_weights(path: Path) -> Iterable[Finding]:
    """model.safetensors: every tensor's crc32c, fits the architecture in config.json, values finite."""
    import torch

    from mirkit.train import checkpoint
    try:
        encoder, _, folder = checkpoint.load_encoder(path)
    except MirkitError as exc:
        yield Finding(checkpoint.MODEL_FILE, "fits config.json", False, str(exc))
        return
    state = encoder.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    bound = checkpoint.check_binding(folder, checkpoint.load_config(folder))
    yield Finding(checkpoint.MODEL_FILE, "checksums, fit, finite", not bad,
                  f"NaN/inf in {', '.join(bad[:3])}" if bad else f"{sum(v.numel() for v in state.values())} values" +
                  ("" if bound else "; written without checksums or a bound config.json: re-save it to bind them"))


def _model_training(path: Path) -> Iterable[Finding]:
    """A training run folder's current step: heads readable with finite values, the training state (when
    saved) readable without unpickling code and of the same step as the weights."""
    import torch

    from mirkit.train import checkpoint
    if not (path / checkpoint.LATEST).is_file():
        return
    try:
        step = checkpoint.load_config(path).step
        heads = checkpoint.read_heads(path)
    except MirkitError as exc:
        yield Finding("training", "heads readable", False, str(exc))
        return
    bad = [k for k, v in heads.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    yield Finding(checkpoint.HEADS_FILE, "readable, values finite", not bad,
                  f"NaN/inf in {', '.join(bad[:3])}" if bad else f"{len(heads)} tensors")
    if not (checkpoint.model_dir(path).parent / checkpoint.TRAINING_DIR / checkpoint.STATE_FILE).is_file():
        return                                  # saved without optimizer state: nothing to resume, not damage
    try:
        state = checkpoint.load_train_state(path)
    except MirkitError as exc:
        yield Finding(checkpoint.STATE_FILE, "readable", False, str(exc))
        return
    same = state.get("step") == step
    yield Finding(checkpoint.STATE_FILE, "same step as the weights", same,
                  f"step {state.get('step')}" + ("" if same else f" but config.json says {step}"))
    try:
        yield Finding(checkpoint.STATE_FILE, "optimizer state fits the model", True, _state_fits(path, state))
    except MirkitError as exc:
        yield Finding(checkpoint.STATE_FILE, "optimizer state fits the model", False, str(exc))


def _state_fits(path: Path, state: dict) -> str:
    """Restore the training state into the optimizer of the run's own model, rebuilt on the ``meta``
    device from config.json's provenance (no memory, no weights): what ``pretrain --resume`` does first.
    Returns a summary; raises ``CheckpointError`` on a misfit."""
    import torch

    from mirkit import recipes
    from mirkit.params import resolve
    from mirkit.train import checkpoint
    from mirkit.train.loop import param_groups
    prov = checkpoint.load_config(path).provenance
    name = prov.get("recipe") if isinstance(prov, dict) else None
    if not isinstance(name, str) or name not in recipes.available():
        return f"not checked against a model (config.json names no known recipe: {name!r})"
    cls = recipes.get(name)
    recipe = cls(resolve(cls.Params, prov.get("recipe_params") or {}, section="config.json: provenance.recipe_params"))
    with torch.device("meta"):
        model = recipe.build_model()
    optimizer = torch.optim.AdamW(param_groups(model, 0.0))
    checkpoint.restore_optimizer(optimizer, state, path)
    return f"fits the {recipe.name} model ({sum(len(g['params']) for g in optimizer.param_groups)} parameters)"


#: checks run on a model directory, in order; extend it to check more of the checkpoint format
MODEL_CHECKS: list[ModelCheck] = [_model_config, _model_weights, _model_training]


def _model(path: str) -> Iterable[Finding]:
    for check in MODEL_CHECKS:
        yield from check(Path(path))
