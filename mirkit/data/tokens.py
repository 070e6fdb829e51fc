"""The ``tokens`` stage: feature frames -> random-projection-quantizer codes (BEST-RQ targets).

For one feature set of a feature store (MusicFM / MuSE-LQ recipe: ``mel24k``, 100 fps, 128 bins):

1. global scalar mean and std of every stored value (float64, streamed over the store), as MusicFM
   normalises with dataset-wide scalars rather than a per-vector LayerNorm;
2. ``stack`` consecutive frames are concatenated (frame-major: ``[frame 0 bins, frame 1 bins, ...]``,
   MusicFM's ``b f (t s) -> b t (s f)``): token ``t`` covers frames ``[stack*t, stack*t + stack)``.
   Trailing frames that do not fill a stack get no token (MusicFM likewise yields 750 tokens for
   3000 frames), so a track of ``n`` frames has ``n // stack`` tokens;
3. normalise, project, look up the nearest code of each codebook; write ``int32`` codes
   ``(n_tokens, num_codebooks)`` to a frame set of the token store named after the feature set, with
   the same track ids in the same order, at ``frame_rate / stack``;
4. save the quantizer beside the store and write codebook usage statistics as a DVC metrics JSON.

Resumable: tracks already tokenised with the same fingerprint are skipped, batches are committed
with :meth:`FrameSet.append`. Anything that changes the codes (feature spec, stats, stack, codebook
parameters, seed) changes the set's ``spec`` and the set is rebuilt. Note that the stats are
computed over the whole feature set, so adding tracks to the features rebuilds the tokens too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirkit.data.quantizer import RandomProjectionQuantizer
from mirkit.data.store import FrameSet, ShardedSet, create_or_open, delete_set, open_set, writer_lock
from mirkit.device import DEVICES, pick
from mirkit.errors import InputError
from mirkit.files import write_json
from mirkit.limits import MAX_CODEBOOKS, MAX_CODES, MAX_STACK, MAX_WIDTH
from mirkit.params import ParamsError, param

TOKEN_DTYPE = "int32"
TOKEN_CHUNK = 1024   # tokens per chunk (40 s at 25 Hz); tokens are small, crops read few chunks


class TokensError(InputError):
    """The stage cannot run on this input (empty feature set, degenerate statistics, ...)."""


@dataclass
class TokensParams:
    """Section ``tokens`` of params.yaml."""

    features: str = param("data/features.zarr", help="feature store (path or fsspec URL)")
    feature_set: str = param("mel24k", help="feature set to tokenise; the token set gets the same name")
    out: str = param("data/tokens.zarr", help="token store (path or fsspec URL)")
    quantizer: str = param("", help="quantizer file (.safetensors + .json sidecar); empty: beside `out`")
    metrics: str = param("results/tokens.json", help="codebook usage statistics (DVC metrics)")
    stack: int = param(4, ge=1, le=MAX_STACK, help="frames concatenated per token (4: 100 fps -> 25 Hz, MusicFM)")
    codebook_size: int = param(8192, ge=2, le=MAX_CODES, help="codes per codebook (MuSE-LQ 8192; MusicFM 4096)")
    codebook_dim: int = param(16, ge=1, le=MAX_WIDTH, help="projection / codeword dimension (BEST-RQ 16)")
    num_codebooks: int = param(1, ge=1, le=MAX_CODEBOOKS, help="independent codebooks (seeds seed, seed+1, ...)")
    seed: int = param(142, help="quantizer seed (MusicFM 142)")
    batch_tracks: int = param(64, ge=1, help="tracks per committed append")
    device: str = param("cpu", choices=DEVICES, help="where the lookup runs; cpu guarantees bit-identical "
                        "codes across machines (a GPU may break near-ties differently)")

    def check(self) -> None:
        from mirkit.limits import check_bytes
        if _same_location(self.features, self.out):
            raise ParamsError(f"tokens.out={self.out!r}: must differ from tokens.features (the token set "
                              f"would replace the feature set of the same name)")
        check_bytes(f"tokens: {self.num_codebooks} codebook(s) of {self.codebook_size} x {self.codebook_dim}",
                    4 * self.num_codebooks * self.codebook_size * self.codebook_dim * 2)

    @property
    def quantizer_path(self) -> str:
        return self.quantizer or _beside(self.out, "quantizer.safetensors")


@dataclass
class TokensResult:
    """What one run did (also the source of the summary table and the metrics file)."""

    status: str                  # created | resumed | replaced (the token set)
    n_tracks: int
    tokenised: int               # tracks tokenised in this run
    skipped: int                 # tracks already present with the same fingerprint
    n_tokens: int
    dropped_frames: int          # trailing frames that did not fill a stack
    mean: float
    std: float
    quantizer: str
    metrics: str
    codebooks: list[dict[str, Any]] = field(default_factory=list)


# -- the pieces ------------------------------------------------------------------------------------
def feature_stats(features: FrameSet | ShardedSet, block: int = 65536) -> tuple[float, float]:
    """Global scalar mean and (population) std over every committed value, in float64.

    Streams over :meth:`FrameSet.iter_frames` and merges per-block moments (Chan et al.), which
    stays accurate for dB-scaled features where ``E[x^2] - E[x]^2`` would cancel badly.
    """
    count, mean, m2 = 0, 0.0, 0.0
    for frames in features.iter_frames(block):
        x = np.asarray(frames, dtype=np.float64).ravel()
        if x.size == 0:
            continue
        if not np.isfinite(x).all():
            raise TokensError(f"{features.url}/{features.name}: feature set contains non-finite values")
        b_mean = float(x.mean())
        b_m2 = float(((x - b_mean) ** 2).sum())
        total = count + x.size
        delta = b_mean - mean
        mean += delta * x.size / total
        m2 += b_m2 + delta * delta * count * x.size / total
        count = total
    if count == 0:
        raise TokensError(f"{features.url}/{features.name}: feature set has no frames")
    std = math.sqrt(m2 / count)
    if not std > 0:
        raise TokensError(f"{features.url}/{features.name}: all feature values are equal (std 0), cannot normalise")
    return mean, std


def stack_frames(frames: np.ndarray, stack: int) -> np.ndarray:
    """``(n, bins) -> (n // stack, stack * bins)``; row ``t`` is frames ``stack*t .. stack*t+stack-1``."""
    n = frames.shape[0] // stack
    return frames[: n * stack].reshape(n, stack * frames.shape[1])


def tokenize(frames: np.ndarray, quantizer: RandomProjectionQuantizer, stack: int) -> np.ndarray:
    """Codes ``(n // stack, num_codebooks)`` (int32) of one track's raw frames ``(n, bins)``."""
    stacked = stack_frames(np.asarray(frames, dtype=np.float32), stack)
    if stacked.shape[0] == 0:
        return np.zeros((0, quantizer.num_codebooks), dtype=TOKEN_DTYPE)
    return quantizer(torch.from_numpy(stacked)).cpu().numpy().astype(TOKEN_DTYPE)


def code_counts(tokens: FrameSet, codebook_size: int) -> np.ndarray:
    """How often each code occurs: ``(num_codebooks, codebook_size)`` int64 over the committed set."""
    counts = np.zeros((tokens.n_bins, codebook_size), dtype=np.int64)
    for block in tokens.iter_frames():
        for i in range(tokens.n_bins):
            counts[i] += np.bincount(block[:, i].astype(np.int64), minlength=codebook_size)
    return counts


def codebook_stats(counts: np.ndarray) -> list[dict[str, Any]]:
    """Per codebook: codes used, fraction used and perplexity ``exp(H)`` of the code distribution.

    A uniform distribution over ``m`` codes has perplexity ``m``; a collapsed quantizer has ~1.
    """
    rows = []
    for i, c in enumerate(np.asarray(counts, dtype=np.float64)):
        total = c.sum()
        p = c[c > 0] / total if total else np.zeros(0)
        rows.append({"codebook": i, "codes_used": int((c > 0).sum()), "fraction_used": float((c > 0).mean()),
                     "perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0})
    return rows


def token_spec(features: FrameSet | ShardedSet, p: TokensParams, mean: float, std: float) -> dict[str, Any]:
    """Everything the codes depend on; a stored set with a different spec is rebuilt."""
    return {"kind": "rpq-tokens", "feature_set": features.name, "feature_spec": features.spec,
            "feature_bins": features.n_bins, "feature_frame_rate": features.frame_rate, "stack": p.stack,
            "codebook_size": p.codebook_size, "codebook_dim": p.codebook_dim, "num_codebooks": p.num_codebooks,
            "seed": p.seed, "mean": mean, "std": std, "normalisation": "global-scalar", "lookup": "l2-cosine"}


# -- the stage -------------------------------------------------------------------------------------
def run(p: TokensParams, report: Callable[[int, int], None] | None = None) -> TokensResult:
    """Tokenise ``p.feature_set`` of ``p.features`` into ``p.out``; ``report(done, total)`` after each track.

    Raises :class:`~mirkit.data.store.StoreError` (missing store or set) or :class:`TokensError`.
    """
    try:
        device = pick(p.device)
    except (RuntimeError, ValueError) as exc:   # ParamsError: no CUDA here
        raise TokensError(f"tokens.device={p.device!r}: {exc}") from None
    features = open_set(p.features, p.feature_set)
    if len(features) == 0:
        raise TokensError(f"{p.features}/{p.feature_set}: feature set has no tracks")
    mean, std = feature_stats(features)
    quantizer = RandomProjectionQuantizer(p.stack * features.n_bins, p.codebook_size, p.codebook_dim,
                                          p.num_codebooks, p.seed, mean, std).to(device)
    with writer_lock(p.out):   # one writer per store: a second run refuses at once (StoreBusy)
        return _write(p, features, quantizer, mean, std, report)


def _write(p: TokensParams, features: FrameSet | ShardedSet, quantizer: RandomProjectionQuantizer, mean: float, std: float,
           report: Callable[[int, int], None] | None) -> TokensResult:
    tokens, status = _open_tokens(features, p, token_spec(features, p, mean, std))
    quantizer.save(p.quantizer_path)

    todo = list(range(len(tokens), len(features)))
    skipped = len(features) - len(todo)
    batch: list[tuple[str, str, str, np.ndarray]] = []
    for done, index in enumerate(todo, 1):
        rec = features.tracks[index]
        batch.append((rec.track_id, rec.source, rec.fingerprint, tokenize(features.read(index), quantizer, p.stack)))
        if len(batch) >= p.batch_tracks or done == len(todo):
            tokens.append(batch)   # the commit point: a killed run resumes after the last batch
            batch = []
        if report is not None:
            report(done, len(todo))

    stats = codebook_stats(code_counts(tokens, p.codebook_size))
    result = TokensResult(status=status, n_tracks=len(tokens), tokenised=len(todo), skipped=skipped,
                          n_tokens=tokens.total_frames,
                          dropped_frames=sum(t.n_frames % p.stack for t in features.tracks),
                          mean=mean, std=std, quantizer=p.quantizer_path, metrics=p.metrics, codebooks=stats)
    write_metrics(result, p.metrics)
    return result


def _open_tokens(features: FrameSet | ShardedSet, p: TokensParams, spec: dict[str, Any]) -> tuple[FrameSet, str]:
    """Create, resume or rebuild the token set; on return its tracks are a prefix of the features'."""
    # top-level keys the recipes read as ``tokens.attrs[...]``
    attrs = {"feature_set": features.name, "stack": p.stack, "mean": spec["mean"], "std": spec["std"],
             "codebook_size": p.codebook_size, "codebook_dim": p.codebook_dim, "num_codebooks": p.num_codebooks,
             "seed": p.seed, "quantizer": p.quantizer_path}
    kwargs: dict[str, Any] = dict(n_bins=p.num_codebooks, frame_rate=features.frame_rate / p.stack, dtype=TOKEN_DTYPE,
                  chunk_frames=TOKEN_CHUNK, attrs=attrs)
    tokens, status = create_or_open(p.out, features.name, spec, **kwargs)
    if not _is_prefix(tokens, features):
        # same spec but other tracks (features rebuilt track by track): never mix, rebuild
        delete_set(p.out, features.name)
        tokens, _ = create_or_open(p.out, features.name, spec, **kwargs)
        status = "replaced"
    return tokens, status


def _is_prefix(tokens: FrameSet, features: FrameSet | ShardedSet) -> bool:
    if len(tokens) > len(features):
        return False
    return all((t.track_id, t.fingerprint) == (f.track_id, f.fingerprint)
               for t, f in zip(tokens.tracks, features.tracks, strict=False))  # a prefix


def write_metrics(result: TokensResult, path: str) -> None:
    """The DVC metrics JSON: totals plus one entry per codebook."""
    data: dict[str, Any] = {"n_tracks": result.n_tracks, "n_tokens": result.n_tokens,
                            "dropped_frames": result.dropped_frames, "mean": result.mean, "std": result.std}
    for row in result.codebooks:
        data[f"codebook_{row['codebook']}"] = {k: v for k, v in row.items() if k != "codebook"}
    write_json(path, data)


def _same_location(a: str, b: str) -> bool:
    def norm(location: str) -> str:
        return location.rstrip("/") if "://" in location else str(Path(location).resolve())
    return norm(a) == norm(b)


def _beside(url: str, name: str) -> str:
    """``name`` in the folder that holds ``url`` (a path or fsspec URL)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        rest = rest.rstrip("/")
        head = rest.rsplit("/", 1)[0] + "/" if "/" in rest else ""
        return f"{scheme}://{head}{name}"
    return str(Path(url).parent / name)
