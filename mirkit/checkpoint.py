"""Checkpoints: ``model.safetensors`` + ``config.json`` (+ ``train_state.pt`` for resuming).

``config.json`` holds everything needed to rebuild the model and its input features: recipe name,
recipe parameters (preset included), the feature set's exact spec, crop length, step and mirkit
version. Weights are read with safetensors only; the training state with
``torch.load(weights_only=True)``: nothing a user downloads is ever unpickled.
"""

from __future__ import annotations

from mirkit.errors import InputError

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import mirkit
from mirkit import recipes
from mirkit.files import atomic_write_text
from mirkit.params import ParamsError, resolve
from mirkit.recipes.base import PretrainModel, Recipe

FORMAT = "mirkit.checkpoint/1"
MODEL_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "config.json", "train_state.pt"


class CheckpointError(InputError):
    """A checkpoint is missing, truncated, of another format or does not fit its model."""


def make_config(recipe: Recipe, feature_spec: dict[str, Any], step: int, train: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "mirkit_version": mirkit.__version__, "recipe": recipe.name,
            "recipe_params": recipe.params_dict(), "feature_set": recipe.feature_set,
            "features": feature_spec, "crop_frames": recipe.crop_frames, "step": step, "train": train}


def save(out_dir: str | Path, model: PretrainModel, config: dict[str, Any],
         train_state: dict[str, Any] | None = None) -> None:
    """Write weights, config and (optionally) the training state, each file atomically.

    The step is stored in all three, so a resume can tell files from different moments apart.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = str(config["step"])
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = out / f".{MODEL_FILE}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "step": step})
    os.replace(tmp, out / MODEL_FILE)
    if train_state is not None:
        tmp = out / f".{STATE_FILE}.{os.getpid()}.tmp"
        torch.save({**train_state, "step": config["step"]}, tmp)
        os.replace(tmp, out / STATE_FILE)
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")


def load_config(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_FILE} (not a mirkit checkpoint directory)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mirkit checkpoint config (format={config.get('format') if isinstance(config, dict) else None!r})")
    return config


def build_recipe(config: dict[str, Any]) -> Recipe:
    try:
        cls = recipes.get(config["recipe"])
    except KeyError as exc:
        raise CheckpointError(f"checkpoint recipe: {exc.args[0]}") from None
    try:
        return cls(resolve(cls.Params, config["recipe_params"], section=f"{config['recipe']} (checkpoint)"))
    except ParamsError as exc:
        raise CheckpointError(f"checkpoint parameters do not fit this mirkit version: {exc}") from None


def load_weights(ckpt_dir: str | Path, model: PretrainModel) -> int:
    """Load ``model.safetensors`` into ``model`` (strict); returns the stored step."""
    path = Path(ckpt_dir) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {MODEL_FILE}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated weights ({exc})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "") \
            + (f" shape mismatch at {wrong[0]}: file {tuple(tensors[wrong[0]].shape)} vs model "
               f"{tuple(own[wrong[0]].shape)}" if wrong else "")
        raise CheckpointError(f"{path}: weights do not fit the model in config.json ({detail.strip()})")
    model.load_state_dict(tensors, strict=True)
    return int(meta.get("step", -1))


def load_model(ckpt_dir: str | Path, weights: bool = True, seed: int = 0) -> tuple[Recipe, PretrainModel, dict[str, Any]]:
    """Rebuild a checkpoint's recipe and model; ``weights=False`` gives the same architecture
    freshly initialised with ``seed`` (the random-init baseline of the probe comparison)."""
    config = load_config(ckpt_dir)
    recipe = build_recipe(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = recipe.build_model()
    if weights:
        load_weights(ckpt_dir, model)
    model.eval()
    return recipe, model, config


def load_train_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {STATE_FILE} to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: unreadable training state ({exc.__class__.__name__})") from None
