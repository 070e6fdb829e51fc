"""Myna's released checkpoints (ghost-signal/myna) -> a mirkit ``simple-vit`` model folder.

The reference ``vit.py`` (a modified lucidrains SimpleViT) names its state dict as follows (``i`` =
block, ``P`` = patch height x width, ``D`` = dim, ``I`` = heads x dim_head, ``M`` = mlp_dim)::

    to_patch_embedding.1.{weight,bias}        (P,)      LayerNorm over the flattened patch
    to_patch_embedding.2.weight / .bias       (D, P) / (D,)   Linear patch -> dim
    to_patch_embedding.3.{weight,bias}        (D,)      LayerNorm
    to_patch_embedding_b.{1,2,3}.*                      the second (128x2) embedding of hybrid models
    transformer.layers.i.0.norm.{weight,bias} (D,)      attention pre-norm
    transformer.layers.i.0.to_qkv.weight      (3I, D)   no bias
    transformer.layers.i.0.to_out.weight      (D, I)    no bias
    transformer.layers.i.1.net.0.{weight,bias} (D,)     feed-forward pre-norm
    transformer.layers.i.1.net.1.weight / .bias (M, D) / (M,)
    transformer.layers.i.1.net.3.weight / .bias (D, M) / (D,)
    transformer.norm.{weight,bias}            (D,)
    linear_head.*                                       classification/projection head (dropped)

Positions are fixed sin-cos (not stored). Patches flatten as ``(p1 p2 c)`` row-major over a
(frequency rows, time columns) grid, exactly :func:`mirkit.models.vit.patchify`, and q/k/v split
as mirkit's ``Attention``, so the weights copy over one to one. Variants: ``base`` = 16x16 patches,
``vertical`` = 128x2, ``hybrid`` = 16x16 (``to_patch_embedding``) + 128x2 (``to_patch_embedding_b``),
embeddings concatenated square then vertical, as the reference's ``hybrid_mode``. Base and vertical
checkpoints have identical shapes (16 x 16 = 128 x 2 = 256 values per patch): only ``--variant`` tells
them apart, so give the one matching the file you downloaded.

Input: the released models read raw mel power from nnAudio's ``MelSpectrogram(sr=16000, n_mels=128)``
(n_fft 2048, hop 512): mirkit's ``mel16k`` feature set, ``log1p`` off. Chunk length: Myna's
``example.py`` embeds 50,000-sample chunks, floored to the patch width: 96 frames (base, hybrid),
98 frames (vertical).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from mirkit.data.features import PRESETS as FEATURES
from mirkit.importers.torchfile import find_state_dict, read_weights_only
from mirkit.models.config import ModelConfig
from mirkit.models.registry import SIZES
from mirkit.models.vit import SimpleViT
from mirkit.train.checkpoint import CheckpointError, encoder_config, save_model_folder

VARIANTS = {"base": "square", "vertical": "vertical", "hybrid": "hybrid"}
#: chunk length in mel frames per variant (50,000 samples floored to the patch width)
WINDOW = {"base": 96, "vertical": 98, "hybrid": 96}
DOWNLOAD = "https://github.com/ghost-signal/myna#model-checkpoints"
_HEAD = re.compile(r"^linear_head\.")
_PATCH = re.compile(r"^to_patch_embedding(_b)?\.([123])\.(weight|bias)$")
_BLOCK = re.compile(r"^transformer\.layers\.(\d+)\.([01])\.(.+)$")
_BLOCK_PARTS = {("0", "norm.weight"): "attn.norm.weight", ("0", "norm.bias"): "attn.norm.bias",
                ("0", "to_qkv.weight"): "attn.qkv.weight", ("0", "to_out.weight"): "attn.out.weight",
                **{("1", f"net.{j}.{w}"): f"ff.net.{j}.{w}" for j in (0, 1, 3) for w in ("weight", "bias")}}
_PATCH_PARTS = {"1": "norm_in", "2": "proj", "3": "norm_out"}


def mirkit_name(key: str, variant: str) -> str | None:
    """The mirkit ``SimpleViT`` name of a reference key; None for a dropped head; raises for others."""
    if _HEAD.match(key):
        return None
    if key in ("transformer.norm.weight", "transformer.norm.bias"):
        return "norm." + key.rsplit(".", 1)[1]
    m = _PATCH.match(key)
    if m:
        second, idx, what = m.groups()
        if second and variant != "hybrid":
            raise KeyError(key)
        kind = "vertical" if second or variant == "vertical" else "square"
        return f"patch_embeds.{kind}.{_PATCH_PARTS[idx]}.{what}"
    m = _BLOCK.match(key)
    if m and (m.group(2), m.group(3)) in _BLOCK_PARTS:
        return f"blocks.{m.group(1)}.{_BLOCK_PARTS[(m.group(2), m.group(3))]}"
    raise KeyError(key)


def _looks_like_myna(keys: dict[str, Any]) -> bool:
    return "to_patch_embedding.2.weight" in keys and any(k.startswith("transformer.layers.") for k in keys)


def infer_args(state: dict[str, torch.Tensor], variant: str, dim_head: int, where: str) -> dict[str, Any]:
    """SimpleViT arguments from the shapes of a reference state dict."""
    try:
        dim = int(state["to_patch_embedding.2.weight"].shape[0])
        depth = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK.match(k)))
        inner = int(state["transformer.layers.0.0.to_qkv.weight"].shape[0]) // 3
        mlp_dim = int(state["transformer.layers.0.1.net.1.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{where}: cannot read the model size: missing {exc}") from None
    if inner % dim_head:
        raise CheckpointError(f"{where}: attention width {inner} is not a multiple of dim_head={dim_head} "
                              "(pass the checkpoint's --dim-head)")
    return dict(dim=dim, depth=depth, heads=inner // dim_head, mlp_dim=mlp_dim, dim_head=dim_head,
                patch=VARIANTS[variant], bins=128, log1p=False)


def convert(state: dict[str, torch.Tensor], variant: str, dim_head: int = 64,
            where: str = "state dict") -> tuple[SimpleViT, dict[str, Any]]:
    """A mirkit ``SimpleViT`` holding the reference weights, and its constructor arguments. Unknown
    keys, missing keys and wrong shapes raise :class:`CheckpointError` naming them."""
    if variant not in VARIANTS:
        raise CheckpointError(f"variant {variant!r}: choose from {', '.join(VARIANTS)}")
    unknown, mapped = [], {}
    for key, value in state.items():
        try:
            name = mirkit_name(key, variant)
        except KeyError:
            unknown.append(key)
            continue
        if name is not None:
            mapped[name] = (key, value)
    if unknown:
        raise CheckpointError(f"{where}: unknown key(s) for a Myna-{variant} checkpoint: {', '.join(sorted(unknown)[:8])}"
                              + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    args = infer_args(state, variant, dim_head, where)
    try:
        encoder = SimpleViT(**args)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    own = encoder.state_dict()
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise CheckpointError(f"{where}: missing weight(s) for a Myna-{variant} model: {', '.join(missing[:8])}")
    for name, (key, value) in sorted(mapped.items()):
        if tuple(value.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{where}: {key} has shape {tuple(value.shape)}, a Myna-{variant} model of "
                                  f"dim {args['dim']} needs {tuple(own[name].shape)}")
    encoder.load_state_dict({name: value.float() for name, (_, value) in mapped.items()}, strict=True)
    return encoder.eval(), args


def import_myna(path: str | Path, variant: str, out: str | Path, dim_head: int = 64) -> ModelConfig:
    """Convert a Myna checkpoint file into the model folder ``out``; returns its config."""
    obj = read_weights_only(path)
    state = find_state_dict(obj, _looks_like_myna, str(path))
    encoder, args = convert(state, variant, dim_head, str(path))
    preset = next((name for name, size in SIZES.items() if size.architecture == "simple-vit"
                   and all(args.get(k) == v for k, v in size.args.items())), None)
    config = encoder_config(encoder, "mel16k", FEATURES["mel16k"].to_dict(), WINDOW[variant], preset=preset,
                            provenance={"source": f"Myna-{variant} ({Path(path).name}), ghost-signal/myna",
                                        "variant": variant, "download": DOWNLOAD})
    return save_model_folder(out, encoder, config)
