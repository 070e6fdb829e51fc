"""``mirkit tokens``: quantize stored features into BEST-RQ targets (see :mod:`mirkit.tokens`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mirkit import ui
from mirkit.params import load
from mirkit.quantizer import QuantizerFileError
from mirkit.store import StoreError
from mirkit.tokens import TokensError, TokensParams, run


def register(app: typer.Typer) -> None:
    @app.command("tokens")
    def tokens(
        params: Path = typer.Option(Path("params.yaml"), "--params", help="params file (section `tokens`)"),
        set_: Optional[list[str]] = typer.Option(None, "--set", help="override one parameter: key=value"),
    ) -> None:
        """Random-projection-quantizer tokens (BEST-RQ / MusicFM) of one stored feature set."""
        with ui.stage_errors():
            p = load(TokensParams, "tokens", params, ui.overrides(set_))
        ui.print_params("tokens", p)
        try:
            with ui.progress() as bar:
                task = bar.add_task("tokens", total=None, info=p.feature_set)

                def report(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                result = run(p, report)
        except (StoreError, TokensError, QuantizerFileError, OSError) as exc:
            ui.console.print(f"[red]tokens failed:[/red] {exc}")
            raise typer.Exit(1) from None
        ui.console.print(ui.table(
            f"tokens: {p.feature_set} -> {p.out} ({result.status}; {result.tokenised} tokenised, "
            f"{result.skipped} skipped)",
            ["codebook", "codes used", "fraction used", "perplexity"],
            [(c["codebook"], f"{c['codes_used']}/{p.codebook_size}", c["fraction_used"], c["perplexity"])
             for c in result.codebooks]))
        ui.console.print(f"{result.n_tracks} tracks, {result.n_tokens} tokens at {p.stack} frames/token "
                         f"({result.dropped_frames} trailing frames dropped); mean {result.mean:.4g}, "
                         f"std {result.std:.4g}; quantizer {result.quantizer}; metrics {result.metrics}")
