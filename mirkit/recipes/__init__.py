"""Registry of pretraining recipes: every module here that defines ``RECIPE`` is one.

A new recipe is one new file in this package (a :class:`~mirkit.recipes.base.Recipe` subclass bound to
``RECIPE``); nothing else needs to change.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from mirkit.recipes.base import Preset, Recipe


@functools.cache
def available() -> dict[str, type[Recipe]]:
    """All recipes of this package, by name."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        recipe = getattr(importlib.import_module(f"{__name__}.{info.name}"), "RECIPE", None)
        if recipe is not None:
            found[recipe.name] = recipe
    return found


def get(name: str) -> type[Recipe]:
    """The recipe registered as ``name``; a :class:`ParamsError` naming ``pretrain.recipe`` otherwise."""
    from mirkit.params import ParamsError
    recipes = available()
    if name not in recipes:
        raise ParamsError(f"pretrain.recipe={name!r}: unknown recipe (available: {', '.join(recipes)})")
    return recipes[name]


def all_presets() -> list[tuple[str, type[Recipe], Preset]]:
    """(preset name, recipe, preset) for every preset of every recipe."""
    return [(pname, r, p) for r in available().values() for pname, p in r.presets.items()]


__all__ = ["Recipe", "Preset", "available", "get", "all_presets"]
