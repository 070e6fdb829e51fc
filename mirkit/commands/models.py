"""``mirkit models``: every preset with its parameter count, input features and paper."""

from __future__ import annotations

import typer

from mirkit.ui import out_console, table


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models() -> None:
        """List every model preset: recipe, parameters (counted on the meta device, no memory used),
        the paper's reported size, input feature set and the paper it follows."""
        from mirkit.models.base import count_parameters
        from mirkit.params import resolve
        from mirkit import recipes
        import torch
        rows = []
        for name, cls, preset in recipes.all_presets():
            recipe = cls(resolve(cls.Params, {"preset": name}))
            with torch.device("meta"):
                n = count_parameters(recipe.build_model().encoder)
            rows.append((cls.name, name, f"{n / 1e6:.2f} M",
                         f"{preset.paper_params:g} M" if preset.paper_params else "-",
                         recipe.feature_set, "cpu" if preset.cpu_sized else "gpu", preset.description))
        out_console.print(table("mirkit models", ["recipe", "preset", "encoder params", "paper", "features",
                                                  "size", "description"], rows))
