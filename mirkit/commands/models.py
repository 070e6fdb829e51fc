"""``mirkit models``: every named encoder size per recipe, with parameters, timing, input and paper."""

from __future__ import annotations

import typer

from mirkit.ui import out_console, table


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models() -> None:
        """List every model preset: recipe, encoder architecture (mirkit.models.registry), parameters of
        the encoder (what a model folder keeps) and of the whole pretraining model (heads included), the
        size its paper reports, the input feature set, the output frame rate (frames per second of
        frame embeddings), what one output frame sees of the audio before mixing, and the receptive
        field (every architecture mixes its whole window: attention or SummaryMixing). Counted on the
        meta device: no memory is used. Then the training presets (`mirkit pretrain --preset myna-cpu15`):
        model size, steps, lr and recipe settings measured to learn on real music in 15 CPU minutes."""
        import torch

        from mirkit import recipes
        from mirkit.data.features import PRESETS as FEATURES
        from mirkit.models.base import count_parameters
        from mirkit.models.registry import architecture_name
        from mirkit.models.timing import timing
        from mirkit.params import resolve
        papers: dict[str, str] = {}
        rows = []
        for name, cls, preset in recipes.all_presets():
            if cls.name not in papers:
                papers[cls.name] = cls.paper
            recipe = cls(resolve(cls.Params, {"preset": name}))
            with torch.device("meta"):
                model = recipe.build_model()
            n, full = count_parameters(model.encoder), count_parameters(model)
            t = timing(model.encoder, FEATURES[recipe.feature_set].to_dict(), recipe.crop_frames)
            rows.append((cls.name, name, architecture_name(model.encoder), f"{n / 1e6:.2f} M", f"{full / 1e6:.2f} M",
                         f"{preset.paper_params:g} M" if preset.paper_params else "-", recipe.feature_set,
                         f"{t['frame_rate']:.3g} Hz", f"{t['token_seconds'] * 1000:.0f} ms",
                         f"{t['receptive_field_seconds']:.2f} s", "CPU" if preset.cpu_sized else "GPU"))
        out_console.print(table("mirkit models (encoder parameters counted without allocating memory)",
                                ["recipe", "preset", "architecture", "encoder", "with training heads", "paper says",
                                 "features", "frame rate", "frame sees", "receptive field", "for"], rows))
        out_console.print(table("papers", ["recipe", "follows"], papers.items()))
        from mirkit.train.presets import TRAINING_PRESETS
        out_console.print(table("training presets (mirkit pretrain --preset NAME; docs/training.md)",
                                ["name", "recipe", "model preset", "steps", "batch", "lr", "recipe settings", "measured"],
                                [(n, t.recipe, t.size, str(t.steps), str(t.batch_size), f"{t.lr:g}",
                                  ", ".join(f"{k}: {v}" for k, v in t.recipe_params.items()) or "-", t.measured)
                                 for n, t in TRAINING_PRESETS.items()]))
