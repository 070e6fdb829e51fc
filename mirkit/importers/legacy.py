"""mirkit 0.1 checkpoints (``format: mirkit.train.checkpoint/1``) -> the current layout.

A 0.1 folder holds ``config.json`` (recipe, recipe parameters, feature spec, crop, step),
``model.safetensors`` (the whole pretraining model: encoder + heads) and, when it was a training run,
``train_state.pt`` (optimizer state). The conversion rebuilds the model through its recipe (the only
place that knows the 0.1 layout), loads the weights strictly and writes

* with ``train_state.pt``: a training run folder (``LATEST`` + ``step-N/{model,training}``), so
  ``mirkit pretrain --resume`` continues exactly where the old run stopped;
* without: a model folder (encoder only).

``out`` may be the old folder itself (converted in place once everything is in memory).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mirkit.train import checkpoint
from mirkit.train.checkpoint import LEGACY_FORMAT, CheckpointError, read_json


def import_legacy(src: str | Path, out: str | Path) -> tuple[str, Path]:
    """Convert; returns ``("run" | "model", folder to load)``."""
    from safetensors.torch import load_file

    from mirkit import recipes
    from mirkit.params import ParamsError, resolve
    src = Path(src)
    cfg_path = src / checkpoint.CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{src}: no {checkpoint.CONFIG_FILE}")
    old = read_json(cfg_path)
    if not isinstance(old, dict) or old.get("format") != LEGACY_FORMAT:
        raise CheckpointError(f"{cfg_path}: not a mirkit 0.1 checkpoint (format={old.get('format') if isinstance(old, dict) else None!r})")
    for key in ("recipe", "recipe_params", "features", "step"):
        if key not in old:
            raise CheckpointError(f"{cfg_path}: missing key '{key}'")
    try:
        cls = recipes.get(old["recipe"])
        recipe = cls(resolve(cls.Params, old["recipe_params"], section=f"{cfg_path}: recipe_params"))
    except (KeyError, ParamsError) as exc:
        raise CheckpointError(f"{cfg_path}: {exc.args[0] if isinstance(exc, KeyError) else exc}") from None
    model = recipe.build_model()
    try:
        tensors = load_file(str(src / checkpoint.MODEL_FILE))
    except Exception as exc:
        raise CheckpointError(f"{src / checkpoint.MODEL_FILE}: unreadable weights ({exc})") from None
    checkpoint.check_fit(model.state_dict(), tensors, str(src / checkpoint.MODEL_FILE))
    model.load_state_dict(tensors, strict=True)
    config = checkpoint.make_config(recipe, old["features"], int(old["step"]), old.get("train", {}))
    config = replace(config, provenance={**config.provenance, "converted_from": LEGACY_FORMAT})
    state_path = src / checkpoint.LEGACY_STATE_FILE
    if state_path.is_file():
        try:
            state: dict[str, Any] = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{state_path}: unreadable training state ({exc.__class__.__name__})") from None
        if int(state.get("step", -1)) != int(old["step"]):
            raise CheckpointError(f"{src}: weights (step {old['step']}) and training state (step {state.get('step')}) "
                                  "are from different moments; convert the model only (remove train_state.pt)")
        return "run", checkpoint.save(out, model, config, {k: v for k, v in state.items() if k != "step"})
    checkpoint.save_model_folder(out, model.encoder, config)
    return "model", Path(out)
