"""Rewrite the mirkit code deps of every dvc.yaml stage to what its commands import (tests/test_dvc.py's
walker), keeping comments, non-code deps and directory deps that still cover something. Run after moving
or adding modules: `python .ci/sync_dvc_deps.py`; tests/test_dvc.py fails until dvc.yaml agrees."""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the tests' helper modules (as conftest.py does)
from tests.test_dvc import commands, covered, stage_code, stages  # noqa: E402


def main() -> None:
    text = (ROOT / "dvc.yaml").read_text().splitlines()
    out: list[str] = []
    stage_names = set(stages())
    current, i = None, 0
    while i < len(text):
        line = text[i]
        m = re.match(r"^  ([\w-]+):\s*$", line)
        if m and m.group(1) in stage_names:
            current = m.group(1)
        d = re.match(r"^( +)deps:\s*$", line)
        if current and d:
            pad = d.group(1) + "  "
            out.append(line)
            i += 1
            block: list[str] = []
            while i < len(text) and re.match(rf"^{pad}(- |#)", text[i]):
                block.append(text[i])
                i += 1
            code = set().union(*(stage_code(c) for c in commands(stages()[current])))
            kept = [b for b in block if not b.strip().startswith("- mirkit/")]
            dirs = [b.strip()[2:] for b in block if b.strip().startswith("- mirkit/")
                    and not b.strip().endswith(".py") and any(covered(p, [b.strip()[2:]]) for p in code)]
            files = sorted(p for p in code if not covered(p, dirs))
            mirkit = sorted([*dirs, *files])
            out.extend(kept + [f"{pad}- {p}" for p in mirkit])
            continue
        out.append(line)
        i += 1
    (ROOT / "dvc.yaml").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
