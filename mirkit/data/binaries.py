"""Load the packages whose compiled binaries must agree (torch and torchaudio), with one clear message.

torchaudio's C++ library is built against one exact torch release; a mismatched pair (e.g. torchaudio
2.11.1 with torch 2.11.0) fails deep inside the first stage with an undefined-symbol traceback.
"""

from __future__ import annotations

from importlib import metadata
from types import ModuleType

# The pair pinned in pyproject.toml and requirements.lock (a test keeps the three in step).
TORCH_VERSION = "2.11.0"
TORCHAUDIO_VERSION = "2.11.0"


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def mismatch_message(reason: str) -> str:
    """What is installed, which pair works, and the one command that fixes it."""
    return (
        f"torchaudio cannot be loaded: {reason}\n"
        f"  installed: torch {_installed('torch')}, torchaudio {_installed('torchaudio')}\n"
        f"  mirkit needs the matching pair torch=={TORCH_VERSION} with torchaudio=={TORCHAUDIO_VERSION}"
        " (their binaries must agree exactly).\n"
        f"  fix: python -m pip install 'torch=={TORCH_VERSION}' 'torchaudio=={TORCHAUDIO_VERSION}'"
        "   (or `make install`, which installs requirements.lock)"
    )


def load_torchaudio() -> ModuleType:
    """Import ``torchaudio`` (and its transforms), turning a binary mismatch into one readable error."""
    try:
        import torchaudio
        import torchaudio.transforms  # noqa: F401  (loads the compiled library)
    except (OSError, ImportError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportError(mismatch_message(first_line)) from None
    return torchaudio
