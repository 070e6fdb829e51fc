"""``mirkit models``: every preset with its parameter count, input features and paper."""

from __future__ import annotations

import typer

from mirkit.ui import out_console, table


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models() -> None:
        """List every model preset: recipe, parameters of the encoder (what extraction keeps) and of the
        whole pretraining model (heads included), the size its paper reports, the input feature set and
        the paper it follows. Counted on the meta device: no memory is used."""
        from mirkit.models.base import count_parameters
        from mirkit.params import resolve
        from mirkit import recipes
        import torch
        papers: dict[str, str] = {}
        rows = []
        for name, cls, preset in recipes.all_presets():
            if cls.name not in papers:
                papers[cls.name] = cls.paper
            recipe = cls(resolve(cls.Params, {"preset": name}))
            with torch.device("meta"):
                model = recipe.build_model()
            n, full = count_parameters(model.encoder), count_parameters(model)
            rows.append((cls.name, name, f"{n / 1e6:.2f} M", f"{full / 1e6:.2f} M",
                         f"{preset.paper_params:g} M" if preset.paper_params else "-",
                         recipe.feature_set, "CPU" if preset.cpu_sized else "GPU"))
        out_console.print(table("mirkit models (encoder parameters counted without allocating memory)",
                                ["recipe", "preset", "encoder", "with training heads", "paper says", "features", "for"], rows))
        out_console.print(table("papers", ["recipe", "follows"], papers.items()))
