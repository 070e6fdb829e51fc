"""The ``mirkit`` command line: one thin Typer command per pipeline stage.

Each command lives in ``mirkit/commands/<name>.py`` and exposes ``register(app)``; this file only
assembles them, so adding a stage never touches the others.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from mirkit.errors import MirkitError


class _Group(TyperGroup):
    """The one place errors reach the user: a :class:`MirkitError` from any command becomes one red
    line and the exit code of its kind (docs/errors.md); anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MirkitError as exc:
            from rich.markup import escape

            from mirkit.ui import console
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


#: stage command -> (module, dataclass, params.yaml section): `--help` lists the section's keys
STAGE_PARAMS = {
    "synth": ("mirkit.data.synth", "SynthParams", "synth"),
    "mels": ("mirkit.data.mels", "MelsParams", "mels"),
    "tokens": ("mirkit.data.tokens", "TokensParams", "tokens"),
    "pretrain": ("mirkit.train.loop", "PretrainParams", "pretrain"),
    "extract": ("mirkit.eval.extract", "ExtractParams", "extract"),
    "probe": ("mirkit.commands.probe", "ProbeParams", "probe"),
}


def params_help(section: str) -> str:
    """Every key of a stage's params section with its default and help (imported only for --help)."""
    import dataclasses
    import json

    from mirkit.params import RUNTIME_ONLY, THREADS_HELP
    module, cls_name, section = STAGE_PARAMS[section]
    cls = getattr(importlib.import_module(module), cls_name)
    lines = [f"Keys of section `{section}` (params.yaml; --set KEY=VALUE overrides one):"]
    for f in dataclasses.fields(cls):
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        shown = json.dumps(default, default=str) if not isinstance(default, str) else default
        extra = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            extra = f"{extra} (one of: {', '.join(map(str, choices))})".strip()
        if f.name in RUNTIME_ONLY.get(section, ()):
            extra = f"{extra} [runtime-only: changing it keeps cached results]".strip()
        lines.append(f"{f.name} = {shown}: {extra}".rstrip(": "))
    if "threads" not in {f.name for f in dataclasses.fields(cls)}:
        lines.append(f"threads = null: {THREADS_HELP}")
    if section == "pretrain":
        from mirkit import recipes
        for name, recipe in recipes.available().items():
            keys = ", ".join(f.name for f in dataclasses.fields(recipe.Params))
            lines.append(f"recipe_params.{name}: {keys}")
    return "\n".join(lines)


class _StageCommand(TyperCommand):
    """A stage whose --help ends with the keys of its params section (built only when asked)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if self.name in STAGE_PARAMS and not self.epilog:
            from rich.markup import escape
            self.epilog = escape(params_help(self.name))
        super().format_help(ctx, formatter)


app = typer.Typer(
    cls=_Group,
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
            "benchmark_manifest", "benchmark", "inspect", "verify", "import_models")

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
    if _info.name in STAGE_PARAMS:
        _info.cls = _StageCommand
    _doc = _info.help or (_info.callback.__doc__ if _info.callback else None)
    if _doc:
        import inspect as _inspect

        from rich.markup import escape as _escape
        _info.help = _escape(reflow(_inspect.cleandoc(_doc)))


def main() -> None:  # pragma: no cover
    app(prog_name="mirkit")
