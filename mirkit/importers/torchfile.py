"""Reading a downloaded torch checkpoint without ever executing it.

``torch.load(weights_only=True)`` unpickles only tensors, primitive containers and numbers; a file that
needs anything else (a class, a function: what a malicious pickle uses to run code) is refused with a
:class:`~mirkit.train.checkpoint.CheckpointError`. ``.safetensors`` files are read with safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mirkit.train.checkpoint import CheckpointError

#: keys under which training scripts commonly nest the model's state dict
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "encoder", "net", "module", "backbone")


def read_weights_only(path: str | Path) -> Any:
    """The object stored in ``path``, loaded with ``weights_only=True`` (or safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything beyond weights; others for damaged files
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(f"{path}: refused to load: it is not a plain weights file readable with "
                              f"torch.load(weights_only=True) ({exc.__class__.__name__}: {reason}). mirkit never "
                              "unpickles arbitrary objects; re-save the state dict alone (torch.save(model.state_dict()))"
                              ) from None


def find_state_dict(obj: Any, looks_right: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict inside ``obj``: ``obj`` itself, or one nested under a common wrapper key
    (``state_dict``, ``model_state_dict``, ``model``, ...), with a DDP ``module.`` prefix removed.
    ``looks_right(keys)`` says whether a candidate has the expected names."""
    candidates = [obj]
    if isinstance(obj, dict):
        candidates += [obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
    for cand in candidates:
        if not isinstance(cand, dict) or not cand:
            continue
        tensors = {str(k): v for k, v in cand.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != len(cand):
            continue
        if all(k.startswith("module.") for k in tensors):
            tensors = {k[len("module."):]: v for k, v in tensors.items()}
        if looks_right(tensors):
            return tensors
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{where}: no state dict in the expected naming found (top-level keys: {keys})")
