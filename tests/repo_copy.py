"""A scratch copy of this checkout as its own git repository, for tests that run `dvc` on the real dvc.yaml
(test_dvc, test_pipeline, test_experiments): the commands then run on exactly the code and params under test,
and what they write never touches the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent        # dvc and mirkit beside the python running the tests


def repo_env(**extra: str) -> dict[str, str]:
    """The environment for git and dvc in a copy: this python's bin first on PATH, a git identity."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **extra}


def copy_repository(dst: Path, env: dict[str, str], skip: tuple[str, ...] = (),
                    before_commit: Callable[[Path], None] | None = None) -> None:
    """Copy the checkout's files (tracked and untracked-but-not-ignored, as they are on disk; none under the
    ``skip`` prefixes) to ``dst``, let ``before_commit(dst)`` edit them, then make ``dst`` a git repository
    (branch main) holding them as one commit."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(skip):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    if before_commit is not None:
        before_commit(dst)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, env=env, check=True)
