"""Look inside a model and a run: attention maps, self-similarity, onset emergence, embedding maps,
training curves, and a Markdown report gathering them.

Model inspection works on one window of the model's training crop length (its context at
training time). Per layer (0 = the tokens entering the first block, 1..depth = block outputs):

* **self-similarity matrix** (SSM): cosine similarity of the L2-normalised per-time-step tokens
  (sequence tokens averaged over frequency rows), as in the SSM analyses of the Emergent
  properties paper (Deezer, ISMIR 2025);
* **attention maps** of block ``l`` per head and averaged over heads (SummaryMixing blocks have
  none: the report says so);
* **onset emergence**: the SSM's checkerboard novelty (Foote 2000; Gaussian-tapered kernel of
  half-width ``k`` columns, value at ``t`` = change between ``[t-k, t)`` and ``[t, t+k)``) and the
  attention each time step receives (mean over heads and queries) are each correlated (Pearson)
  with the onset strength of the input, the half-wave-rectified spectral flux of the log-scaled
  features, max-pooled to the model's columns (the ``k`` columns at each end, where the kernel
  runs off the matrix, are left out of the correlation). A layer whose novelty follows the onsets has
  learned to mark them.

All pictures are written with matplotlib's Agg backend at fixed sizes (no tight bounding box), so
their pixel sizes are predictable.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirkit.errors import InputError
from mirkit.eval.encoder import FrozenEncoder, cut_window

DPI = 100
NOVELTY_HALF_WIDTH = 2
NO_ATTENTION = "no attention maps: this model mixes tokens with SummaryMixing (a mean summary), not attention"


# ------------------------------------------------------------------------------------ analysis
@dataclass
class LayerAnalysis:
    layer: int
    ssm: np.ndarray                           # (cols, cols)
    ssm_novelty: np.ndarray                   # (cols,)
    r_ssm_novelty: float | None
    attention: np.ndarray | None = None       # (heads, tokens, tokens)
    attention_received: np.ndarray | None = None   # (cols,)
    r_attention: float | None = None


@dataclass
class ModelAnalysis:
    features: np.ndarray                      # (bins, window) the input window
    frame_rate: float                         # input frames per second
    scale: str                                # amplitude scale of the features (power, db, ...)
    start_seconds: float
    frames_per_col: float
    n_cls: int
    grid: tuple[int, int]
    onset: np.ndarray                         # (cols,) onset strength per column
    half_width: int = NOVELTY_HALF_WIDTH
    layers: list[LayerAnalysis] = field(default_factory=list)
    message: str = ""

    def summary(self) -> dict[str, Any]:
        """What ``onsets.json`` holds: per-layer correlations with the onset strength."""
        return {"start_seconds": self.start_seconds, "window_seconds": self.features.shape[1] / self.frame_rate,
                "columns": int(len(self.onset)), "frames_per_col": self.frames_per_col,
                "novelty_half_width": self.half_width, "message": self.message,
                "layers": {str(a.layer): {"ssm_novelty_r": a.r_ssm_novelty, "attention_received_r": a.r_attention,
                                          "heads": None if a.attention is None else int(a.attention.shape[0])}
                           for a in self.layers}}


def log_scaled(feats: np.ndarray, scale: str) -> np.ndarray:
    """Features on a log (dB-like) scale: power features are converted to dB (80 dB floor)."""
    if scale == "power":
        db = 10.0 * np.log10(np.maximum(feats, 1e-10))
        return np.maximum(db, db.max() - 80.0)
    return feats


def onset_strength(feats: np.ndarray, frames_per_col: float, n_cols: int) -> np.ndarray:
    """Half-wave-rectified spectral flux of ``(bins, frames)`` log features, max over each column."""
    flux = np.zeros(feats.shape[1])
    flux[1:] = np.maximum(np.diff(feats, axis=1), 0.0).sum(axis=0)
    k = max(int(round(frames_per_col)), 1)
    return np.array([flux[j * k: (j + 1) * k].max() if j * k < len(flux) else 0.0 for j in range(n_cols)])


def self_similarity(tokens: np.ndarray) -> np.ndarray:
    """Cosine similarity ``(t, t)`` of L2-normalised ``(t, dim)`` tokens."""
    z = tokens / np.maximum(np.linalg.norm(tokens, axis=-1, keepdims=True), 1e-12)
    return z @ z.T


def checkerboard_novelty(ssm: np.ndarray, half_width: int = NOVELTY_HALF_WIDTH) -> np.ndarray:
    """Foote's novelty: a Gaussian-tapered checkerboard kernel slid along the SSM's diagonal
    (zero-padded at the edges); value ``t`` measures change between ``[t-k, t)`` and ``[t, t+k)``."""
    k, n = half_width, ssm.shape[0]
    idx = np.arange(-k, k) + 0.5
    sign = np.sign(idx)
    taper = np.exp(-0.5 * (idx / max(k, 1) * 1.5) ** 2)
    kernel = np.outer(sign, sign) * np.outer(taper, taper)
    padded = np.zeros((n + 2 * k, n + 2 * k))
    padded[k:k + n, k:k + n] = ssm
    return np.array([(padded[t:t + 2 * k, t:t + 2 * k] * kernel).sum() for t in range(n)])


def pearson(a: np.ndarray, b: np.ndarray, trim: int = 0) -> float | None:
    """Pearson correlation, leaving ``trim`` points out at each end (where the novelty kernel
    runs off the SSM); ``None`` when too short or either curve is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if trim and len(a) > 2 * trim:
        a, b = a[trim:-trim], b[trim:-trim]
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def attention_received(maps: np.ndarray, n_cls: int, grid: tuple[int, int]) -> np.ndarray:
    """``(heads, T, T)`` maps -> attention each time column receives (mean over heads and queries,
    summed over the frequency rows of the column; class-token keys left out)."""
    received = maps.mean(axis=(0, 1))[n_cls:]
    rows = max(grid[0], 1)
    return received.reshape(rows, -1).sum(axis=0)


def features_of_file(frozen: FrozenEncoder, audio: str | Path, offset: float = 0.0,
                     duration: float | None = None) -> np.ndarray:
    """The encoder's input features of one audio file (or a clip of it); an :class:`AudioError`
    names the file."""
    from mirkit.data.audio import AudioError, load_audio
    from mirkit.data.features import FrontEnd
    from mirkit.eval.encoder import features_of_wave
    try:
        wave = load_audio(audio, frozen.spec.sample_rate, offset, duration)
    except AudioError as exc:
        raise AudioError(f"{audio}: {exc}") from None
    return features_of_wave(frozen, wave, FrontEnd(frozen.spec).to(frozen.device))


def analyse(frozen: FrozenEncoder, feats: np.ndarray, start_seconds: float = 0.0,
            half_width: int = NOVELTY_HALF_WIDTH) -> ModelAnalysis:
    """Run one window of ``feats`` ``(frames, bins)`` (from ``start_seconds``) through the model and
    measure every layer. The novelty half-width shrinks to ``cols // 8`` (at least 1) for models
    with few columns per window (SimpleViT's 16-frame patches give 6)."""
    start = int(round(start_seconds * frozen.frame_rate))
    if start >= len(feats):
        raise InputError(f"start {start_seconds:g} s is past the end of the audio ({len(feats) / frozen.frame_rate:.2f} s)")
    x = cut_window(feats, start, frozen.window, float(feats.min()))
    enc = frozen.encoder
    layers = tuple(range(enc.depth + 1))
    with torch.inference_mode():
        out = enc.encode(torch.from_numpy(x)[None].to(frozen.device), layers=layers, attention=True)
    n_cols = out.time_tokens(0).shape[1]
    grid = (max(out.grid[0], 1), out.grid[1] or n_cols)
    half_width = min(half_width, max(1, n_cols // 8))
    onset = onset_strength(log_scaled(x, frozen.spec.scale), out.frames_per_col, n_cols)
    result = ModelAnalysis(x, frozen.frame_rate, frozen.spec.scale, start / frozen.frame_rate, float(out.frames_per_col),
                           out.n_cls, grid, onset, half_width)
    for layer in layers:
        ssm = self_similarity(out.time_tokens(layer)[0].float().cpu().numpy())
        novelty = checkerboard_novelty(ssm, half_width)
        la = LayerAnalysis(layer, ssm, novelty, pearson(novelty, onset, half_width))
        maps = out.attentions.get(layer)
        if maps is not None:
            la.attention = maps[0].float().cpu().numpy()
            la.attention_received = attention_received(la.attention, out.n_cls, grid)
            la.r_attention = pearson(la.attention_received, onset, half_width)
        result.layers.append(la)
    if enc.depth and not out.attentions:
        result.message = NO_ATTENTION
    return result


# ------------------------------------------------------------------------------------ pictures
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def layer_figure_size(n_heads: int) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of a layer picture with ``n_heads`` attention heads."""
    panels = 1 + (n_heads + 1 if n_heads else 0)          # SSM, mean attention, heads
    return int(3 * panels * DPI), int(6 * DPI)


def plot_layer(analysis: ModelAnalysis, la: LayerAnalysis, path: Path, title: str) -> Path:
    """Input spectrogram on top; SSM, averaged attention and each head's map below."""
    plt = _pyplot()
    heads = 0 if la.attention is None else la.attention.shape[0]
    w, h = layer_figure_size(heads)
    panels = w // (3 * DPI)
    fig = plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    gs = fig.add_gridspec(2, panels, height_ratios=[1, 1.6])
    spec_ax = fig.add_subplot(gs[0, :])
    seconds = analysis.features.shape[1] / analysis.frame_rate
    spec_ax.imshow(log_scaled(analysis.features, analysis.scale),
                   origin="lower", aspect="auto", cmap="magma",
                   extent=(analysis.start_seconds, analysis.start_seconds + seconds, 0, analysis.features.shape[0]))
    spec_ax.set_title(f"{title} — layer {la.layer}: input features", fontsize=9)
    spec_ax.set_xlabel("time (s)", fontsize=8)
    ax = fig.add_subplot(gs[1, 0])
    ax.imshow(la.ssm, origin="lower", cmap="viridis", vmin=float(np.percentile(la.ssm, 2)), vmax=1.0)
    ax.set_title(f"self-similarity (r onset {_fmt(la.r_ssm_novelty)})", fontsize=8)
    if la.attention is not None:
        ax = fig.add_subplot(gs[1, 1])
        ax.imshow(la.attention.mean(axis=0), origin="lower", cmap="viridis")
        ax.set_title("attention, mean of heads", fontsize=8)
        for i in range(heads):
            ax = fig.add_subplot(gs[1, 2 + i])
            ax.imshow(la.attention[i], origin="lower", cmap="viridis")
            ax.set_title(f"head {i + 1}", fontsize=8)
    for a in fig.axes[1:]:
        a.set_xticks([]), a.set_yticks([])
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_novelty(analysis: ModelAnalysis, path: Path, title: str) -> Path:
    """One row per layer: onset strength against SSM novelty (and attention received)."""
    plt = _pyplot()
    n = len(analysis.layers)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.6 * n + 0.6), dpi=DPI, squeeze=False, sharex=True)
    t = analysis.start_seconds + (np.arange(len(analysis.onset)) * analysis.frames_per_col
                                  + (analysis.frames_per_col - 1) / 2) / analysis.frame_rate
    norm = lambda v: (v - v.min()) / (v.max() - v.min() + 1e-12)  # noqa: E731
    k = analysis.half_width
    for ax, la in zip(axes[:, 0], analysis.layers, strict=True):
        ax.fill_between(t, norm(analysis.onset), color="0.8", label="onset strength (spectral flux)")
        novelty = la.ssm_novelty.astype(float).copy()
        if len(novelty) > 2 * k:     # the edges (kernel off the matrix) are not drawn, as not correlated
            novelty[:k] = novelty[-k:] = np.nan
        ax.plot(t, norm(np.nan_to_num(novelty, nan=np.nanmin(novelty))) * np.where(np.isnan(novelty), np.nan, 1.0),
                color="C0", label=f"SSM novelty r={_fmt(la.r_ssm_novelty)}")
        if la.attention_received is not None:
            ax.plot(t, norm(la.attention_received), color="C1", label=f"attention received r={_fmt(la.r_attention)}")
        ax.set_ylabel(f"layer {la.layer}", fontsize=8)
        ax.legend(loc="upper right", fontsize=6)
    axes[0, 0].set_title(f"{title}: onset emergence per layer" + (f" ({analysis.message})" if analysis.message else ""),
                         fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def inspect_model(frozen: FrozenEncoder, feats: np.ndarray, out_dir: str | Path, title: str = "",
                  start_seconds: float = 0.0) -> tuple[ModelAnalysis, list[Path]]:
    """Write ``layer_XX.png`` per layer, ``novelty.png`` and ``onsets.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(frozen, feats, start_seconds)
    title = title or f"{frozen.model_info.get('recipe') or frozen.config.architecture} {frozen.model_info.get('preset', '')}"
    paths = [plot_layer(analysis, la, out / f"layer_{la.layer:02d}.png", title) for la in analysis.layers]
    paths.append(plot_novelty(analysis, out / "novelty.png", title))
    summary = {"model": frozen.model_info, "title": title, **analysis.summary()}
    (out / "onsets.json").write_text(json.dumps(summary, indent=2) + "\n")
    return analysis, paths


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


# ------------------------------------------------------------------------------------ embeddings
def project(points: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D map of ``(n, dim)`` points (standardised first): PCA or t-SNE (perplexity <= (n-1)/3)."""
    x = (points - points.mean(0)) / (points.std(0) + 1e-8)
    if method == "pca":
        from sklearn.decomposition import PCA
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    raise InputError(f"method={method!r}: choose pca or tsne")


def embedding_map(store_url: str, label: str, method: str, out_path: str | Path, seed: int = 0) -> dict[str, Any]:
    """One point per track (mean of its chunks), coloured by ``label``, one panel per split; the
    projection is fitted on all tracks so the panels share axes. Returns what was drawn."""
    from mirkit.eval.embeddings import Embeddings
    emb = Embeddings(store_url)
    if not len(emb):
        raise InputError(f"{store_url}: no tracks")
    if not any(label in t for t in emb.tracks):
        columns = sorted({k for t in emb.tracks for k in t} - {"track_id", "split", "path", "offset"})
        raise InputError(f"label {label!r} not in {store_url} (columns: {', '.join(columns)})")
    rows, track_of = emb.chunk_rows(range(len(emb)))
    points = np.stack([rows[track_of == i].mean(0) for i in range(len(emb))])
    xy = project(points, method, seed)
    values = [t.get(label) for t in emb.tracks]
    numeric = _numeric(values)
    splits = sorted({t.get("split") or "all" for t in emb.tracks}, key=lambda s: ("train", "valid", "test").index(s)
                    if s in ("train", "valid", "test") else 3)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits) + 1.5, 4.5), dpi=DPI, squeeze=False,
                             sharex=True, sharey=True)
    classes = sorted({str(v) for v in values})
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, split in zip(axes[0], splits, strict=True):
        idx = [i for i, t in enumerate(emb.tracks) if (t.get("split") or "all") == split]
        if numeric is not None:
            sc = ax.scatter(xy[idx, 0], xy[idx, 1], c=numeric[idx], cmap="viridis", s=14,
                            vmin=np.nanmin(numeric), vmax=np.nanmax(numeric))
        else:
            for k, c in enumerate(classes):
                pick = [i for i in idx if str(values[i]) == c]
                ax.scatter(xy[pick, 0], xy[pick, 1], s=14, color=cmap(k % cmap.N), label=c)
        ax.set_title(f"{split} ({len(idx)} tracks)", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    if numeric is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), label=label)
    elif len(classes) <= 20:
        axes[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), title=label, title_fontsize=7)
    fig.suptitle(f"{Path(store_url).name}: {method.upper()} of track embeddings (layer {emb.layer}, "
                 f"{emb.pooling}) coloured by {label}", fontsize=9)
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    return {"store": str(store_url), "label": label, "method": method, "splits": splits,
            "tracks": len(emb), "kind": "numeric" if numeric is not None else "categorical",
            "classes": None if numeric is not None else classes}


def _numeric(values: Sequence[Any]) -> np.ndarray | None:
    try:
        arr = np.array([np.nan if v in (None, "") else float(v) for v in values])
    except (TypeError, ValueError):
        return None
    return arr if len(set(arr[~np.isnan(arr)].tolist())) > 12 else None   # few values: draw as classes


# ------------------------------------------------------------------------------------ training
def read_log(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Curves ``{name: (steps, values)}`` of a training run: the dvclive folder ``mirkit pretrain``
    writes (``train/loss``, ``train/lr``, ``val/loss``, ``probe/...``), or a TSV with a ``step`` column."""
    from mirkit.train.live import read_curves
    path = Path(path)
    if path.is_dir():
        curves = read_curves(path)
        if not curves:
            raise InputError(f"{path}: no dvclive curves under plots/metrics (not a `mirkit pretrain` log folder)")
        return {k: (np.asarray(s, float), np.asarray(v, float)) for k, (s, v) in curves.items()}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "step" not in rows[0]:
        raise InputError(f"{path}: not a training log (needs a header with 'step')")
    cols = {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}
    return {("train/" + k if not k.startswith(("val/", "probe/")) else k): (cols["step"], v)
            for k, v in cols.items() if k != "step"}


def training_curves(log_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Loss curves (training loss and its terms, held-out loss), the learning rate and, when the
    run had online probes, their metrics, side by side."""
    curves = read_log(log_path)
    probes = sorted(k for k in curves if k.startswith("probe/"))
    losses = [k for k in curves if k.startswith(("train/loss", "val/loss"))] + sorted(
        k for k in curves if k.startswith(("train/", "val/")) and k.split("/", 1)[1] not in
        ("lr", "grad_norm", "samples_per_s") and not k.split("/", 1)[1].startswith("loss"))
    plt = _pyplot()
    n = 3 if probes else 2
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), dpi=DPI)
    ax_loss, ax_lr = axes[0], axes[1]
    for k in losses:
        ax_loss.plot(*curves[k], label=k, ls="--" if k.startswith("val/") else "-")
    ax_loss.set_xlabel("step"), ax_loss.set_ylabel("loss"), ax_loss.legend(fontsize=7)
    ax_loss.set_title("loss (dashed: held-out)" if any(k.startswith("val/") for k in losses) else "loss", fontsize=9)
    if "train/lr" in curves:
        ax_lr.plot(*curves["train/lr"], color="C3")
    ax_lr.set_xlabel("step"), ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("learning rate", fontsize=9)
    if probes:
        for k in probes:
            axes[2].plot(*curves[k], marker="o", label=k.removeprefix("probe/"))
        axes[2].set_xlabel("step"), axes[2].set_ylabel("valid score"), axes[2].legend(fontsize=7)
        axes[2].set_title("online probes (valid split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    steps, loss = curves.get("train/loss", (np.array([np.nan]), None))
    return {"log": str(log_path), "steps": int(np.nanmax(np.concatenate([s for s, _ in curves.values()]))),
            "curves": losses + probes,
            "first_loss": None if loss is None else float(loss[0]),
            "last_loss": None if loss is None else float(loss[-1])}


# ------------------------------------------------------------------------------------ report
def write_report(out_dir: str | Path, title: str = "mirkit inspection") -> Path:
    """``report.md`` in ``out_dir`` gathering what the other commands left there: training curves,
    embedding maps, and for each inspected model its onset table, novelty curves and layer maps."""
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(f"{out}: no such folder (run the other `mirkit inspect` commands with --out {out} first)")
    lines = [f"# {title}", ""]
    for png in sorted(out.glob("training*.png")):
        lines += ["## Training", "", f"![training curves]({png.name})", ""]
    for png in sorted(out.glob("embeddings*.png")):
        meta = _read_json(png.with_suffix(".json"))
        what = f" — {meta['method'].upper()} coloured by `{meta['label']}`" if meta else ""
        lines += [f"## Embeddings: {png.stem}{what}", "", f"![{png.stem}]({png.name})", ""]
    for onsets in sorted(out.rglob("onsets.json")):
        meta = _read_json(onsets) or {}
        rel = onsets.parent.relative_to(out).as_posix()
        prefix = "" if rel == "." else rel + "/"
        lines += [f"## Model: {meta.get('title', rel)}", ""]
        if meta.get("message"):
            lines += [f"> {meta['message']}", ""]
        lines += ["| layer | SSM novelty vs onsets (r) | attention received vs onsets (r) |", "|---|---|---|"]
        for layer, row in meta.get("layers", {}).items():
            lines.append(f"| {layer} | {_fmt(row['ssm_novelty_r'])} | {_fmt(row['attention_received_r'])} |")
        lines += ["", f"![onset emergence]({prefix}novelty.png)", ""]
        for png in sorted(onsets.parent.glob("layer_*.png")):
            lines += [f"![{png.stem}]({prefix}{png.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
