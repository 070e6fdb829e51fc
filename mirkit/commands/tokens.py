"""``mirkit tokens``: quantize stored features into BEST-RQ targets (see :mod:`mirkit.data.tokens`)."""

from __future__ import annotations

from pathlib import Path

import typer

from mirkit import ui
from mirkit.data.tokens import TokensParams, run
from mirkit.params import DEFAULT_PARAMS, load


def register(app: typer.Typer) -> None:
    @app.command("tokens")
    def tokens(
        params: Path = typer.Option(DEFAULT_PARAMS, "--params", help="params file (section `tokens`)"),
        features: str | None = typer.Option(None, help="feature store (overrides tokens.features)"),
        feature_set: str | None = typer.Option(None, help="feature set (overrides tokens.feature_set)"),
        out: str | None = typer.Option(None, help="token store (overrides tokens.out)"),
        set_: list[str] | None = typer.Option(None, "--set", help="override one value: KEY=VALUE, KEY.SUB=VALUE or SECTION.KEY=VALUE; mappings merge (KEY:=VALUE replaces)"),
    ) -> None:
        """Random-projection-quantizer tokens (BEST-RQ / MusicFM targets) of one stored feature set.

        Normalises with the set's global mean/std, stacks `stack` frames per token, writes int32 codes
        (same track ids and order as the features) plus the quantizer and codebook-usage metrics.
        Re-runs skip tokenised tracks; changed parameters or statistics rebuild the token set.
        """
        ov = ui.overrides(set_)
        ov.update({k: v for k, v in {"features": features, "feature_set": feature_set, "out": out}.items()
                   if v is not None})
        p = load(TokensParams, "tokens", params, ov)
        ui.print_params("tokens", p)
        with ui.progress() as bar:
            task = bar.add_task("tokens", total=None, info=p.feature_set)

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = run(p, report)
        ui.console.print(ui.table(
            f"tokens {p.feature_set} -> {p.out} ({result.status})",
            ["codebook", "codes used", "fraction used", "perplexity"],
            [(c["codebook"], f"{c['codes_used']}/{p.codebook_size}", c["fraction_used"], c["perplexity"])
             for c in result.codebooks]))
        ui.console.print(f"{result.tokenised} tracks tokenised, {result.skipped} skipped; "
                         f"{result.n_tracks} tracks, {result.n_tokens} tokens at {p.stack} frames/token "
                         f"({result.dropped_frames} trailing frames dropped); mean {result.mean:.4g}, "
                         f"std {result.std:.4g}; quantizer {result.quantizer}; metrics {result.metrics}")
