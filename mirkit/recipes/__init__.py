"""Registry of pretraining recipes: name -> Recipe subclass (one module each)."""

from __future__ import annotations

import importlib

from mirkit.recipes.base import Preset, Recipe

#: recipe name -> module that defines it (a module not yet present is skipped)
_MODULES = {"myna": "myna", "contrastive": "contrastive", "mt2": "mt2", "muse-lq": "muse_lq"}


def available() -> dict[str, type[Recipe]]:
    """All importable recipes, by name."""
    found = {}
    for name, module in _MODULES.items():
        try:
            mod = importlib.import_module(f"mirkit.recipes.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mirkit.recipes.{module}":
                raise
            continue
        found[name] = mod.RECIPE
    return found


def get(name: str) -> type[Recipe]:
    recipes = available()
    if name not in recipes:
        raise KeyError(f"unknown recipe '{name}' (available: {', '.join(recipes)})")
    return recipes[name]


def all_presets() -> list[tuple[str, type[Recipe], Preset]]:
    """(preset name, recipe, preset) for every preset of every recipe."""
    return [(pname, r, p) for r in available().values() for pname, p in r.presets.items()]


__all__ = ["Recipe", "Preset", "available", "get", "all_presets"]
