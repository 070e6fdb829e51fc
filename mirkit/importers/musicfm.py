"""MusicFM's released checkpoints (minzwon/musicfm, MIT) -> a mirkit ``musicfm`` model folder.

Files (https://huggingface.co/minzwon/MusicFM): ``pretrained_msd.pt`` / ``pretrained_fma.pt`` and the
matching ``msd_stats.json`` / ``fma_stats.json`` (mean and std of the dB mel). Checkpoints published
before 2024-02-13 were wrong (the reference README); download again if yours is older.

The ``.pt`` is ``torch.save({"state_dict": {"model." + name: tensor}, ...})`` (the reference strips six
characters, ``model.``); it is read with ``torch.load(weights_only=True)`` only. Besides the encoder
(``conv.*``, ``conformer.layers.*``, ``conformer.layer_norm.*``) it holds what an embedding never uses,
dropped here by name: the pretraining head ``linear.*``, ``cls_token``, the random-projection quantizer
``quantizer_melspec_2048_*``, the wav2vec2-conformer positional convolution (built but not applied by the
reference), the rotary ``inv_freq`` table (checked: it fixes the head width) and the mel front end's
buffers (checked equal to mirkit's ``mel24k`` filterbank, so the features are the reference's). Any other
key, and any missing key or wrong shape, is refused by name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from mirkit.data.features import PRESETS as FEATURES
from mirkit.importers.torchfile import find_state_dict, load_exact, read_weights_only, refuse_unknown, sha256_file
from mirkit.models.config import ModelConfig
from mirkit.models.musicfm import MusicFM
from mirkit.train.checkpoint import CheckpointError, encoder_config, save_model_folder

LICENCE = "MIT (minzwon/musicfm code and weights)"
DOWNLOAD = "https://huggingface.co/minzwon/MusicFM (pretrained_msd.pt + msd_stats.json, or pretrained_fma.pt + fma_stats.json)"
#: chunk length in mel frames: 30 s, MusicFM's training input length
WINDOW = 3000
FEATURE_SET = "mel24k"
_DROP = re.compile(r"^(linear\.(weight|bias)|cls_token|quantizer_melspec_2048_\d+\.(random_projection|codebook)"
                   r"|conformer\.pos_conv_embed\.conv\.(bias|weight|weight_g|weight_v|parametrizations\.weight\.original[01])"
                   r"|conformer\.embed_positions\.inv_freq"
                   r"|preprocessor_melspec_2048\.mel_stft\.(spectrogram\.window|mel_scale\.fb))$")
_LAYER = re.compile(r"^conformer\.layers\.(\d+)\.")


def _looks_like_musicfm(keys: dict[str, Any]) -> bool:
    return any(k.endswith("conv.linear.weight") for k in keys) and any("conformer.layers." in k for k in keys)


def read_stats(path: str | Path) -> tuple[float, float]:
    """``(mean, std)`` of the dB mel from a MusicFM ``*_stats.json``."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such stats file") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable stats file ({exc})") from None
    out = []
    for key in ("melspec_2048_mean", "melspec_2048_std"):
        value = stats.get(key) if isinstance(stats, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CheckpointError(f"{path}: '{key}' must be a finite number (MusicFM's stats file), got {value!r}")
        out.append(float(value))
    if out[1] <= 0:
        raise CheckpointError(f"{path}: 'melspec_2048_std' must be > 0, got {out[1]}")
    return out[0], out[1]


def _check_front_end(state: dict[str, torch.Tensor], where: str) -> None:
    fb = state.get("preprocessor_melspec_2048.mel_stft.mel_scale.fb")
    if fb is None:
        return
    from mirkit.data.features import MelFFT
    ours = MelFFT(FEATURES[FEATURE_SET]).mel_basis.T               # (freqs, mels) like torchaudio's fb
    if tuple(fb.shape) != tuple(ours.shape) or not torch.allclose(fb.float(), ours, atol=1e-6):
        raise CheckpointError(f"{where}: preprocessor_melspec_2048.mel_stft.mel_scale.fb is not MusicFM's mel "
                              f"filterbank (24 kHz, n_fft 2048, 128 HTK mels; shape {tuple(fb.shape)}): "
                              "mirkit's mel24k features would not be this model's input")


def infer_args(state: dict[str, torch.Tensor], heads: int | None, where: str) -> dict[str, Any]:
    """MusicFM constructor arguments from the shapes (heads from the rotary table when present)."""
    try:
        dim, flat = (int(s) for s in state["conv.linear.weight"].shape)
        conv_dim = int(state["conv.conv.0.conv1.weight"].shape[0])
        depth = 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k)))
        units = int(state["conformer.layers.0.ffn1.intermediate_dense.weight"].shape[0])
        kernel = int(state["conformer.layers.0.conv_module.depthwise_conv.weight"].shape[-1])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot read the model size: missing {exc}") from None
    inv = state.get("conformer.embed_positions.inv_freq")
    if inv is not None:
        head_dim = 2 * int(inv.numel())
        if dim % head_dim:
            raise CheckpointError(f"{where}: conformer.embed_positions.inv_freq implies heads of {head_dim}, "
                                  f"which do not divide the width {dim}")
        expect = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        if not torch.allclose(inv.float().flatten(), expect, rtol=1e-5):
            raise CheckpointError(f"{where}: conformer.embed_positions.inv_freq is not a rotary table of base 10000")
        if heads is not None and heads != dim // head_dim:
            raise CheckpointError(f"{where}: --heads {heads} contradicts the rotary table ({dim // head_dim} heads)")
        heads = dim // head_dim
    heads = heads or 16
    n_mels = FEATURES[FEATURE_SET].n_mels
    if flat != conv_dim * ((n_mels + 3) // 4):
        raise CheckpointError(f"{where}: conv.linear.weight has shape {(dim, flat)}; MusicFM on {n_mels} mel bands "
                              f"with {conv_dim} channels needs {(dim, conv_dim * n_mels // 4)}")
    return dict(dim=dim, depth=depth, heads=heads, units=units, conv_dim=conv_dim, n_mels=n_mels, kernel_size=kernel)


def convert(state: dict[str, torch.Tensor], mean: float, std: float, heads: int | None = None,
            where: str = "state dict") -> tuple[MusicFM, dict[str, Any]]:
    """A mirkit ``MusicFM`` holding the reference weights (``model.`` prefix already removed or not)."""
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    _check_front_end(state, where)
    args = infer_args(state, heads, where)
    try:
        encoder = MusicFM(**args, mel_mean=mean, mel_std=std)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    own = encoder.state_dict()
    unknown = [k for k in state if k not in own and not _DROP.match(k)]
    refuse_unknown(unknown, where, "MusicFM")
    load_exact(encoder, {k: (k, v) for k, v in state.items() if k in own}, where, "MusicFM")
    return encoder.eval(), {**args, "mel_mean": mean, "mel_std": std}


def import_musicfm(path: str | Path, stats: str | Path, out: str | Path, heads: int | None = None) -> ModelConfig:
    """Convert a MusicFM checkpoint + its stats file into the model folder ``out``; returns its config."""
    mean, std = read_stats(stats)
    obj = read_weights_only(path)
    state = find_state_dict(obj, _looks_like_musicfm, str(path))
    encoder, args = convert(state, mean, std, heads, str(path))
    preset = "musicfm" if all(args.get(k) == v for k, v in
                              dict(dim=1024, depth=12, heads=16, units=4096, conv_dim=512).items()) else None
    provenance = {"source": f"MusicFM ({Path(path).name} + {Path(stats).name}), minzwon/musicfm",
                  "licence": LICENCE, "source_sha256": sha256_file(path), "stats_sha256": sha256_file(stats),
                  "download": DOWNLOAD}
    config = encoder_config(encoder, FEATURE_SET, FEATURES[FEATURE_SET].to_dict(), WINDOW, preset=preset,
                            provenance=provenance)
    return save_model_folder(out, encoder, config)
