"""``mirkit extract``: frozen embeddings of a labelled manifest with a pretrained (or random) model."""

from __future__ import annotations

from pathlib import Path

import typer

from mirkit import params as P
from mirkit.errors import MirkitError
from mirkit.ui import console, overrides, print_params, progress, table

HELP = """Embed every track of a manifest with a frozen mirkit encoder (a model folder) into an embeddings store (Zarr).

Chunks are non-overlapping windows of the model's training crop; a remainder of at least `min_tail` of a window adds one end-aligned chunk; tracks shorter than a window are padded with their silence floor. Frames (frames=true) are per-frame embeddings at the model's native rate, timed in seconds from the start of the audio file. Input features come from the feature store when it holds the track with the model's exact feature parameters, otherwise they are computed from audio (the store is not modified).

--random-init embeds with the same architecture freshly initialised (the probe baseline). Re-runs resume after the last stored track; a store written by another model or setting is replaced. Bad audio files get one line in the summary; exit code 1 only when no track could be embedded or the checkpoint is unusable.

Example: mirkit extract --random-init --out data/embeddings/random.zarr
"""


def register(app: typer.Typer) -> None:
    @app.command("extract", help=HELP)
    def extract(
        params: Path = typer.Option(P.DEFAULT_PARAMS, "--params", help="params file; section `extract` is read"),
        model: str | None = typer.Option(None, "--model", help="model folder, training run folder or installed model name (overrides extract.model)"),
        out: str | None = typer.Option(None, "--out", help="embeddings store (overrides extract.out)"),
        random_init: bool | None = typer.Option(None, "--random-init/--pretrained",
                                                   help="freshly initialised weights (seed = extract.seed)"),
        set_: list[str] | None = typer.Option(None, "--set", help="override one value: KEY=VALUE, KEY.SUB=VALUE or SECTION.KEY=VALUE; mappings merge (KEY:=VALUE replaces)"),
    ) -> None:
        from mirkit.eval.extract import ExtractParams, run
        ov = overrides(set_)
        ov.update({k: v for k, v in {"model": model, "out": out, "random_init": random_init}.items()
                   if v is not None})
        p = P.load(ExtractParams, "extract", params, ov)
        print_params("extract", p)
        with progress() as bar:
            task = bar.add_task("extract", total=None, info="")
            report = run(p, lambda done, total, tid: bar.update(task, completed=done, total=total,
                                                                info=tid[-40:]))
        if report.damage:
            console.print(f"[yellow]note:[/yellow] the store was damaged and is rebuilt: {report.damage}")
        if report.feature_note:
            console.print(f"[yellow]note:[/yellow] {report.feature_note}")
        weights = "random init" if p.random_init else "pretrained"
        console.print(table(f"extract -> {p.out} ({report.status})", None, [
            ("model", f"{p.model} ({weights})"),
            ("tracks", f"{report.n_tracks}: {report.embedded} embedded, {report.skipped} already there, "
                       f"{len(report.failures)} failed"),
            ("features", f"{report.from_store} from the store, {report.computed} computed from audio" +
                         (f" ({', '.join(f'{n}: {why}' for why, n in report.recomputed.items())})"
                          if report.recomputed else "")),
            ("embeddings", f"{report.chunks} chunks, {report.frames} frames, dim {report.dim}"),
            ("frame rate", f"{report.frame_rate:.3g} Hz" if report.frame_rate else "-"),
        ]))
        if report.failures:
            console.print(table(f"extract: {len(report.failures)} file(s) rejected", ["file", "reason"],
                                report.failures[:50]))
        if report.n_tracks and report.succeeded == 0:
            raise MirkitError(f"extract: no track could be embedded (manifest {p.manifest})")
