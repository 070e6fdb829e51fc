"""``mirkit pretrain``: self-supervised pretraining with one of the registered recipes.

The training loop (:mod:`mirkit.train.loop`) knows no probe: when ``pretrain.online_probe`` is set,
this command builds the online-probe callback (:mod:`mirkit.eval.online_probe`) and passes it in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mirkit import params as P
from mirkit.ui import console, overrides, print_params, progress, table

if TYPE_CHECKING:
    from mirkit.train.callbacks import Callback
    from mirkit.train.loop import PretrainParams

#: modules this command imports only when a params key is set (non-empty). tests/test_dvc.py's import
#: walker reads this table: dvc.yaml lists them (and what they import) as code deps of the pretrain stage
#: exactly when params.yaml sets the key, and a test checks that the import really happens only then.
IMPORTED_WHEN = {"pretrain.online_probe": ("mirkit.eval.online_probe",)}

HELP = """Pretrain an encoder on the feature store with a recipe: myna (masked contrastive SimpleViT),
contrastive (ViT-1D, Emergent properties), mt2 (two class tokens: CPSD + NT-Xent) or muse-lq
(Conformer/Branchformer, masked random-quantizer tokens).

Reads section `pretrain` of params.yaml: `recipe`, `preset` (see `mirkit models`), optimiser and schedule,
and per-recipe settings under `recipe_params.<recipe>`. Writes model.safetensors + config.json (+ a training
state for --resume) to `out`, step metrics through dvclive to the folder `log` (loss, lr, throughput, the
held-out loss on `val_split` every `val_every` steps: `dvc plots show`, `dvc exp show`) and a summary to
`summary` (dvc metrics).
Multi-GPU / multi-node: `torchrun --nproc-per-node N -m mirkit pretrain` (DDP; contrastive negatives span the
global batch).

A training preset (`--preset myna-cpu15`; `mirkit models` lists them) sets recipe, model size, steps, lr
and recipe settings measured to learn on real music within 15 CPU minutes; `--set` still overrides it.

Example: mirkit pretrain --set recipe=mt2 --set preset=vit1d-micro --set steps=50
"""


def register(app: typer.Typer) -> None:
    @app.command("pretrain", help=HELP)
    def pretrain(
        params: Path = typer.Option(P.DEFAULT_PARAMS, "--params", help="params file; section `pretrain` is read"),
        recipe: str | None = typer.Option(None, help="recipe name (overrides pretrain.recipe)"),
        preset: str | None = typer.Option(None, help="model preset (`vit1d-micro`) or training preset (`mt2-cpu15`); "
                                                     "overrides pretrain.preset"),
        resume: bool = typer.Option(False, "--resume", help="continue from the checkpoint in `out`"),
        set_: list[str] | None = typer.Option(None, "--set", help="override one value: KEY=VALUE, KEY.SUB=VALUE or SECTION.KEY=VALUE; mappings merge (KEY:=VALUE replaces)"),
    ) -> None:
        from mirkit.train.loop import PretrainParams, make_recipe, train
        from mirkit.train.presets import expand
        ov = overrides(set_)
        ov.update({k: v for k, v in {"recipe": recipe, "preset": preset}.items() if v is not None})
        named = (next((ov[k] for k in ("preset", "pretrain.preset") if k in ov), None)
                 or P.load_yaml_section(params, "pretrain").get("preset"))
        ov, training_preset = expand(named, ov)
        p = P.load(PretrainParams, "pretrain", params, ov)
        r = make_recipe(p)
        hooks = callbacks_for(p)          # validates pretrain.online_probe before any work
        print_params("pretrain", p)
        if training_preset is not None:
            console.print(f"[dim]training preset {named}: {training_preset.overrides()} "
                          f"(measured: {training_preset.measured})[/dim]")
        console.print(f"[dim]{r.name} recipe parameters: {r.params_dict()}[/dim]")
        with progress() as bar:
            task = bar.add_task(f"pretrain {r.name}", total=p.steps, info="")
            result = train(p, resume=resume, callbacks=hooks, on_step=lambda s, row: bar.update(
                task, completed=s, info=step_info(row)))
        first = next((r["loss"] for r in result.history if "loss" in r), float("nan"))
        val = [r["val/loss"] for r in result.history if "val/loss" in r]
        console.print(table(f"pretrain: {r.name} ({r.params.preset})", None, [
            ("parameters", f"{result.n_params / 1e6:.2f} M"),
            ("steps", f"{result.resumed_from} -> {result.steps}"),
            ("loss (first logged -> last)", f"{first:.4f} -> {result.final_loss:.4f}"),
            *([(f"held-out loss ({p.val_split}, first -> last)", f"{val[0]:.4f} -> {val[-1]:.4f}")] if val else []),
            ("throughput", f"{result.samples_per_s:.1f} samples/s"),
            ("time", f"{result.seconds:.1f} s" + (f" (evaluating {result.eval_seconds:.1f} s, of which online probes "
                                                  f"{result.callback_seconds.get('online probes', 0.0):.1f} s)" if result.eval_seconds else "")),
            ("model folder", f"{result.out} (current step: {result.out}/step-{result.steps:06d}/model)"),
            ("curves / summary", f"{p.log} (dvclive) / {p.summary}"),
        ]))


def callbacks_for(p: PretrainParams) -> Sequence[Callback]:
    """The loop's callbacks for ``p``: the online probes when ``pretrain.online_probe`` is set (validated
    here, raising ``ParamsError``). Evaluation code is imported only then (see ``IMPORTED_WHEN``)."""
    if not p.online_probe:
        return []
    from mirkit.eval.online_probe import OnlineProbe
    return [OnlineProbe.from_params(p.online_probe)]


def step_info(row: dict) -> str:
    """The progress bar's line: the latest train loss, lr, throughput and held-out loss."""
    shown = (("loss", "loss {:.4f}"), ("lr", "lr {:.2e}"), ("samples_per_s", "{:.0f} samples/s"), ("val/loss", "val {:.4f}"))
    return "  ".join(fmt.format(row[k]) for k, fmt in shown if k in row)
