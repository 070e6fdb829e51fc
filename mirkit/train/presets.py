"""Training presets: a model size plus the steps, learning rate and recipe settings measured to learn.

A model preset (``myna-small``, ``vit1d-micro``: :data:`mirkit.models.registry.SIZES`) names an encoder
size only. A *training* preset (``myna-cpu15``) names a whole pretraining setting: the recipe, its
model size, steps, lr, batch and recipe parameters, chosen on the real-music check set
(``bench/realmusic``, docs/training.md) as the largest pretrained-minus-random-init gain within a
budget of 15 minutes of one CPU thread (pretrain process CPU time on the 2-core machine type this
project is built on; a faster CPU fits more steps in 15 minutes, so the *steps* are the preset, not the
minutes). Each carries the measurement that chose it.

``mirkit pretrain --preset myna-cpu15`` (or ``pretrain.preset: myna-cpu15`` in params.yaml, or
``dvc exp run -S pretrain.preset=myna-cpu15``) applies one: its values (recipe parameters, optimiser and
schedule included) replace params.yaml's, and a ``--set`` on the command line still replaces those.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from mirkit.params import ParamsError

#: the optimiser and schedule every preset was measured with (params.yaml's at the time); a preset sets
#: them too, so it trains the same thing from any params file (``--params none`` included)
MEASURED_WITH: dict[str, Any] = {"optimizer": "adamw", "warmup_steps": 20, "min_lr_ratio": 0.01,
                                 "weight_decay": 0.01, "betas": [0.9, 0.98], "grad_clip": 1.0}


@dataclass(frozen=True)
class TrainingPreset:
    """One measured pretraining setting (see the module docstring)."""

    recipe: str
    size: str                      # model preset, :data:`mirkit.models.registry.SIZES`
    steps: int
    lr: float
    batch_size: int = 32
    recipe_params: dict[str, Any] = field(default_factory=dict)
    measured: str = ""             # what the check set showed, with the CPU it took

    def overrides(self) -> dict[str, Any]:
        """The ``pretrain`` keys this preset sets, in :func:`mirkit.params.apply_overrides` form: the
        recipe's parameters are *replaced* (the recipe's defaults plus the preset's), so a params.yaml
        with other recipe settings still trains what was measured."""
        return {"recipe": self.recipe, "preset": self.size, "steps": self.steps, "lr": self.lr,
                "batch_size": self.batch_size, **MEASURED_WITH,
                f"recipe_params.{self.recipe}:": dict(self.recipe_params)}


#: every training preset, by name (``mirkit models`` lists them)
TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "myna-cpu15": TrainingPreset(
        "myna", "myna-small", steps=3600, lr=5e-4,
        measured="302 CPU s (7,200 to 9,000 steps, or batch 64, lose key while timbre holds); vs random init: "
                 "family +0.134 [+0.049, +0.220], instrument +0.146 [+0.061, +0.232], key +0.110 [-0.012, "
                 "+0.220] (not clear)"),
    "contrastive-cpu15": TrainingPreset(
        "contrastive", "vit1d-micro", steps=1000, lr=5e-4,
        measured="171 CPU s (longer runs lose key: 2,000 and 4,500 steps, and vit1d-mini, gain less); vs random "
                 "init: instrument +0.085 [+0.012, +0.171], tempo R^2 +0.214 [+0.057, +0.414], key +0.037 "
                 "[-0.073, +0.146] (not clear)"),
    "muse-lq-cpu15": TrainingPreset(
        "muse-lq", "brn-sum-tiny", steps=1800, lr=1e-3, recipe_params={"crop_frames": 200, "mask_prob": 0.4},
        measured="786 CPU s; no gain clear of zero (key +0.073 [-0.024, +0.171], family +0.037 [+0.000, "
                 "+0.085]); the best of the settings tried, none of which gains clearly in 15 CPU minutes"),
    "mt2-cpu15": TrainingPreset(
        "mt2", "vit1d-micro", steps=900, lr=2e-3, recipe_params={"key_frontend": "chroma"},
        measured="828 CPU s; held-out CPSD 3.00 -> 0.27 (plateau 2.78); key token vs random init, key accuracy "
                 "0.732 vs 0.439, +0.293 [+0.183, +0.402]"),
}


def expand(preset: str | None, overrides: dict[str, Any]) -> tuple[dict[str, Any], TrainingPreset | None]:
    """Command-line ``overrides`` with the training preset named by ``preset`` (the effective
    ``pretrain.preset``) spliced in under them; unchanged when ``preset`` is not a training preset.

    A ``recipe`` given on the command line must be the preset's own (a Myna setting cannot train MT2).
    """
    tp = TRAINING_PRESETS.get(preset or "")
    if tp is None:
        from mirkit.models.registry import SIZES
        if preset and preset not in SIZES:
            close = difflib.get_close_matches(preset, [*TRAINING_PRESETS, *SIZES], n=1)
            raise ParamsError(f"pretrain.preset={preset}: neither a model preset nor a training preset"
                              + (f"; did you mean '{close[0]}'?" if close else "")
                              + f" (training presets: {', '.join(TRAINING_PRESETS)}; model presets: `mirkit models`)")
        return overrides, None
    given = next((v for k, v in overrides.items() if k in ("recipe", "pretrain.recipe")), None)
    if given is not None and given != tp.recipe:
        raise ParamsError(f"pretrain.preset={preset}: a training preset of recipe '{tp.recipe}', "
                          f"but pretrain.recipe={given} was given")
    rest = {k: v for k, v in overrides.items() if k not in ("preset", "pretrain.preset")}
    return {**tp.overrides(), **rest}, tp
