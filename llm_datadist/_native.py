"""The one module that imports the native core, and the one translator of its errors.

``_core`` reports every failure as ``CoreError(code, message)`` with an ``LLMStatusCode`` value; here it
becomes ``LLMException`` with that status code and the reference's message shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llm_datadist import _core
from llm_datadist.status import LLMException, LLMStatusCode, code_from_int

Engine = _core.Engine
EngineConfig = _core.EngineConfig
Extent = _core.Extent
CacheInfo = _core.CacheInfo
LinkInfo = _core.LinkInfo
CoreError = _core.CoreError
Code = _core.Code
PoolKind = _core.PoolKind
copy_units = _core.copy_units
WHOLE_SLOT: int = _core.WHOLE_SLOT
FLAG_RELEASE_KEY: int = _core.FLAG_RELEASE_KEY
FLAG_ALLOW_SHORT: int = _core.FLAG_ALLOW_SHORT

#: ``Cache`` pool index in the core (``PoolKind``), as the plain ints ``CacheInfo.pool`` holds
POOL_DEVICE: int = int(_core.PoolKind.DEVICE)
POOL_HOST: int = int(_core.PoolKind.HOST)


def to_exception(func_name: str, error: _core.CoreError) -> LLMException:
    """Translate a core error into the LLMException users handle."""
    raw_code, message = error.args
    status = code_from_int(int(raw_code))
    return LLMException(f"[{func_name}] failed, error code is {status}, {message}.", status_code=status)


def status_of(raw_code: int) -> LLMStatusCode:
    """The LLMStatusCode of a raw core code (unknown codes are LLM_FAILED)."""
    return code_from_int(int(raw_code))


@contextmanager
def core_call(func_name: str) -> Iterator[None]:
    """Run core calls, re-raising their errors as LLMException named after ``func_name``."""
    try:
        yield
    except _core.CoreError as error:
        raise to_exception(func_name, error) from None
