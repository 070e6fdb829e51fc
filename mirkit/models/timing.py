"""Frame rate and receptive field of an encoder on its input features.

* ``frame_rate``: output frames per second (feature frame rate / input frames per output frame;
  the finest pass of a hybrid Myna model);
* ``token_seconds``: audio one output frame sees through its own input frames before any mixing
  across time: ``(span - 1) * hop + frame_length`` samples, where ``span`` is the number of input
  frames in its patch / front-end receptive field and ``frame_length`` is the analysis window
  (``n_fft`` for mels; the longest, lowest-bin kernel ``Q * sr / fmin`` with
  ``Q = 1 / (2^(1/bins_per_octave) - 1)`` for a constant-Q transform, as nnAudio's CQT1992v2);
* ``receptive_field_seconds``: every architecture here mixes the whole window (self-attention or
  SummaryMixing), so every output frame sees the whole chunk: ``(window - 1) * hop + frame_length``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mirkit.models.base import Encoder
from mirkit.models.config import ModelConfig


def frame_length(features: dict[str, Any]) -> int:
    """Samples one input frame is computed from."""
    if features.get("kind") == "cqt":
        q = 1.0 / (2 ** (1.0 / float(features["bins_per_octave"])) - 1)
        return int(math.ceil(q * float(features["sample_rate"]) / float(features["fmin"])))
    if features.get("kind") == "wave":
        return int(features["hop_length"])
    return int(features["n_fft"])


def timing(encoder: Encoder, features: dict[str, Any], window_frames: int) -> dict[str, float]:
    step, span = encoder.token_frames()
    sr, hop = float(features["sample_rate"]), float(features["hop_length"])
    length = frame_length(features)
    return {"frame_rate": sr / hop / step, "frames_per_token": float(step), "token_frames": int(span),
            "token_seconds": ((span - 1) * hop + length) / sr,
            "window_seconds": window_frames * hop / sr,
            "receptive_field_seconds": ((window_frames - 1) * hop + length) / sr}


def timing_of_config(config: ModelConfig) -> dict[str, float]:
    """:func:`timing` of a model folder config (the encoder is built on the meta device: no memory)."""
    from mirkit.models import registry
    with torch.device("meta"):
        encoder = registry.build(config.architecture, config.args)
    return timing(encoder, config.features, int(config.window_frames))
