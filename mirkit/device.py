"""Device choice shared by every stage: ``auto`` picks CUDA when present, else CPU."""

from __future__ import annotations

import torch

from mirkit.params import ParamsError

DEVICES = ("auto", "cpu", "cuda")


def pick(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("device 'cuda' requested but no CUDA device is available (use auto or cpu)")
    return torch.device(name)
