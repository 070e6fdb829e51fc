"""Memory estimates before allocating: a parameter that would need more than the budget is refused
with an :class:`~mirkit.errors.InputError` naming the source, instead of allocating until killed.

The budget is half the machine's physical memory, or ``MIRKIT_MAX_BYTES`` when set (bytes; suffixes
K/M/G/T accepted, e.g. ``MIRKIT_MAX_BYTES=64G``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mirkit.errors import InputError

#: upper bounds shared by the parameter sections (typed in params.yaml and in a checkpoint's config.json)
MAX_FRAMES = 16384        # a training crop / view: 164 s at 100 frames/s (MuSE uses 3000)
MAX_WIDTH = 65536         # a hidden or projection size
MAX_CODES = 65536         # codes per codebook (MuSE-LQ 8192, MusicFM 4096)
MAX_CODEBOOKS = 64
MAX_STACK = 64            # frames stacked per token


class ResourceError(InputError):
    """A parameter or input would need more memory than the budget."""


_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def budget() -> int:
    """Bytes one allocation may take (``MIRKIT_MAX_BYTES`` or half the physical memory)."""
    text = os.environ.get("MIRKIT_MAX_BYTES", "").strip().upper().removesuffix("B")
    if text:
        try:
            return int(float(text[:-1]) * _SUFFIX[text[-1]]) if text[-1] in _SUFFIX else int(float(text))
        except ValueError:
            raise InputError(f"MIRKIT_MAX_BYTES={os.environ['MIRKIT_MAX_BYTES']!r}: expected bytes, e.g. 64G") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_bytes(what: str, n_bytes: float, hint: str = "") -> None:
    """Raise :class:`ResourceError` when ``what`` would need more than :func:`budget` bytes."""
    limit = budget()
    if n_bytes > limit:
        raise ResourceError(f"{what}: would need about {human(n_bytes)} of memory, more than the budget of "
                            f"{human(limit)} (MIRKIT_MAX_BYTES){'; ' + hint if hint else ''}")


def module_bytes(build: Callable[[], Any]) -> int:
    """Bytes of the parameters and buffers of the ``torch.nn.Module`` that ``build()`` returns, counted
    on the ``meta`` device (nothing is allocated)."""
    import torch
    with torch.device("meta"):
        module = build()
    tensors = list(module.parameters()) + list(module.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def check_module(what: str, build: Callable[[], Any], hint: str = "") -> None:
    """Estimate a model's size on the meta device and refuse it when over budget (before building it)."""
    check_bytes(what, module_bytes(build), hint)
