"""``mirkit inspect``: pictures of a model, of an embeddings store and of a training run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mirkit.errors import InputError
from mirkit.ui import console, table

HELP = """Look inside models and runs (PNG pictures + JSON numbers + a Markdown report).

model CKPT AUDIO: per layer, attention maps (per head, averaged), self-similarity and onset emergence.

embeddings STORE --label COL: 2-D map (PCA / t-SNE) of track embeddings coloured by a label, one panel per split.

training LOG: loss, held-out loss, learning-rate and online-probe curves (the dvclive folder).

report DIR: report.md gathering what the commands above wrote into DIR.

Example: mirkit inspect model models/pretrain data/samples/clip_0000.wav --out results/inspect/model
"""


sub = typer.Typer(help=HELP, no_args_is_help=True)


@sub.command("model")
def model_cmd(
    checkpoint: Path = typer.Argument(..., help="model folder or training run folder"),
    audio: Path | None = typer.Argument(None, help="audio file (or use --manifest and --track)"),
    manifest: Path | None = typer.Option(None, "--manifest", help="manifest CSV holding the track"),
    track: str | None = typer.Option(None, "--track", help="track id in --manifest"),
    start: float = typer.Option(0.0, "--start", help="seconds into the audio where the inspected window starts"),
    out: Path = typer.Option(Path("results/inspect/model"), "--out", help="output folder"),
    random_init: bool = typer.Option(False, "--random-init", help="same architecture, freshly initialised"),
    seed: int = typer.Option(0, "--seed", help="initialisation seed for --random-init"),
    device: str = typer.Option("cpu", "--device", help="auto | cpu | cuda"),
) -> None:
    """Attention maps, self-similarity matrices and onset emergence of every layer on one window."""
    from mirkit.data.manifest import read_manifest
    from mirkit.eval.encoder import load_frozen
    from mirkit.eval.inspect import features_of_file, inspect_model
    frozen = load_frozen(checkpoint, device, random_init, seed)
    if (audio is None) == (manifest is None or track is None):
        raise InputError("give either an AUDIO file or --manifest M --track ID")
    offset, duration, name = 0.0, None, str(audio)
    if audio is None and manifest is not None and track is not None:
        found = {t.track_id: t for t in read_manifest(manifest)}
        if track not in found:
            raise InputError(f"{manifest}: no track {track!r}")
        t = found[track]
        audio, offset, duration, name = Path(t.path), t.offset, t.duration, track
    if audio is None:   # unreachable after the check above; narrows the type
        raise InputError("give either an AUDIO file or --manifest M --track ID")
    feats = features_of_file(frozen, audio, offset, duration)
    title = f"{frozen.model_info.get('recipe') or frozen.config.architecture} {frozen.model_info['preset']}{' (random init)' if random_init else ''} on {Path(name).name}"
    analysis, paths = inspect_model(frozen, feats, out, title, start)
    if analysis.message:
        console.print(f"[yellow]note:[/yellow] {analysis.message}")
    console.print(table(f"inspect model: onset emergence ({len(analysis.onset)} columns, written to {out})",
                        ["layer", "SSM novelty r", "attention received r", "heads"],
                        [(la.layer, _r(la.r_ssm_novelty), _r(la.r_attention),
                          "-" if la.attention is None else la.attention.shape[0]) for la in analysis.layers]))


@sub.command("embeddings")
def embeddings_cmd(
    store: str = typer.Argument(..., help="embeddings store written by `mirkit extract`"),
    label: str = typer.Option(..., "--label", help="manifest column to colour by (e.g. timbre, key, tempo)"),
    method: str = typer.Option("pca", "--method", help="pca | tsne"),
    out: Path = typer.Option(Path("results/inspect"), "--out", help="output folder"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """2-D map of one point per track (mean of its chunk embeddings), one panel per split."""
    from mirkit.eval.inspect import embedding_map
    if method not in ("pca", "tsne"):
        raise InputError(f"--method {method!r}: choose pca or tsne")
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"embeddings_{Path(store.rstrip('/')).stem}_{label}_{method}.png"
    info = embedding_map(store, label, method, png, seed)
    png.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    console.print(f"[green]wrote[/green] {png} ({info['tracks']} tracks, {info['kind']} label, splits: "
                  f"{', '.join(info['splits'])})")


@sub.command("training")
def training_cmd(
    log: Path = typer.Argument(..., help="dvclive folder written by `mirkit pretrain` (pretrain.log), or a TSV log"),
    out: Path = typer.Option(Path("results/inspect"), "--out", help="output folder"),
) -> None:
    """Loss, held-out loss, learning-rate and online-probe curves of a pretraining run."""
    from mirkit.eval.inspect import training_curves
    if not log.exists():
        raise InputError(f"{log}: no such training log")
    out.mkdir(parents=True, exist_ok=True)
    info = training_curves(log, out / "training.png")
    console.print(f"[green]wrote[/green] {out / 'training.png'} ({info['steps']} steps, loss "
                  f"{info['first_loss']:.4g} -> {info['last_loss']:.4g})")


@sub.command("report")
def report_cmd(
    folder: Path = typer.Argument(Path("results/inspect"), help="folder the other commands wrote into"),
    title: str = typer.Option("mirkit inspection", "--title"),
) -> None:
    """Gather the pictures of one run into FOLDER/report.md."""
    from mirkit.eval.inspect import write_report
    path = write_report(folder, title)
    console.print(f"[green]wrote[/green] {path}")


def _r(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="inspect")
