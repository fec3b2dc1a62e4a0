"""Regenerate llm_datadist/_core.pyi from the built module (pybind11-stubgen), ready to commit.

.venv/bin/python tools/gen_stubs.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "pybind11_stubgen", "llm_datadist._core", "-o", out], check=True
        )
        text = (Path(out) / "llm_datadist" / "_core.pyi").read_text()
    text = re.sub(r"__all__: list\[str\] = \[[^\]]*\]\n", "", text)  # the module defines no __all__
    text = text.replace("def counters(self) -> dict:", "def counters(self) -> dict[str, int]:")
    (ROOT / "llm_datadist" / "_core.pyi").write_text(text)


if __name__ == "__main__":
    main()
