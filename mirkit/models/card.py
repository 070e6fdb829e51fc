"""The model card (``README.md``) written into every model folder, generated from its config.

Sections: architecture and size, input features and timing, training (recipe, data, steps) and,
when given, probe results. Deterministic: the same config gives the same bytes (no dates).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirkit.models.config import ModelConfig


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(config: ModelConfig, extra: dict[str, Any]) -> str:
    """Markdown card for a model folder config; ``extra`` may hold ``probe`` (metrics by task) and
    ``source`` (where the weights came from, for imported models)."""
    from mirkit.models.timing import timing_of_config
    prov = config.provenance
    name = config.preset or config.architecture
    lines = [f"# {name} (mirkit encoder)", "",
             "Load it with `mirkit.load_encoder(\"<this folder>\")` or `mirkit extract --model <this folder>`.", "",
             "## Architecture", "",
             "| | |", "|---|---|",
             f"| architecture | `{config.architecture}` |",
             f"| named size | {config.preset or '-'} |",
             f"| parameters | {config.n_params:,} ({config.n_params / 1e6:.2f} M) |",
             f"| width x depth | {config.dim} x {config.depth} |", ""]
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in config.args.items())
    lines += [f"Constructor arguments: `{args}`", ""]
    feats = config.features
    t = timing_of_config(config)
    lines += ["## Input and timing", "",
              f"Feature set `{config.feature_set}`: {feats.get('kind')} at {feats.get('sample_rate')} Hz, "
              f"hop {feats.get('hop_length')}, scale {feats.get('scale')}.", "",
              "| | |", "|---|---|",
              f"| window (chunk) | {config.window_frames} frames = {t['window_seconds']:.3f} s |",
              f"| output frame rate | {t['frame_rate']:.3f} Hz ({t['frames_per_token']:g} input frames per output frame) |",
              f"| one output frame sees (before mixing) | {t['token_seconds']:.3f} s |",
              f"| receptive field (global mixing within a window) | {t['receptive_field_seconds']:.3f} s |", ""]
    lines += ["## Training", ""]
    if prov.get("recipe"):
        train = prov.get("train") or {}
        lines += [f"- recipe: `{prov['recipe']}`", f"- steps: {config.step}"]
        for key in ("features", "manifest", "batch_size", "lr", "seed"):
            if train.get(key) is not None:
                lines.append(f"- {key}: {_fmt(train[key])}")
    elif extra.get("source") or prov.get("source"):
        lines.append(f"- imported from: {extra.get('source') or prov.get('source')}")
        for key, value in prov.items():
            if key != "source":
                lines.append(f"- {key}: {_fmt(value)}")
    else:
        lines.append("- not recorded")
    lines.append("")
    probe = extra.get("probe") or prov.get("probe")
    if probe:
        lines += ["## Probe results", "", "| task | metric | value |", "|---|---|---|"]
        for task, metrics in probe.items():
            if isinstance(metrics, dict):
                for metric, value in metrics.items():
                    lines.append(f"| {task} | {metric} | {_fmt(value)} |")
            else:
                lines.append(f"| {task} | - | {_fmt(metrics)} |")
        lines.append("")
    return "\n".join(lines)
