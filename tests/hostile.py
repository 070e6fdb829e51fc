"""A hostile checkpoint for the importers' tests: unpickling a ``Payload`` runs a shell command (touches ``marker``),
which is what a malicious checkpoint file does; a weights-only loader must refuse it without running it."""

from __future__ import annotations

import os
from pathlib import Path


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
