"""mirkit: self-supervised music representation learning, from audio to probe metrics."""

__version__ = "0.1.0"
