"""mirkit: self-supervised music representation learning, from audio to probe metrics."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Keep ``import mirkit`` cheap: the API (and torch) load on first use."""
    if name == "load_encoder":
        from mirkit.api import load_encoder
        return load_encoder
    raise AttributeError(f"module 'mirkit' has no attribute {name!r}")
