"""``mirkit verify``: check a store or model directory end to end."""

from __future__ import annotations

import typer

from mirkit.ui import console, table

HELP = """Check an artifact end to end and report what is wrong with it.

PATH is a feature or token store (or a folder of shard stores), an embeddings store, a model folder
or a training run folder. Stores: the index against the arrays' shapes, start offsets, every chunk file
present (a deleted chunk would read as zeros) and decodable, values finite (token codes in range). Model
folders: config.json readable with parameters within bounds, model.safetensors fitting its architecture
with finite values; run folders also: the current step's heads readable and finite, its training state
of the same step.

Stages run the cheap part of these checks whenever they open an artifact; verify also decodes
everything. Exit code 0 when sound, 2 when damaged or not an artifact.

Example: mirkit verify data/features.zarr
"""


def register(app: typer.Typer) -> None:
    @app.command("verify", help=HELP)
    def verify(path: str = typer.Argument(..., help="store, shard folder, embeddings store, model folder or training run folder")) -> None:
        from mirkit.errors import InputError
        from mirkit.verify import verify as run
        kind, findings = run(path)
        rows = [(f.part, f.check, "[green]ok[/green]" if f.ok else "[red]DAMAGED[/red]", f.detail) for f in findings]
        console.print(table(f"verify {path} ({kind})", ["part", "check", "result", "detail"], rows))
        damaged = [f for f in findings if not f.ok]
        if damaged:
            raise InputError(f"{path}: {len(damaged)} problem(s) found")
        console.print(f"[green]{path}: sound[/green]")
