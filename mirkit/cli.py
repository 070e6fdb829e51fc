"""The ``mirkit`` command line: one thin Typer command per pipeline stage.

Each command lives in ``mirkit/commands/<name>.py`` and exposes ``register(app)``; this file only
assembles them, so adding a stage never touches the others.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="mirkit",
    help=("Self-supervised music representation learning as one cached pipeline:\n\n"
          "synth -> mels -> tokens -> pretrain -> extract -> probe\n\n"
          "Every command reads its section of params.yaml (--params to point elsewhere); "
          "--set key=value overrides single values. `dvc repro` runs the whole chain."),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)



@app.callback()
def _root() -> None:
    """mirkit: features -> tokens -> pretraining -> embeddings -> probes."""


COMMANDS = ("synth", "mels", "tokens", "pretrain", "models", "extract", "probe",
            "benchmark_manifest", "inspect")

for _name in COMMANDS:
    try:
        _module = importlib.import_module(f"mirkit.commands.{_name}")
    except ModuleNotFoundError as exc:  # a stage not built yet must not break the others
        if exc.name != f"mirkit.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:  # pragma: no cover
    app()
