"""``mirkit synth``: write the deterministic labelled sample corpus (first pipeline stage)."""

from pathlib import Path
from typing import Annotated

import typer

from mirkit import ui
from mirkit.data.synth import KEYS, MANIFEST_COLUMNS, SECTION, SPLITS, TIMBRES, SynthParams, SynthResult, run
from mirkit.params import DEFAULT_PARAMS, load

HELP = "\n\n".join((
    "Generate a small labelled corpus of synthetic music clips (first pipeline stage).",
    "Why: CI and demos need labelled music that costs nothing to download, so the whole chain "
    "(mels, tokens, pretrain, extract, probe) runs in minutes and its probes have something to "
    "learn.",
    "What: each clip is a diatonic chord progression (I-IV-V-I, vi-IV-I-V, ii-V-I, i-iv-V-i, ...) "
    "in one of the 24 major/minor keys, voiced in a random register and inversion, played by one "
    f"main timbre ({', '.join(TIMBRES)}) with an optional second timbre and bass line, over a "
    "drum pattern at 70-160 BPM with beat 1 accented, plus light noise and a random gain. Key, "
    "tempo, timbre, voicing and mix are drawn independently, so a model must hear pitch, rhythm "
    "and spectrum to recover them.",
    "Output in OUT: clip_NNNN.wav (mono 16-bit PCM), clip_NNNN.beats.txt (one beat time per "
    "line), clip_NNNN.chords.lab (start end mir_eval chord label) and manifest.csv with columns "
    f"{','.join(MANIFEST_COLUMNS)}. Splits (train/valid/test, about 70/15/15) are stratified by "
    "key. The same seed gives byte-identical files; the manifest is written last, so an "
    "interrupted run leaves none.",
    f"Parameters come from section '{SECTION}' of --params; --set KEY=VALUE and the flags below "
    "override them.",
))


def _summary(result: SynthResult) -> None:
    ui.console.print(f"synth: {result.n_clips} clips, {result.total_seconds:.1f} s of audio, "
                     f"manifest {result.manifest}")
    ui.console.print(ui.table("clips per split", ("split", "clips"),
                              [(s, result.split_counts[s]) for s in SPLITS]))
    for column, order in (("timbre", tuple(TIMBRES)), ("key", KEYS)):
        counts = result.counts(column)
        rows = [(value, *(counts[value][s] for s in SPLITS), sum(counts[value].values()))
                for value in order if value in counts]
        ui.console.print(ui.table(f"clips per {column}", (column, *SPLITS, "all"), rows))


def synth(
    params: Annotated[Path, typer.Option("--params", help="params file (section 'synth')")] = DEFAULT_PARAMS,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="override one value: KEY=VALUE, KEY.SUB=VALUE or SECTION.KEY=VALUE; mappings merge (KEY:=VALUE replaces)")] = None,
    out: Annotated[str | None, typer.Option(help="output folder (overrides synth.out)")] = None,
    n_clips: Annotated[int | None, typer.Option(help="number of clips (overrides synth.n_clips)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (overrides synth.seed)")] = None,
) -> None:
    overrides = ui.overrides(set_)
    overrides.update({k: v for k, v in (("out", out), ("n_clips", n_clips), ("seed", seed))
                      if v is not None})
    p = load(SynthParams, SECTION, params, overrides)
    ui.print_params(SECTION, p)
    with ui.progress() as bar:
        task = bar.add_task("synth", total=p.n_clips, info="")
        result = run(p, on_clip=lambda c: bar.update(task, advance=1, info=f"{c.name} {c.key}, {c.timbre}"))
    _summary(result)
    ui.out_console.print(str(result.manifest))


def register(app: typer.Typer) -> None:
    app.command("synth", help=HELP)(synth)
