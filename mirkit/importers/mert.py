"""MERT-v1 Hugging Face checkpoints (m-a-p/MERT-v1-95M, -330M; weights CC-BY-NC-4.0) -> a mirkit ``mert``
model folder, without ``transformers`` or the repository's remote code.

Files (https://huggingface.co/m-a-p/MERT-v1-95M, https://huggingface.co/m-a-p/MERT-v1-330M):
``config.json`` and ``pytorch_model.bin`` (or ``model.safetensors``). ``config.json`` is read as plain
JSON for the options the weights' shapes cannot tell (heads, pre- or post-LN encoder, the feature
extractor's norm); the weights with safetensors or ``torch.load(weights_only=True)`` only. The fairseq
``*_fairseq.pt`` files need fairseq's classes to unpickle and are refused. Options MERT-v1 does not use
(``feature_extractor_cqt``, ``deepnorm``, activations other than GELU) are refused by name.

Weight norm of the positional convolution (``weight_g``/``weight_v``, or ``parametrizations.weight.
original0/1`` in files written by newer transformers) is folded into one weight, ``g * v / ||v||`` with
the norm over all but the kernel axis (``dim=2``). ``masked_spec_embed`` (pretraining only) is dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mirkit.data.features import PRESETS as FEATURES
from mirkit.importers.torchfile import find_state_dict, load_exact, read_weights_only, refuse_unknown, sha256_file
from mirkit.models.config import ModelConfig
from mirkit.models.mert import MERT
from mirkit.train.checkpoint import CheckpointError, encoder_config, save_model_folder

LICENCE = "CC-BY-NC-4.0 (MERT-v1 weights, m-a-p; code Apache-2.0): non-commercial use only"
DOWNLOAD = "https://huggingface.co/m-a-p/MERT-v1-95M or https://huggingface.co/m-a-p/MERT-v1-330M (config.json + pytorch_model.bin)"
FEATURE_SET = "wave24k"
#: chunk length in 320-sample frames: 5 s, MERT's pretraining crop
WINDOW = 375
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_POS = "encoder.pos_conv_embed.conv."
_NORM_NAMES = {"weight_g": "g", "weight_v": "v", "parametrizations.weight.original0": "g",
               "parametrizations.weight.original1": "v"}


def _looks_like_mert(keys: dict[str, Any]) -> bool:
    return any("feature_extractor.conv_layers.0.conv.weight" in k for k in keys)


def find_files(path: str | Path, config: str | Path | None) -> tuple[Path, Path]:
    """``(weights file, config.json)`` from a downloaded folder or a weights file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder (give the downloaded MERT folder or its weights file)")
    if path.is_dir():
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: no {' or '.join(WEIGHT_FILES)} in this folder")
    else:
        weights = path
    cfg = Path(config) if config else weights.parent / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{cfg}: no such file; MERT's config.json (downloaded with the weights) says which "
                              "encoder the weights are for (pass it with --config)")
    return weights, cfg


def read_config(path: Path) -> dict[str, Any]:
    """MERT constructor arguments from a Hugging Face ``config.json`` (refusing what MERT-v1 does not use)."""
    try:
        c = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(c, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    for key, bad in (("feature_extractor_cqt", True), ("deepnorm", True)):
        if c.get(key) == bad:
            raise CheckpointError(f"{path}: '{key}': {bad} is not a MERT-v1 option mirkit implements")
    for key in ("hidden_act", "feat_extract_activation"):
        if c.get(key, "gelu") != "gelu":
            raise CheckpointError(f"{path}: '{key}'={c[key]!r}: MERT-v1 uses gelu; other activations are not implemented")
    if c.get("sample_rate", 24000) != 24000:
        raise CheckpointError(f"{path}: 'sample_rate'={c['sample_rate']}: mirkit's MERT front end reads 24 kHz")
    need = {"hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int, "intermediate_size": int}
    for key, kind in need.items():
        if not isinstance(c.get(key), kind) or isinstance(c.get(key), bool) or c[key] < 1:
            raise CheckpointError(f"{path}: '{key}' must be a positive integer, got {c.get(key)!r}")
    try:
        args = dict(dim=c["hidden_size"], depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
                    units=c["intermediate_size"], conv_dim=[int(v) for v in c.get("conv_dim", [512] * 7)],
                    conv_kernel=[int(v) for v in c.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])],
                    conv_stride=[int(v) for v in c.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])],
                    conv_bias=bool(c.get("conv_bias", False)), feat_extract_norm=str(c.get("feat_extract_norm", "group")),
                    feat_proj_layer_norm=bool(c.get("feat_proj_layer_norm", True)),
                    pre_norm=bool(c.get("do_stable_layer_norm", False)),
                    pos_kernel=int(c.get("num_conv_pos_embeddings", 128)),
                    pos_groups=int(c.get("num_conv_pos_embedding_groups", 16)), eps=float(c.get("layer_norm_eps", 1e-5)))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: a convolution setting is not a list of integers ({exc})") from None
    hop = math.prod(args["conv_stride"])
    if hop != FEATURES[FEATURE_SET].hop_length:
        raise CheckpointError(f"{path}: conv_stride multiplies to {hop} samples per frame; MERT-v1 (and mirkit's "
                              f"{FEATURE_SET} frames) use {FEATURES[FEATURE_SET].hop_length}")
    return args


def fold_weight_norm(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Replace the positional conv's weight-norm pair by its weight."""
    parts = {_NORM_NAMES[k[len(_POS):]]: k for k in state if k.startswith(_POS) and k[len(_POS):] in _NORM_NAMES}
    if not parts:
        return state
    if set(parts) != {"g", "v"}:
        raise CheckpointError(f"{where}: the positional convolution has half a weight-norm pair ({', '.join(parts.values())})")
    g, v = state[parts["g"]].float(), state[parts["v"]].float()
    if g.ndim != 3 or v.ndim != 3 or g.shape[-1] != v.shape[-1]:
        raise CheckpointError(f"{where}: {parts['g']} {tuple(g.shape)} and {parts['v']} {tuple(v.shape)} are not a "
                              "weight-norm pair over the kernel axis")
    out = {k: t for k, t in state.items() if k not in parts.values()}
    out[_POS + "weight"] = g * v / v.norm(dim=(0, 1), keepdim=True)
    return out


def convert(state: dict[str, torch.Tensor], args: dict[str, Any], where: str = "state dict") -> MERT:
    """A mirkit ``MERT`` holding the Hugging Face weights."""
    for prefix in ("mert_model.", "hubert."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = fold_weight_norm(state, where)
    try:
        encoder = MERT(**args)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    own = encoder.state_dict()
    refuse_unknown([k for k in state if k not in own and k != "masked_spec_embed"], where, "MERT-v1")
    load_exact(encoder, {k: (k, v) for k, v in state.items() if k in own}, where, "MERT-v1")
    return encoder.eval()


def import_mert(path: str | Path, out: str | Path, config: str | Path | None = None) -> ModelConfig:
    """Convert a MERT-v1 download (folder, or weights file + config.json) into the model folder ``out``."""
    weights, cfg = find_files(path, config)
    args = read_config(cfg)
    state = find_state_dict(read_weights_only(weights), _looks_like_mert, str(weights))
    encoder = convert(state, args, str(weights))
    preset = next((n for n, want in (("mert-v1-95m", dict(dim=768, depth=12, heads=12, units=3072, pre_norm=False)),
                                     ("mert-v1-330m", dict(dim=1024, depth=24, heads=16, units=4096, pre_norm=True)))
                   if all(args[k] == v for k, v in want.items())), None)
    provenance = {"source": f"MERT-v1 ({weights.name} + {cfg.name}), m-a-p/MERT", "licence": LICENCE,
                  "source_sha256": sha256_file(weights), "config_sha256": sha256_file(cfg), "download": DOWNLOAD}
    full = encoder_config(encoder, FEATURE_SET, FEATURES[FEATURE_SET].to_dict(), WINDOW, preset=preset,
                          provenance=provenance)
    return save_model_folder(out, encoder, full)
