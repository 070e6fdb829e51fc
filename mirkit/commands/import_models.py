"""``mirkit import``: bring models from elsewhere into mirkit model folders (``myna``, ``musicfm``, ``mert``,
``legacy``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mirkit.errors import InputError
from mirkit.ui import console, table

if TYPE_CHECKING:
    from mirkit.models.config import ModelConfig

app = typer.Typer(help="Convert checkpoints from other code (or older mirkit) into mirkit model folders.",
                  no_args_is_help=True)


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
    from mirkit.importers.myna import VARIANTS, import_myna
    from mirkit.models.timing import timing_of_config
    from mirkit.train.checkpoint import models_home
    if variant not in VARIANTS:
        raise InputError(f"--variant {variant!r}: choose from {', '.join(VARIANTS)}")
    folder = out or models_home() / f"myna-{variant}"
    config = import_myna(path, variant, folder, dim_head)
    t = timing_of_config(config)
    console.print(table(f"import myna -> {folder}", None, [
        ("source", f"{path} (Myna-{variant})"),
        ("architecture", f"{config.architecture} ({config.preset or 'custom size'}), "
                         f"{config.n_params / 1e6:.2f} M parameters"),
        ("input", f"{config.feature_set}, {config.window_frames} frames = {t['window_seconds']:.2f} s per chunk"),
        ("output", f"{t['frame_rate']:.3g} frames/s"),
        ("next", f"mirkit extract --model {folder} --out data/embeddings/myna-{variant}.zarr"),
    ]))


def _summary(title: str, source: str, config: ModelConfig, folder: Path, name: str) -> None:
    from mirkit.models.timing import timing_of_config
    t = timing_of_config(config)
    prov = config.provenance
    console.print(table(title, None, [
        ("source", source),
        ("licence", str(prov.get("licence", "-"))),
        ("sha256", str(prov.get("source_sha256", "-"))),
        ("architecture", f"{config.architecture} ({config.preset or 'custom size'}), "
                         f"{config.n_params / 1e6:.2f} M parameters, {config.depth} layers x {config.dim}"),
        ("input", f"{config.feature_set}, {config.window_frames} frames = {t['window_seconds']:.2f} s per chunk"),
        ("output", f"{t['frame_rate']:.3g} frames/s"),
        ("next", f"mirkit extract --model {folder} --layer all --out data/embeddings/{name}.zarr"),
    ]))


@app.command("musicfm")
def musicfm(
    path: Path = typer.Argument(..., help="pretrained_msd.pt or pretrained_fma.pt from huggingface.co/minzwon/MusicFM"),
    stats: Path = typer.Option(..., "--stats", help="the matching msd_stats.json / fma_stats.json (mel mean and std)"),
    out: Path | None = typer.Option(None, "--out", help="model folder to write (default: the models home, "
                                       "$MIRKIT_HOME/models/musicfm, loadable by name)"),
    heads: int | None = typer.Option(None, "--heads", help="attention heads, only for files without a rotary "
                                     "table (the released models: 16)"),
) -> None:
    """Convert a MusicFM checkpoint (minzwon/musicfm, MIT) and its stats file into a mirkit model folder.

    The model reads mirkit's mel24k features (24 kHz, hop 240, 128 HTK mels in dB), normalised with the
    stats file, and gives 25 frames/s from 12 Conformer layers (layer all = 0..12 and -1). The .pt is read
    with torch.load(weights_only=True) only; unknown keys or shapes are refused by name. The file's sha256
    and licence go into the model card and every embeddings store extracted from it.

    Example: mirkit import musicfm pretrained_msd.pt --stats msd_stats.json --out models/musicfm-msd
    """
    from mirkit.importers.musicfm import import_musicfm
    from mirkit.train.checkpoint import models_home
    folder = out or models_home() / "musicfm"
    config = import_musicfm(path, stats, folder, heads)
    _summary(f"import musicfm -> {folder}", f"{path} + {stats}", config, folder, "musicfm")


@app.command("mert")
def mert(
    path: Path = typer.Argument(..., help="a MERT-v1 download from huggingface.co/m-a-p: the folder holding "
                                "config.json + pytorch_model.bin (or model.safetensors), or the weights file"),
    config: Path | None = typer.Option(None, "--config", help="the model's config.json (default: beside the weights)"),
    out: Path | None = typer.Option(None, "--out", help="model folder to write (default: the models home, "
                                       "$MIRKIT_HOME/models/<mert-v1-95m|mert-v1-330m>)"),
) -> None:
    """Convert MERT-v1-95M or -330M (m-a-p/MERT; weights CC-BY-NC-4.0, non-commercial) into a mirkit model folder.

    No transformers and no remote code: config.json is read as JSON, the weights with safetensors or
    torch.load(weights_only=True) (the fairseq .pt files are refused). The model reads the 24 kHz waveform
    (mirkit's wave24k frames of 320 samples, normalised per chunk as MERT's processor does) and gives 75
    frames/s from every layer (layer all = 0..12 or 0..24, and -1). The weights' sha256 and licence go into
    the model card and every embeddings store extracted from it.

    Example: mirkit import mert MERT-v1-95M/ --out models/mert-v1-95m
    """
    from mirkit.importers.mert import import_mert
    from mirkit.train.checkpoint import models_home
    folder = out
    if folder is None:
        from mirkit.importers.mert import find_files, read_config
        args = read_config(find_files(path, config)[1])
        folder = models_home() / ("mert-v1-330m" if args["dim"] == 1024 else "mert-v1-95m")
    cfg = import_mert(path, folder, config)
    _summary(f"import mert -> {folder}", str(path), cfg, folder, folder.name)


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
    from mirkit.importers.legacy import import_legacy
    kind, folder = import_legacy(path, out)
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
