"""mirkit: self-supervised music representation learning, from audio to probe metrics.

The public Python API (``dir(mirkit)`` lists it; each name loads torch on first use only)::

    enc = mirkit.load_encoder("models/pretrain")           # a model folder, run folder or installed name
    enc.embed("song.wav", layer="all")                       # one file, every layer
    mirkit.embed_files(enc, ["a.wav", "b.wav"], layers=[4, -1])   # many files
    enc.save_pretrained("release/my-encoder")               # model folder + model card
"""

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access)
_LAZY = {
    "load_encoder": "mirkit.api",
    "embed_files": "mirkit.api",
    "list_encoders": "mirkit.api",
    "MirkitEncoder": "mirkit.api",
    "create_encoder": "mirkit.models.registry",
    "MirkitError": "mirkit.errors",
    "InputError": "mirkit.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Keep ``import mirkit`` cheap: the API (and torch) load on first use."""
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mirkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
