"""An in-memory CropSource for unit tests (the store's contract without a Zarr store)."""

from __future__ import annotations

from typing import Any

import numpy as np


class MemorySource:
    """Tracks as ``(n_frames, n_bins)`` arrays; reads past either end are zero-padded like the store's."""

    def __init__(self, arrays: list[np.ndarray], frame_rate: float = 31.25, attrs: dict[str, Any] | None = None):
        self.arrays, self.frame_rate, self.attrs = arrays, frame_rate, attrs or {}
        self.n_bins = arrays[0].shape[1]

    def __len__(self) -> int:
        return len(self.arrays)

    def n_frames(self, track: int) -> int:
        return self.arrays[track].shape[0]

    def read(self, track: int, start: int = 0, length: int | None = None) -> np.ndarray:
        a = self.arrays[track]
        length = a.shape[0] - start if length is None else length
        out = np.zeros((length, a.shape[1]), dtype=a.dtype)
        lo, hi = max(start, 0), min(start + length, a.shape[0])
        if hi > lo:
            out[lo - start: hi - start] = a[lo:hi]
        return out
