"""Random-projection quantizer (BEST-RQ, Chiu et al. 2022), as MusicFM and MuSE-LQ use it.

Per codebook: a frozen Xavier-normal projection ``A`` (input_dim x codebook_dim) and a frozen
N(0, 1) codebook ``C`` (codebook_size x codebook_dim). A (normalised, stacked) feature vector
``x`` gets the code ``argmin_i || l2norm(C_i) - l2norm(A^T x) ||``, which for unit vectors is
``argmax_i <l2norm(C_i), l2norm(A^T x)>``. This follows MusicFM's ``RandomProjectionQuantizer``
(Xavier-normal projection, N(0,1) codebook, L2-normalised lookup, seed 142 + codebook index),
with two deliberate differences:

* the weights come from a local :class:`torch.Generator`, so building a quantizer never touches
  the global RNG (MusicFM calls ``torch.manual_seed`` in ``__init__``);
* the input normalisation (global scalar mean/std, MusicFM-style, instead of the per-vector
  LayerNorm of lucidrains' version) is part of the quantizer, so a saved quantizer alone maps
  stacked frames to the same codes the ``tokens`` stage wrote.

Saved as ``<name>.safetensors`` (projection, codebook) plus ``<name>.json`` (hyper-parameters and
normalisation stats). Paths may be local or fsspec URLs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mirkit.errors import InputError
from mirkit.files import atomic_write_bytes

FORMAT = "mirkit.rpq/1"
_LOOKUP_ROWS = 4096   # rows per lookup block: bounds the (rows x codebook_size) similarity matrix


class QuantizerFileError(InputError):
    """A saved quantizer is missing, unreadable or inconsistent with its hyper-parameters."""


def sidecar_path(path: str | os.PathLike) -> str:
    """The JSON file of hyper-parameters beside ``<name>.safetensors``."""
    text = str(path)
    return (text[: -len(".safetensors")] if text.endswith(".safetensors") else text) + ".json"


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projection + random codebook(s); ``forward(x (..., input_dim)) -> (..., num_codebooks)`` int64."""

    projection: Tensor   # (num_codebooks, input_dim, codebook_dim), buffer
    codebook: Tensor     # (num_codebooks, codebook_size, codebook_dim), buffer
    mean: float   # global input normalisation (set_stats)
    std: float

    def __init__(self, input_dim: int, codebook_size: int = 8192, codebook_dim: int = 16,
                 num_codebooks: int = 1, seed: int = 142, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        for name, value, low in (("input_dim", input_dim, 1), ("codebook_size", codebook_size, 2),
                                 ("codebook_dim", codebook_dim, 1), ("num_codebooks", num_codebooks, 1)):
            if int(value) < low:
                raise ValueError(f"{name}={value!r}: must be >= {low}")
        self.input_dim, self.codebook_size = int(input_dim), int(codebook_size)
        self.codebook_dim, self.num_codebooks, self.seed = int(codebook_dim), int(num_codebooks), int(seed)
        self.set_stats(mean, std)
        projection = torch.empty(self.num_codebooks, self.input_dim, self.codebook_dim)
        codebook = torch.empty(self.num_codebooks, self.codebook_size, self.codebook_dim)
        for i in range(self.num_codebooks):
            g = torch.Generator().manual_seed(self.seed + i)   # MusicFM: seed 142 + i per codebook
            nn.init.xavier_normal_(projection[i], generator=g)
            codebook[i].normal_(generator=g)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)
        self.requires_grad_(False)
        self.eval()

    # -- normalisation ---------------------------------------------------------------------------
    def set_stats(self, mean: float, std: float) -> None:
        """Set the global scalar input normalisation ``(x - mean) / std``."""
        mean, std = float(mean), float(std)
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"normalisation stats mean={mean!r}, std={std!r}: need finite values and std > 0")
        self.mean, self.std = mean, std

    def hparams(self) -> dict[str, Any]:
        return {"format": FORMAT, "input_dim": self.input_dim, "codebook_size": self.codebook_size,
                "codebook_dim": self.codebook_dim, "num_codebooks": self.num_codebooks, "seed": self.seed,
                "mean": self.mean, "std": self.std}

    # -- lookup ----------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Codes ``(..., num_codebooks)`` (int64) for un-normalised vectors ``x (..., input_dim)``."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"expected vectors of size {self.input_dim}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.input_dim).to(self.projection.device, torch.float32)
        flat = (flat - self.mean) / self.std
        codebook = nn.functional.normalize(self.codebook, dim=-1)           # (K, size, dim)
        out = torch.empty(flat.shape[0], self.num_codebooks, dtype=torch.int64, device=flat.device)
        for lo in range(0, flat.shape[0], _LOOKUP_ROWS):
            block = flat[lo: lo + _LOOKUP_ROWS]
            for i in range(self.num_codebooks):
                z = nn.functional.normalize(block @ self.projection[i], dim=-1)  # (rows, dim)
                # nearest unit codeword: argmin distance == argmax cosine similarity
                out[lo: lo + block.shape[0], i] = (z @ codebook[i].T).argmax(dim=-1)
        return out.reshape(*lead, self.num_codebooks)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` (safetensors: projection, codebook) and its JSON sidecar of hyper-parameters."""
        from safetensors.torch import save
        blob = save({"projection": self.projection.contiguous().cpu(), "codebook": self.codebook.contiguous().cpu()},
                    metadata={"format": FORMAT})
        _write_bytes(str(path), blob)
        _write_bytes(sidecar_path(path), (json.dumps(self.hparams(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RandomProjectionQuantizer:
        """Read a quantizer written by :meth:`save`; raises :class:`QuantizerFileError` naming the problem."""
        from safetensors import SafetensorError
        from safetensors.torch import load
        path = str(path)
        meta_path = sidecar_path(path)
        try:
            hp = json.loads(_read_bytes(meta_path))
        except FileNotFoundError:
            raise QuantizerFileError(f"{meta_path}: quantizer hyper-parameters file is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QuantizerFileError(f"{meta_path}: not valid JSON ({exc})") from None
        if not isinstance(hp, dict) or hp.get("format") != FORMAT:
            raise QuantizerFileError(f"{meta_path}: not a mirkit quantizer file (format={hp.get('format') if isinstance(hp, dict) else None!r})")
        try:
            blob = _read_bytes(path)
        except FileNotFoundError:
            raise QuantizerFileError(f"{path}: quantizer weights file is missing") from None
        try:
            tensors = load(blob)
        except (SafetensorError, ValueError) as exc:
            raise QuantizerFileError(f"{path}: unreadable safetensors file, truncated or corrupt ({exc})") from None
        try:
            q = cls(hp["input_dim"], hp["codebook_size"], hp["codebook_dim"], hp["num_codebooks"], hp["seed"],
                    hp["mean"], hp["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise QuantizerFileError(f"{meta_path}: bad hyper-parameters ({exc!r})") from None
        for name in ("projection", "codebook"):
            expected = tuple(getattr(q, name).shape)
            if name not in tensors:
                raise QuantizerFileError(f"{path}: no '{name}' tensor (has: {', '.join(sorted(tensors)) or 'none'})")
            got = tuple(tensors[name].shape)
            if got != expected:
                raise QuantizerFileError(f"{path}: '{name}' has shape {got}, but {meta_path} implies {expected}")
            getattr(q, name).copy_(tensors[name])
        return q


def _is_url(path: str) -> bool:
    return "://" in path


def _write_bytes(path: str, data: bytes) -> None:
    """Write a file whole: local files atomically (temporary name + rename), URLs via fsspec."""
    if _is_url(path):
        import fsspec
        with fsspec.open(path, "wb") as f:
            f.write(data)
    else:
        atomic_write_bytes(path, data)


def _read_bytes(path: str) -> bytes:
    if _is_url(path):
        import fsspec
        with fsspec.open(path, "rb") as f:
            return f.read()
    return Path(path).read_bytes()
