"""End-to-end checks of an artifact: a feature/token store, an embeddings store or a model directory.

Stages run the cheap part of these checks whenever they open an artifact (the index against the
arrays, chunk files present: :class:`mirkit.store.FrameSet`, :class:`mirkit.embeddings.Embeddings`);
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
    if (p / "config.json").is_file() or (p / "model.safetensors").is_file():
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
    from mirkit import store
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
    from mirkit import store
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
        problems = [f"{p.url}: {msg}" if len(parts) > 1 else msg for p in parts for msg in store.scan_set(p)]
        yield Finding(name, "every chunk decoded, values valid", not problems, "; ".join(problems[:3]) or
                      ("finite" if not fs.attrs.get("codebook_size") else "codes in range"))


# -- embeddings -----------------------------------------------------------------------------------
def _embeddings(url: str) -> Iterable[Finding]:
    from mirkit.embeddings import Embeddings, scan
    try:
        emb = Embeddings(url)
    except InputError as exc:
        yield Finding("embeddings", "index vs arrays, chunk files", False, str(exc))
        return
    yield Finding("embeddings", "index vs arrays, chunk files", True,
                  f"{len(emb)} tracks, {emb._n_chunks} chunks, {emb._n_frames} frames, dim {emb.dim}")
    problems = scan(emb)
    yield Finding("embeddings", "every chunk decoded, values finite", not problems, "; ".join(problems[:3]) or "finite")


# -- model directories ----------------------------------------------------------------------------
ModelCheck = Callable[[Path], Iterable[Finding]]


def _model_config(path: Path) -> Iterable[Finding]:
    """config.json: readable, of this format, its feature spec and recipe parameters within bounds."""
    from mirkit import checkpoint
    from mirkit.features import validate_spec
    try:
        config = checkpoint.load_config(path)
    except MirkitError as exc:
        yield Finding("config.json", "readable", False, str(exc))
        return
    source = str(path / checkpoint.CONFIG_FILE)
    missing = [k for k in ("recipe", "recipe_params", "feature_set", "features", "crop_frames") if k not in config]
    if missing:
        yield Finding("config.json", "keys", False, f"{source}: missing {', '.join(missing)}")
        return
    try:
        validate_spec(config["features"], source=source)
        recipe = checkpoint.build_recipe(config)
        if config["crop_frames"] != recipe.crop_frames:
            raise InputError(f"{source}: crop_frames={config['crop_frames']!r} differs from the recipe's "
                             f"{recipe.crop_frames}")
    except MirkitError as exc:
        yield Finding("config.json", "parameters within bounds", False, str(exc))
        return
    yield Finding("config.json", "parameters within bounds", True, f"recipe {config['recipe']}, step {config.get('step')}")


def _model_weights(path: Path) -> Iterable[Finding]:
    """model.safetensors: fits the model the config describes (memory estimated first), values finite."""
    from mirkit import checkpoint, limits
    try:
        config = checkpoint.load_config(path)
        recipe = checkpoint.build_recipe(config)
        limits.check_module(f"{path}: the model in config.json", recipe.build_model)
        _, model, _ = checkpoint.load_model(path)
    except (MirkitError, KeyError, TypeError) as exc:
        yield Finding(checkpoint.MODEL_FILE, "fits config.json", False, f"{exc.__class__.__name__}: {exc}"
                      if not isinstance(exc, MirkitError) else str(exc))
        return
    import torch
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    yield Finding(checkpoint.MODEL_FILE, "fits config.json, values finite", not bad,
                  f"NaN/inf in {', '.join(bad[:3])}" if bad else f"{sum(v.numel() for v in model.state_dict().values())} values")


def _model_state(path: Path) -> Iterable[Finding]:
    """train_state.pt (when present): loadable without unpickling code, from the same step as the weights."""
    from mirkit import checkpoint
    if not (path / checkpoint.STATE_FILE).is_file():
        return
    try:
        state = checkpoint.load_train_state(path)
        step = checkpoint.load_config(path).get("step")
    except MirkitError as exc:
        yield Finding(checkpoint.STATE_FILE, "readable", False, str(exc))
        return
    same = state.get("step") == step
    yield Finding(checkpoint.STATE_FILE, "same step as config.json", same,
                  f"step {state.get('step')}" + ("" if same else f" but config.json says {step}"))


#: checks run on a model directory, in order; extend it to check more of the checkpoint format
MODEL_CHECKS: list[ModelCheck] = [_model_config, _model_weights, _model_state]


def _model(path: str) -> Iterable[Finding]:
    for check in MODEL_CHECKS:
        yield from check(Path(path))
