"""Regenerate llm_datadist/_core.pyi from the built module (pybind11-stubgen), ready to commit.

.venv/bin/python tools/gen_stubs.py   (after installing the core: it reads the installed module)
"""

from __future__ import annotations

import enum
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _enum_members(text: str) -> str:
    """Write the members of ``py::native_enum`` classes as ``NAME = value``.

    pybind11-stubgen writes them as ``NAME: typing.ClassVar[Cls]`` annotations, which type checkers read as
    an enum without members, and adds untyped ``__new__``/``__format__`` that ``enum.IntEnum`` already has.
    """
    core = importlib.import_module("llm_datadist._core")
    out: list[str] = []
    current: type[enum.Enum] | None = None
    lines = iter(text.splitlines())
    for line in lines:
        header = re.match(r"class (\w+)\(enum\.IntEnum\):", line)
        if header:
            current = getattr(core, header.group(1))
        elif line.startswith("class ") or (line and not line.startswith(" ")):
            current = None
        if current is not None:
            member = re.fullmatch(r"    (\w+): typing\.ClassVar\[\w+\]", line)
            if member:
                out.append(f"    {member.group(1)} = {int(current[member.group(1)])}")
                continue
            if line == "    @classmethod" or re.match(r"    def __(new|format)__\(", line):
                if line.startswith("    def"):
                    next(lines)  # its "..." body
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-P", "-m", "pybind11_stubgen", "llm_datadist._core", "-o", out], check=True
        )
        text = (Path(out) / "llm_datadist" / "_core.pyi").read_text()
    text = re.sub(r"__all__: list\[str\] = \[[^\]]*\]\n", "", text)  # the module defines no __all__
    text = text.replace("def counters(self) -> dict:", "def counters(self) -> dict[str, int]:")
    text = _enum_members(text)
    stub = ROOT / "llm_datadist" / "_core.pyi"
    stub.write_text(text)
    subprocess.run([sys.executable, "-m", "ruff", "format", "--quiet", str(stub)], check=True)


if __name__ == "__main__":
    main()
