"""``mirkit mels``: precompute spectrogram feature sets into a Zarr store."""

from __future__ import annotations

from pathlib import Path

import typer

from mirkit import params as P
from mirkit.errors import MirkitError
from mirkit.ui import console, overrides, print_params, progress, table

HELP = """Decode audio once and compute named feature sets (mel / CQT, nnAudio) into a Zarr v3 store.

Presets follow the four recipes: mel16k (Myna), mel16k-db (ViT-1D), cqt22k (MT2/STONE), mel24k (MuSE-LQ);
define more under `mels.custom` in params.yaml. Re-runs skip tracks already stored, add new ones, and replace
a set whose parameters changed. Bad files get one line (file + reason) in the summary and in the failures
file; the rest is processed. Exit code 1 only when nothing succeeded (or on any failure with --strict).

One writer per store: a second run on a store that another process is writing refuses at once (exit 2,
naming the holder); a lock left by a killed run is taken over. See docs/reliability.md.

Scale out with --shard i/n: shard i of n takes the tracks whose sha1(track_id) mod n == i and writes the
store <store>/shard-i-of-n.zarr (failures and summary files get a .shard-i-of-n suffix). Run the n shards
with any scheduler (SLURM array, Dask, Ray, DVC foreach); every reader treats the folder as one store.

Example: mirkit mels --set input=my_audio/ --set 'feature_sets=[mel16k, mel24k]'

Example (one job of a SLURM array): mirkit mels --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
"""


def register(app: typer.Typer) -> None:
    @app.command("mels", help=HELP)
    def mels(
        params: Path = typer.Option(P.DEFAULT_PARAMS, "--params", help="params file; section `mels` is read"),
        input: str | None = typer.Option(None, help="manifest CSV or audio folder (overrides mels.input)"),
        store_url: str | None = typer.Option(None, "--store", help="store path or fsspec URL (overrides mels.store)"),
        shard: str | None = typer.Option(None, "--shard", help="i/n: process shard i of n (overrides mels.shard)"),
        strict: bool | None = typer.Option(None, "--strict/--no-strict", help="fail on any bad file"),
        set_: list[str] | None = typer.Option(None, "--set", help="override one value: KEY=VALUE, KEY.SUB=VALUE or SECTION.KEY=VALUE; mappings merge (KEY:=VALUE replaces)"),
    ) -> None:
        from mirkit.data.mels import MelsParams, report_rows, run
        ov = overrides(set_)
        ov.update({k: v for k, v in {"input": input, "store": store_url, "strict": strict,
                                      "shard": shard}.items() if v is not None})
        p = P.load(MelsParams, "mels", params, ov)
        print_params("mels", p)
        with progress() as bar:
            task = bar.add_task("features", total=None, info="")
            report = run(p, lambda done, total: bar.update(task, completed=done, total=total,
                                                           info=f"{done}/{total} files"))
        console.print(table(f"mels: feature sets in {p.out_store}", ["set", "status", "added", "skipped", "tracks", "frames", "minutes"],
                            report_rows(report, p.out_store)))
        if report.failures:
            console.print(table(f"mels: {len(report.failures)} file(s) rejected (also in {p.out_failures})",
                                ["file", "reason"], report.failures[:50]))
        if report.n_tracks and report.succeeded == 0:
            raise MirkitError(f"mels: no file could be processed ({p.input}; reasons in {p.out_failures})")
        if p.strict and report.failures:
            raise MirkitError(f"mels: {len(report.failures)} file(s) rejected and strict is set "
                              f"(reasons in {p.out_failures})")
