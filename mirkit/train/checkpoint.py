"""Model folders (encoder only) and training checkpoints (one atomic unit per step).

**Model folder** — everything needed to embed audio, nothing needed only to train::

    config.json        format, architecture (registry name), args (resolved constructor arguments),
                       preset, feature_set + features (the exact input spec), window_frames (the
                       training crop = extraction chunk), step, provenance (recipe, its parameters,
                       training parameters; informative only, never needed to load)
    model.safetensors  encoder weights only (one metadata key, so the bytes depend only on the weights)
    README.md          model card (architecture, parameters, training data and steps, probe results)

Loading needs only :mod:`mirkit.models` and :mod:`mirkit.data.features`: no recipe or objective is imported.

**Training run folder** (``pretrain.out``)::

    LATEST                 the name of the current step folder; replacing it is the commit point
    step-000600/model/     the model folder above
    step-000600/training/  heads.safetensors (every non-encoder weight and buffer: projection heads,
                           objective state), state.pt (optimizer state and step)

:func:`save` writes a whole step folder under a temporary name, fsyncs it, renames it into place and
only then rewrites ``LATEST`` (atomically), then deletes older step folders. A kill at any instant
leaves ``LATEST`` naming a complete folder: the previous checkpoint or the new one. Loading a run
folder follows ``LATEST`` to its model folder. Same seed, same bytes: no process id, time or
unordered metadata is written. Weights are read with safetensors, the optimizer state with
``torch.load(weights_only=True)``: nothing is ever unpickled.

**Integrity** (docs/reliability.md): ``model.safetensors`` (and ``heads.safetensors``) carry, in one
metadata entry ``mirkit``, a crc32c of every tensor's bytes and, for a model folder, the exact
config it was written with. Loading checks both: a flipped byte is refused naming the tensor, and a
``config.json`` edited after the weights were written (``window_frames``, ``features.hop_length``,
...) is refused naming the edited keys, since every embedding would silently change. The config's
sizes are bounded (:func:`mirkit.models.registry.check_bounds`) before any layer is built. Folders
written before this binding load with a warning (re-save them to bind them).

Folders written by mirkit 0.1 (``format: mirkit.train.checkpoint/1``: whole-model weights + recipe in
``config.json``) are refused with the command that converts them: ``mirkit import legacy``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mirkit.files import atomic_write_text
from mirkit.models import registry
from mirkit.models.base import Encoder
from mirkit.models.config import FORMAT as FORMAT  # re-exported: the format of config.json
from mirkit.models.config import LEGACY_FORMAT, CheckpointError, ModelConfig

MODEL_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
LATEST, MODEL_DIR, TRAINING_DIR = "LATEST", "model", "training"
HEADS_FILE, STATE_FILE = "heads.safetensors", "state.pt"
LEGACY_STATE_FILE = "train_state.pt"
#: safetensors metadata: ``format`` (what other tools expect) and ``mirkit`` (checksums, bound config);
#: the header is rewritten with its metadata keys sorted, so the bytes depend only on the content
_META = {"format": "pt"}
BINDING_KEY = "mirkit"



# ------------------------------------------------------------------------------------ configs
def make_config(recipe: Any, feature_spec: dict[str, Any], step: int, train: dict[str, Any]) -> ModelConfig:
    """The model folder config of a recipe's encoder (``architecture``/``args`` are filled by :func:`save`
    from the encoder itself, :meth:`ModelConfig.bound_to`). ``recipe`` is any object with ``name``,
    ``params``, ``feature_set``, ``crop_frames`` and ``params_dict()`` (a :class:`mirkit.recipes.base.Recipe`)."""
    return ModelConfig(feature_set=recipe.feature_set, features=dict(feature_spec),
                       window_frames=int(recipe.crop_frames), preset=getattr(recipe.params, "preset", None),
                       step=int(step), provenance={"recipe": recipe.name, "recipe_params": recipe.params_dict(),
                                                   "train": train})


def encoder_config(encoder: Encoder, feature_set: str, features: dict[str, Any], window_frames: int,
                   step: int = 0, preset: str | None = None, provenance: dict[str, Any] | None = None) -> ModelConfig:
    """A complete model folder config for ``encoder`` (any registered architecture)."""
    return ModelConfig(feature_set=feature_set, features=dict(features), window_frames=int(window_frames),
                       preset=preset, step=int(step), provenance=provenance or {}).bound_to(encoder)


def validate_config(config: Any, where: str) -> ModelConfig:
    """The validated config of a ``config.json`` object (:meth:`ModelConfig.from_dict`: keys, types, bounds,
    a known architecture whose arguments fit, memory estimated on the meta device); raises an
    ``InputError`` naming ``where``."""
    return ModelConfig.from_dict(config, where)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None


# ------------------------------------------------------------------------------------ folders
def models_home() -> Path:
    """Where models installed by name live: ``$MIRKIT_HOME/models`` (default ``~/.cache/mirkit/models``)."""
    return Path(os.environ.get("MIRKIT_HOME") or Path.home() / ".cache" / "mirkit") / "models"


def model_dir(path: str | Path) -> Path:
    """The model folder of ``path``: itself, the current step of a training run folder, or a model
    installed by name under :func:`models_home`."""
    path = Path(path)
    if not path.exists() and len(path.parts) == 1 and (models_home() / path).is_dir():
        path = models_home() / path
    latest = path / LATEST
    if latest.is_file():
        folder = _step_dir(path) / MODEL_DIR
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(f"{latest}: names '{folder.parent.name}', which holds no model folder")
        return folder
    if (path / CONFIG_FILE).is_file():
        return path
    swapped = _interrupted_swap(path)
    if swapped is not None:
        return swapped
    if not path.exists():
        hint = ""
        if len(path.parts) == 1:
            hint = f" (nor a model named so in {models_home()})"
            if str(path) in registry.SIZES:
                hint += (f"; '{path}' is an encoder size: mirkit.create_encoder('{path}') builds it untrained, "
                         "`mirkit import` converts published weights")
        raise CheckpointError(f"{path}: no such model folder{hint}")
    raise CheckpointError(f"{path}: no {CONFIG_FILE} (not a mirkit model folder or training run folder)")


def _step_dir(out: Path) -> Path:
    """The step folder ``LATEST`` names (or, if a re-save of that very step was interrupted between its
    two renames, the complete previous copy kept aside as ``.old-<step>``)."""
    name = (out / LATEST).read_text().strip()
    if not name.startswith("step-") or "/" in name:
        raise CheckpointError(f"{out / LATEST}: names '{name}', not a step folder")
    folder = out / name
    if not folder.is_dir() and (out / f".old-{name}").is_dir():
        return out / f".old-{name}"
    return folder


def _interrupted_swap(path: Path) -> Path | None:
    """A model folder whose replacement (:func:`save_model_folder`) was killed between its two renames:
    the new, complete copy is ``.<name>.tmp`` (the old one was moved aside only once it was complete)."""
    tmp, old = path.parent / f".{path.name}.tmp", path.parent / f".{path.name}.old"
    if path.exists() or not old.is_dir():
        return None
    return tmp if (tmp / CONFIG_FILE).is_file() else old


def read_config(folder: Path) -> ModelConfig:
    """The validated ``config.json`` of the model folder ``folder``, checked against the config its
    weights were written with (:func:`check_binding`, on the JSON exactly as read)."""
    raw = read_json(folder / CONFIG_FILE)
    config = ModelConfig.from_dict(raw, str(folder / CONFIG_FILE))
    check_binding(folder, raw)
    return config


def load_config(path: str | Path) -> ModelConfig:
    """The validated config of a model folder (or of a run folder's current step), checked against
    the config its weights were written with (:func:`check_binding`)."""
    return read_config(model_dir(path))


# ------------------------------------------------------------------------------------ integrity
def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def tensor_crc(t: torch.Tensor) -> str:
    """crc32c (hex) of a tensor's bytes as safetensors stores them (little-endian, C order)."""
    import google_crc32c
    raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{google_crc32c.value(raw.tobytes()):08x}"


def _binding(path: Path) -> dict[str, Any] | None:
    """The ``mirkit`` metadata entry of a safetensors file (None when it has none: an older file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated weights ({exc})") from None
    if BINDING_KEY not in meta:
        return None
    try:
        value = json.loads(meta[BINDING_KEY])
        if not isinstance(value, dict) or not isinstance(value.get("crc32c"), dict):
            raise ValueError("not an object with crc32c")
    except ValueError as exc:
        raise CheckpointError(f"{path}: damaged '{BINDING_KEY}' metadata ({exc})") from None
    return value


_UNBOUND_WARNED: set[str] = set()


def _warn_unbound(path: Path) -> None:
    if str(path) not in _UNBOUND_WARNED:
        _UNBOUND_WARNED.add(str(path))
        warnings.warn(f"{path}: written without checksums or a bound config.json (an older mirkit): a flipped byte "
                      f"or an edited config.json cannot be detected; re-save it to bind them", stacklevel=3)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def check_binding(folder: Path, config: ModelConfig | dict[str, Any]) -> bool:
    """Refuse a ``config.json`` that differs from the config ``model.safetensors`` was written with,
    naming the edited keys. Returns whether the folder is bound (False, with a warning, for folders
    written before the binding). Reads only the weights' header."""
    path = folder / MODEL_FILE
    if not path.is_file():
        return False
    bound = _binding(path)
    if bound is None:
        _warn_unbound(path)
        return False
    written = bound.get("config")
    if isinstance(config, ModelConfig):
        config = config.to_dict()
    if not isinstance(written, dict):
        raise CheckpointError(f"{path}: damaged '{BINDING_KEY}' metadata (no config)")
    if canonical_json(written) != canonical_json(config):
        old, new = _flat(written), _flat(json.loads(canonical_json(config)))
        edits = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
                 for k in sorted(old.keys() | new.keys()) if old.get(k, ...) != new.get(k, ...)]
        raise CheckpointError(f"{folder / CONFIG_FILE}: edited after the weights were written ({'; '.join(edits[:4])}"
                              f"{f'; and {len(edits) - 4} more' if len(edits) > 4 else ''}); every embedding would "
                              f"change. Restore it, or load the encoder in Python and save it again")
    return True


def _check_crcs(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    bound = _binding(path)
    if bound is None:
        _warn_unbound(path)
        return
    crcs = bound["crc32c"]
    if set(crcs) != set(tensors):
        raise CheckpointError(f"{path}: damaged: tensors {sorted(set(crcs) ^ set(tensors))[:4]} differ from the "
                              f"checksum list")
    bad = [k for k in sorted(tensors) if tensor_crc(tensors[k]) != crcs[k]]
    if bad:
        raise CheckpointError(f"{path}: checksum mismatch in tensor(s) {', '.join(bad[:4])} (the stored bytes "
                              f"changed); the weights are damaged: restore or re-download them")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, config: ModelConfig | None = None) -> None:
    """Write a safetensors file whose metadata carries each tensor's crc32c (and ``config``, bound),
    with the header's metadata keys sorted so the bytes depend only on the content."""
    tensors = _tensors(tensors)
    binding: dict[str, Any] = {"crc32c": {k: tensor_crc(v) for k, v in sorted(tensors.items())}}
    if config is not None:
        binding["config"] = json.loads(canonical_json(config.to_dict()))
    save_file(tensors, str(path), metadata={**_META, BINDING_KEY: canonical_json(binding)})
    _sort_metadata(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors header in place with ``__metadata__`` keys sorted (safetensors writes
    them in hash order). Same keys and values, so the header keeps its length and offsets."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        meta = {"__metadata__": header.pop("__metadata__")}
        text = json.dumps({**meta, **header}, separators=(",", ":")).encode()
        if len(text) > n:
            raise AssertionError(f"{path}: re-serialised safetensors header grew ({len(text)} > {n} bytes)")
        f.seek(8)
        f.write(text.ljust(n, b" "))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated weights ({exc})") from None


def check_fit(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise naming the missing/unexpected keys and the first shape mismatch between two state dicts."""
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        parts = ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {unexpected[:4]}"] if unexpected else []) \
            + ([f"shape mismatch at {wrong[0]}: file {tuple(tensors[wrong[0]].shape)} vs model {tuple(own[wrong[0]].shape)}"]
               if wrong else [])
        raise CheckpointError(f"{where}: weights do not fit the model in config.json ({'; '.join(parts)})")


def load_encoder_weights(folder: str | Path, encoder: Encoder) -> None:
    path = Path(folder) / MODEL_FILE
    tensors = _read_safetensors(path)
    _check_crcs(path, tensors)
    check_fit(encoder.state_dict(), tensors, str(path))
    encoder.load_state_dict(tensors, strict=True)


def load_encoder(path: str | Path, weights: bool = True, seed: int = 0) -> tuple[Encoder, ModelConfig, Path]:
    """The encoder of a model folder (or run folder), in eval mode, with its config and folder.
    ``weights=False`` gives the same architecture freshly initialised with ``seed``."""
    folder = model_dir(path)
    config = load_config(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = registry.build(config.architecture, config.args)
    if weights:
        load_encoder_weights(folder, encoder)
    return encoder.eval(), config, folder


# ------------------------------------------------------------------------------------ writing
def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def write_model_folder(folder: str | Path, encoder: Encoder, config: ModelConfig,
                       card_extra: dict[str, Any] | None = None) -> ModelConfig:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` of ``encoder`` into ``folder``
    (files written in place: use :func:`save_model_folder` for an atomic whole-folder write)."""
    from mirkit.models.card import render
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = config.bound_to(encoder)
    save_tensors(encoder.state_dict(), folder / MODEL_FILE, config)
    (folder / CONFIG_FILE).write_text(config.to_json())
    (folder / CARD_FILE).write_text(render(config, card_extra or {}))
    return config


def save_model_folder(folder: str | Path, encoder: Encoder, config: ModelConfig,
                      card_extra: dict[str, Any] | None = None) -> ModelConfig:
    """Write a model folder atomically: into ``.<name>.tmp`` beside it, then renamed into place. An
    existing folder is moved aside to ``.<name>.old`` only once the new one is complete, so a kill
    between the two renames leaves a complete copy that :func:`model_dir` finds."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = folder.parent / f".{folder.name}.tmp", folder.parent / f".{folder.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    config = write_model_folder(tmp, encoder, config, card_extra)
    _fsync_tree(tmp)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return config


def step_name(step: int) -> str:
    return f"step-{int(step):06d}"


def save(out_dir: str | Path, model: torch.nn.Module, config: ModelConfig,
         train_state: dict[str, Any] | None = None) -> Path:
    """Commit one training checkpoint of ``model`` (a module with an ``encoder``) into the run folder
    ``out_dir``: the model folder, the heads and the training state of ``config.step``, as one unit
    (see the module docstring). Returns the new model folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = step_name(config.step)
    staging = out / f".tmp-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    encoder: Encoder = model.encoder  # type: ignore[assignment]
    write_model_folder(staging / MODEL_DIR, encoder, config)
    training = staging / TRAINING_DIR
    training.mkdir()
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    save_tensors(heads, training / HEADS_FILE)
    if train_state is not None:
        torch.save({**train_state, "step": int(config.step)}, training / STATE_FILE)
    _fsync_tree(staging)
    final = out / name
    if final.exists():                   # the same step written again (e.g. after a kill before LATEST)
        old = out / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(out)
    atomic_write_text(out / LATEST, name + "\n")      # the commit point
    _fsync_dir(out)
    _remove_stale(out, keep=name)
    return final / MODEL_DIR


def _remove_stale(out: Path, keep: str) -> None:
    """Older step folders, leftovers of killed writes, and mirkit 0.1 files of this run folder."""
    for child in out.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and (child.name.startswith("step-") or child.name.startswith(".tmp-step-")
                               or child.name.startswith(".old-step-")):
            shutil.rmtree(child, ignore_errors=True)
        elif child.is_file() and child.name.startswith(f".{LATEST}.") and child.name.endswith(".tmp"):
            child.unlink(missing_ok=True)     # a pointer write killed before its rename
    legacy = out / CONFIG_FILE
    if legacy.is_file():
        try:
            is_legacy = json.loads(legacy.read_text()).get("format") == LEGACY_FORMAT
        except (ValueError, AttributeError, OSError):
            is_legacy = False
        if is_legacy:
            for f in (CONFIG_FILE, MODEL_FILE, LEGACY_STATE_FILE):
                (out / f).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ resuming
def _current_step_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    latest = out / LATEST
    if not latest.is_file():
        raise CheckpointError(f"{out}: no {LATEST} (no training checkpoint to resume from)")
    step_dir = _step_dir(out)
    if not (step_dir / TRAINING_DIR).is_dir():
        raise CheckpointError(f"{latest}: names '{step_dir.name}', which holds no training state")
    return step_dir


def has_train_state(out_dir: str | Path) -> bool:
    """Whether the run folder holds a checkpoint to resume from (a mirkit 0.1 one raises with the upgrade)."""
    out = Path(out_dir)
    if (out / LATEST).is_file():
        return True
    if (out / LEGACY_STATE_FILE).is_file():
        raise CheckpointError(f"{out}: a mirkit 0.1 checkpoint; convert it once with "
                              f"`mirkit import legacy {out} --out {out}` and resume again")
    return False


def load_weights(out_dir: str | Path, model: torch.nn.Module) -> int:
    """Load the current checkpoint of a run folder into ``model`` (encoder + heads, strict);
    returns its step."""
    step_dir = _current_step_dir(out_dir)
    folder = step_dir / MODEL_DIR
    config = read_config(folder)
    weights = _read_safetensors(folder / MODEL_FILE)
    _check_crcs(folder / MODEL_FILE, weights)
    tensors = {f"encoder.{k}": v for k, v in weights.items()}
    tensors.update(read_heads(out_dir))
    check_fit(model.state_dict(), tensors, str(step_dir))
    model.load_state_dict(tensors, strict=True)
    return config.step


def read_heads(out_dir: str | Path) -> dict[str, torch.Tensor]:
    """The non-encoder weights and buffers of a run folder's current checkpoint (checksums verified)."""
    path = _current_step_dir(out_dir) / TRAINING_DIR / HEADS_FILE
    tensors = _read_safetensors(path)
    _check_crcs(path, tensors)
    return tensors


def load_train_state(out_dir: str | Path) -> dict[str, Any]:
    """The current step's training state, its structure checked (:func:`check_train_state`)."""
    path = _current_step_dir(out_dir) / TRAINING_DIR / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {STATE_FILE} to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or hostile files
        raise CheckpointError(f"{path}: unreadable training state ({exc.__class__.__name__})") from None
    return check_train_state(state, str(path))


def check_train_state(state: Any, where: str) -> dict[str, Any]:
    """What resume reads, or a :class:`CheckpointError` naming ``where``: a mapping with a non-negative
    integer ``step`` and an ``optimizer`` mapping (its form is checked against the model by
    :func:`restore_optimizer`)."""
    bad = f"{where}: damaged training state"
    if not isinstance(state, dict):
        raise CheckpointError(f"{bad}: a {type(state).__name__}, not a mapping; delete it to restart from step 0")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{bad}: step={step!r} is not a non-negative integer")
    if "optimizer" not in state:
        raise CheckpointError(f"{bad}: no 'optimizer' key (keys: {', '.join(map(str, state)) or 'none'})")
    if not isinstance(state["optimizer"], dict):
        raise CheckpointError(f"{bad}: 'optimizer' is a {type(state['optimizer']).__name__}, not an optimizer state")
    return state


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], out_dir: str | Path) -> None:
    """Load a checked training state into ``optimizer``; a state written for another model (group
    sizes, per-parameter moment shapes) is a :class:`CheckpointError` naming the file, before any step."""
    where = _current_step_dir(out_dir) / TRAINING_DIR / STATE_FILE
    saved = state["optimizer"]
    groups = saved.get("param_groups")
    if not (isinstance(saved.get("state"), dict) and isinstance(groups, list) and groups
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise CheckpointError(f"{where}: damaged training state: 'optimizer' is not an optimizer state (a 'state' "
                              f"mapping and 'param_groups' with their 'params')")
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: optimizer state does not fit this model ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0]})") from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise CheckpointError(f"{where}: optimizer state does not fit this model ('{key}' of shape "
                                          f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)})")
