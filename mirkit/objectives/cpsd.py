"""CPSD equivariance loss over the circle of fifths (STONE, Kong et al., ISMIR 2024; MT2's token 1).

Read from STONE's public code (``src/stone12/stone_loss.py``, see ``shared/notes/anchors-mt2.md``
§1.4); implemented here from its equations.

A 12-way profile ``y`` (a softmax) is projected onto one DFT coefficient::

    z = sum_q y[q] * exp(2*pi*i * c * q / 12)         (c = 7: circle of fifths; c = 1: semitones)

and three views are compared through their cross-power spectral density ``z_a * conj(z_b)``::

    L = mean|1 - z1 conj(z2)|^2 + mean|e^{2 pi i c d/12} - z1 conj(z3)|^2
                                + mean|e^{2 pi i c d/12} - z2 conj(z3)|^2

Views 1 and 2 are two segments of a track (same key); view 3 is segment 1 cropped ``d`` bins
higher in the CQT, i.e. pitch-shifted **down** by ``d`` semitones. Sign convention: if ``y`` is a
pitch-class profile in crop coordinates, a crop ``d`` bins higher sees pitch class ``q + d`` at
index ``q``, so ``y3[q] = y1[q + d]`` and ``z3 = z1 * e^{-2 pi i c d/12}``; hence
``z1 conj(z3) = |z1|^2 e^{+2 pi i c d/12}`` and the target phase is ``+2 pi c d / 12`` with
``d = offset3 - offset1`` (the sign STONE's code uses; its README writes the opposite sign with
the opposite shift convention). ``tests/test_mt2.py`` checks this against the recipe's crops.

There is no cross-entropy term: the loss also pushes ``|z|`` to 1, i.e. peaked profiles.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor


def _angles(n: int, c: float, device: torch.device) -> Tensor:
    return 2 * math.pi * c * torch.arange(n, device=device, dtype=torch.float32) / n


def _sq_mag(w: Tensor) -> Tensor:
    """``|w|^2`` without ``abs`` (whose gradient is undefined at 0)."""
    return w.real.pow(2) + w.imag.pow(2)


def key_phasor(y: Tensor, c: int = 7) -> Tensor:
    """``(batch,)`` complex DFT coefficient ``sum_q y[q] e^{2 pi i c q/12}`` of ``(batch, 12)`` profiles."""
    if y.dim() != 2:
        raise ValueError(f"expected (batch, 12) profiles, got shape {tuple(y.shape)}")
    ang = _angles(y.shape[-1], c, y.device)
    y = y.float()
    return torch.complex(y @ torch.cos(ang), y @ torch.sin(ang))


def transposition_phasor(d: Tensor, c: int = 7, n: int = 12) -> Tensor:
    """``e^{2 pi i c d / 12}``: the phase view 1 leads view 3 by when view 3 is cropped ``d`` bins higher."""
    ang = 2 * math.pi * c * d.float() / n
    return torch.complex(torch.cos(ang), torch.sin(ang))


def cpsd_terms(y1: Tensor, y2: Tensor, y3: Tensor, d: Tensor, c: int = 7) -> dict[str, Tensor]:
    """The three CPSD terms (batch means) for profiles of views 1, 2, 3 and crop shifts ``d``.

    Computed in float32 with autocast off (the phases are sensitive to bf16 rounding).
    """
    with torch.autocast(device_type=y1.device.type, enabled=False):
        z1, z2, z3 = key_phasor(y1, c), key_phasor(y2, c), key_phasor(y3, c)
        target = transposition_phasor(d.to(y1.device), c, y1.shape[-1])
        return {
            "cpsd_pos": _sq_mag(1 - z1 * z2.conj()).mean(),
            "cpsd_equi1": _sq_mag(target - z1 * z3.conj()).mean(),
            "cpsd_equi2": _sq_mag(target - z2 * z3.conj()).mean(),
        }


def cpsd_loss(y1: Tensor, y2: Tensor, y3: Tensor, d: Tensor, c: int = 7) -> Tensor:
    """STONE's loss: the sum of :func:`cpsd_terms` (no weights)."""
    return cast(Tensor, sum(cpsd_terms(y1, y2, y3, d, c).values()))   # a sum of three tensors
