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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (what the model card and every embeddings store record for imported weights)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_exact(encoder: torch.nn.Module, tensors: dict[str, tuple[str, torch.Tensor]], where: str, what: str) -> None:
    """Load ``{mirkit name: (file key, tensor)}`` into ``encoder`` strictly: every weight present, every
    shape right, or a :class:`CheckpointError` naming the first offenders by their key in the file."""
    own = encoder.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise CheckpointError(f"{where}: missing weight(s) for a {what} model: {', '.join(missing[:8])}"
                              + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    for name, (key, value) in sorted(tensors.items()):
        if tuple(value.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{where}: {key} has shape {tuple(value.shape)}; the {what} model read from "
                                  f"the other weights needs {tuple(own[name].shape)}")
    encoder.load_state_dict({n: v.to(own[n].dtype) for n, (_, v) in tensors.items()}, strict=True)


def refuse_unknown(unknown: list[str], where: str, what: str) -> None:
    if unknown:
        raise CheckpointError(f"{where}: unknown key(s) for a {what} checkpoint: {', '.join(sorted(unknown)[:8])}"
                              + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
