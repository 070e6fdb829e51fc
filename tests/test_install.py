"""The install contract: the torch/torchaudio pair is pinned in one place, and a mismatch reads clearly."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from mirkit.data import binaries

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_pyproject_lock_and_runtime_check_pin_the_same_torch_pair():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={binaries.TORCH_VERSION}" in deps
    assert f"torchaudio=={binaries.TORCHAUDIO_VERSION}" in deps
    lock = _lock()
    assert lock["torch"] == binaries.TORCH_VERSION
    assert lock["torchaudio"] == binaries.TORCHAUDIO_VERSION


def test_lock_pins_every_dependency_exactly():
    text = (ROOT / "requirements.lock").read_text()
    reqs = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert reqs and all("==" in ln for ln in reqs), [ln for ln in reqs if "==" not in ln]
    lock = _lock()
    for name in ("numpy", "zarr", "dvc", "dvclive", "scikit-learn", "mir-eval", "pytest", "ruff", "mypy"):
        assert name in lock, name


def test_a_torchaudio_that_cannot_load_its_library_gives_one_clear_message(tmp_path):
    fake = tmp_path / "torchaudio"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise OSError('Could not load this library: libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n"
    )
    code = "import mirkit.data.audio"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0
    err = r.stderr
    assert "torchaudio cannot be loaded: Could not load this library" in err
    assert f"torch=={binaries.TORCH_VERSION}" in err and f"torchaudio=={binaries.TORCHAUDIO_VERSION}" in err
    assert "installed: torch " in err and "pip install" in err
    assert "undefined symbol" in err and err.count("\n") < 20  # one message, not a deep traceback
