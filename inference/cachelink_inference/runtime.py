"""Process set-up for bitwise-reproducible runs: one BLAS/OpenMP thread, set before numpy is imported."""

from __future__ import annotations

import os
import sys

THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def single_thread_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with every BLAS thread count set to 1, for processes we spawn."""
    out = dict(os.environ if env is None else env)
    for name in THREAD_VARS:
        out[name] = "1"
    return out


def reproducible() -> None:
    """Set the thread variables in this process; call before the first ``import numpy``."""
    if "numpy" in sys.modules and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        raise RuntimeError(
            "numpy was imported before reproducible(): its BLAS may already use several threads"
        )
    for name in THREAD_VARS:
        os.environ[name] = "1"
