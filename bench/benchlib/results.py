"""Where a benchmark's results go and what is recorded with them.

Every bench writes its JSON report to ``bench/results/<bench>.json`` by default (``<bench>`` is the
script's name; a variant run names its file ``<bench>-<variant>.json`` with ``--out``).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

#: the repository's root
ROOT = Path(__file__).resolve().parents[2]
#: the committed results
RESULTS = ROOT / "bench" / "results"


def result_path(bench: str) -> Path:
    """The default result file of ``bench`` (the script's name without ``.py``)."""
    return RESULTS / f"{bench}.json"


def machine() -> dict[str, Any]:
    """The machine a report was measured on: CPUs, memory, platform, Python."""
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def command() -> str:
    """The command line that ran this bench (the interpreter relative to the repository when inside it,
    ``PYTHONPATH`` in front when set), to be recorded in its report."""
    python = sys.executable
    if python.startswith(str(ROOT)):
        python = os.path.relpath(python, ROOT)
    line = shlex.join([python, *sys.argv])
    pythonpath = os.environ.get("PYTHONPATH")
    return f"PYTHONPATH={pythonpath} {line}" if pythonpath else line


def write(path: Path | str, report: dict[str, Any], indent: int = 2) -> str:
    """Write ``report`` as JSON to ``path`` (folders made as needed); return the text written."""
    text = json.dumps(report, indent=indent)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n")
    return text
