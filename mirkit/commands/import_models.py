"""``mirkit import``: bring models from elsewhere into mirkit model folders (``myna``, ``legacy``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mirkit.ui import console, table

app = typer.Typer(help="Convert checkpoints from other code (or older mirkit) into mirkit model folders.",
                  no_args_is_help=True)


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(getattr(exc, "exit_code", 1)) from None


@app.command("myna")
def myna(
    path: Path = typer.Argument(..., help="checkpoint saved by Myna's code (.pth state dict, possibly inside a training dict)"),
    variant: str = typer.Option(..., "--variant", help="base (16x16 patches) | vertical (128x2) | hybrid (both); "
                                "base and vertical files have the same shapes, so name the one you downloaded"),
    out: Path | None = typer.Option(None, "--out", help="model folder to write (default: the models home, "
                                       "$MIRKIT_HOME/models/myna-<variant>, loadable by name)"),
    dim_head: int = typer.Option(64, "--dim-head", help="attention head width of the checkpoint (Myna: 64)"),
) -> None:
    """Convert a Myna checkpoint (ghost-signal/myna `vit.py` names) into a mirkit model folder.

    The file is read with torch.load(weights_only=True) only: a file that needs more than tensors is
    refused, never executed. Unknown keys or shapes are refused with their names. The released models
    (Myna-Base, Myna-Vertical, Myna-Hybrid) are linked from https://github.com/ghost-signal/myna.

    Example: mirkit import myna myna-hybrid.pth --variant hybrid --out models/myna-hybrid
    """
    from mirkit.errors import MirkitError
    from mirkit.importers.myna import VARIANTS, import_myna
    from mirkit.models.timing import timing_of_config
    from mirkit.train.checkpoint import models_home
    if variant not in VARIANTS:
        _fail(typer.BadParameter(f"--variant {variant!r}: choose from {', '.join(VARIANTS)}"))
    folder = out or models_home() / f"myna-{variant}"
    try:
        config = import_myna(path, variant, folder, dim_head)
    except MirkitError as exc:
        _fail(exc)
    t = timing_of_config(config)
    console.print(table(f"import myna -> {folder}", None, [
        ("source", f"{path} (Myna-{variant})"),
        ("architecture", f"{config['architecture']} ({config.get('preset') or 'custom size'}), "
                         f"{config['n_params'] / 1e6:.2f} M parameters"),
        ("input", f"{config['feature_set']}, {config['window_frames']} frames = {t['window_seconds']:.2f} s per chunk"),
        ("output", f"{t['frame_rate']:.3g} frames/s"),
        ("next", f"mirkit extract --model {folder} --out data/embeddings/myna-{variant}.zarr"),
    ]))


@app.command("legacy")
def legacy(
    path: Path = typer.Argument(..., help="a mirkit 0.1 checkpoint folder (config.json format mirkit.train.checkpoint/1)"),
    out: Path = typer.Option(..., "--out", help="where to write (may be PATH itself: converted in place)"),
) -> None:
    """Upgrade a mirkit 0.1 checkpoint folder to the current layout, once.

    With a train_state.pt it becomes a training run folder (LATEST + step-N/model + step-N/training), so
    `mirkit pretrain --resume` continues exactly; without, an encoder-only model folder.

    Example: mirkit import legacy models/pretrain --out models/pretrain
    """
    from mirkit.errors import MirkitError
    from mirkit.importers.legacy import import_legacy
    try:
        kind, folder = import_legacy(path, out)
    except MirkitError as exc:
        _fail(exc)
    console.print(table(f"import legacy -> {out}", None, [
        ("wrote", "training run folder (resume works)" if kind == "run" else "model folder (encoder only)"),
        ("model folder", str(folder)),
    ]))


def register(root: typer.Typer) -> None:
    import inspect

    from rich.markup import escape

    from mirkit.cli import reflow  # defined before the commands are registered
    for info in app.registered_commands:
        if info.callback is not None and info.callback.__doc__:
            info.help = escape(reflow(inspect.cleandoc(info.callback.__doc__)))
    root.add_typer(app, name="import")
