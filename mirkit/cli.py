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
          "synth -> mels -> tokens -> pretrain -> extract -> probe -> inspect\n\n"
          "Every command reads its section of params.yaml (--params to point elsewhere); "
          "--set key=value overrides single values. `dvc repro` runs the whole chain."),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)



def _version(value: bool) -> None:
    if value:
        import mirkit
        typer.echo(f"mirkit {mirkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """mirkit: features -> tokens -> pretraining -> embeddings -> probes."""


COMMANDS = ("synth", "mels", "tokens", "pretrain", "models", "extract", "probe",
            "benchmark_manifest", "inspect", "verify", "import_models")

def reflow(text: str) -> str:
    """Join the hard-wrapped lines of each help paragraph (rich would keep the ragged breaks);
    list items, indented lines and blank-line paragraph breaks are kept."""
    paragraphs = []
    for para in text.strip().split("\n\n"):
        lines = [ln.rstrip() for ln in para.strip("\n").splitlines()]
        out: list[str] = []
        for ln in lines:
            keep = not out or ln[:1] in (" ", "-", "*", "|") or out[-1].endswith(":")
            if keep:
                out.append(ln)
            else:
                out[-1] = f"{out[-1]} {ln.strip()}"
        paragraphs.append("\n".join(ln.strip() if not ln.startswith("    ") else ln for ln in out))
    return "\n\n".join(paragraphs)


for _name in COMMANDS:
    try:
        _module = importlib.import_module(f"mirkit.commands.{_name}")
    except ModuleNotFoundError as exc:  # a stage not built yet must not break the others
        if exc.name != f"mirkit.commands.{_name}":
            raise
        continue
    _module.register(app)

for _info in app.registered_commands:
    _doc = _info.help or (_info.callback.__doc__ if _info.callback else None)
    if _doc:
        import inspect as _inspect
        from rich.markup import escape as _escape
        _info.help = _escape(reflow(_inspect.cleandoc(_doc)))


def main() -> None:  # pragma: no cover
    app()
