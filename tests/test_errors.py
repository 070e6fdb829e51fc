"""One error model (docs/errors.md): every error mirkit reports is a MirkitError, caught once at the CLI's top,
printed as one red line (no traceback) and mapped to its kind's exit code: 2 bad input, 1 runtime failure."""

import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import invoke

from mirkit.data.audio import AudioError
from mirkit.data.manifest import ManifestError
from mirkit.data.quantizer import QuantizerFileError
from mirkit.data.store import StoreError
from mirkit.data.tokens import TokensError
from mirkit.errors import InputError, MirkitError
from mirkit.eval.tasks import TaskDataError
from mirkit.params import ParamsError
from mirkit.train.checkpoint import CheckpointError
from mirkit.train.loop import TrainingDiverged

ROOT = Path(__file__).parent.parent
KINDS = [(MirkitError, 1), (TrainingDiverged, 1), (InputError, 2), (ParamsError, 2), (StoreError, 2),
         (CheckpointError, 2), (ManifestError, 2), (AudioError, 2), (TaskDataError, 2), (TokensError, 2),
         (QuantizerFileError, 2)]


@pytest.mark.parametrize("cls, code", KINDS, ids=[k.__name__ for k, _ in KINDS])
def test_every_kind_is_one_line_with_its_exit_code(monkeypatch, tmp_path, cls, code):
    def fail(*args, **kwargs):
        raise cls(f"data/x.zarr: {cls.__name__} happened")
    monkeypatch.setattr("mirkit.commands.tokens.run", fail)
    res = invoke("tokens", "--params", "none")
    assert cls.exit_code == code and res.exit_code == code
    assert f"error: data/x.zarr: {cls.__name__} happened" in res.text
    lines = res.output.strip().splitlines()
    assert "Traceback" not in res.output and lines[-1].startswith("error: ")
    assert sum("error" in ln for ln in lines) == 1


def test_every_mirkit_error_class_has_a_documented_kind():
    """Each error class derives from InputError (2) or is a runtime MirkitError (1): nothing else."""
    import importlib
    import inspect
    import pkgutil

    import mirkit
    seen = set()
    for info in pkgutil.walk_packages(mirkit.__path__, "mirkit."):
        if info.name.startswith("mirkit.commands") or info.name in ("mirkit.__main__",):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, MirkitError):
                seen.add(obj)
                assert obj.exit_code == (2 if issubclass(obj, InputError) else 1), obj
    assert {k for k, _ in KINDS} <= seen
    doc = (ROOT / "docs" / "errors.md").read_text()
    assert "| 1 | `MirkitError`" in doc and "| 2 | `InputError`" in doc


def test_real_bad_input_exits_2_before_any_work(tmp_path):
    res = invoke("mels", "--params", "none", "--input", str(tmp_path / "missing.csv"),
                 "--store", str(tmp_path / "f.zarr"), "--set", f"failures={tmp_path / 'f.tsv'}",
                 "--set", f"summary={tmp_path / 's.json'}")
    assert res.exit_code == 2 and "missing.csv: manifest not found" in res.text
    res = invoke("mels", "--params", str(tmp_path / "params.yml"))
    assert res.exit_code == 2 and "params.yml: no such file" in res.text and "--params none" in res.text
    res = invoke("pretrain", "--params", "none", "--set", "stepz=5")
    assert res.exit_code == 2 and "pretrain.stepz: unknown parameter; did you mean 'steps'?" in res.text
    res = invoke("benchmark-manifest", "gtzan", "--audio-dir", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "nowhere: not a folder" in res.text


def test_python_dash_m_and_the_entry_point_share_the_handler(tmp_path):
    """`python -m mirkit` (and `torchrun -m mirkit`) go through the same top-level handler."""
    res = subprocess.run([sys.executable, "-m", "mirkit", "tokens", "--params", "none",
                          "--set", f"features={tmp_path / 'absent.zarr'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "error:" in res.stderr and "absent.zarr" in res.stderr and "Traceback" not in res.stderr
