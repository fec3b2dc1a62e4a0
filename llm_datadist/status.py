"""Status codes and the exception type of the LLM-DataDist compatible API.

``CacheLinkError`` is the one base of the project's own errors (the engine's ``LLMException``, the node
agent's, the operator's and the development tools'): each carries an ``LLMStatusCode``.
"""

import logging
from enum import IntEnum
from typing import Any, NoReturn

__all__ = [
    "CacheLinkError",
    "LLMException",
    "LLMStatusCode",
    "Status",
    "code_2_status",
    "code_from_int",
    "handle_llm_status",
    "raise_if_false",
    "raise_if_true",
    "raise_status",
]

_log = logging.getLogger("LLM_DATADIST")

# GE error-code base of the LLM module: codes are 0x5010B000 + n.
_LLM_BASE = 0x5010B000
_UINT32_MASK = 0xFFFFFFFF


class LLMStatusCode(IntEnum):
    """Result codes; ``str()`` gives ``"LLMStatusCode.NAME"`` like the reference."""

    LLM_SUCCESS = 0
    LLM_FAILED = 0xFFFFFFFF
    LLM_PARAM_INVALID = _LLM_BASE + 5
    LLM_WAIT_PROCESS_TIMEOUT = _LLM_BASE + 1
    LLM_KV_CACHE_NOT_EXIST = _LLM_BASE + 2
    LLM_REPEAT_REQUEST = _LLM_BASE + 3
    LLM_REQUEST_ALREADY_COMPLETED = _LLM_BASE + 4
    LLM_ENGINE_FINALIZED = _LLM_BASE + 6
    LLM_NOT_YET_LINK = _LLM_BASE + 7
    LLM_ALREADY_LINK = _LLM_BASE + 8
    LLM_LINK_FAILED = _LLM_BASE + 9
    LLM_UNLINK_FAILED = _LLM_BASE + 10
    LLM_NOTIFY_PROMPT_UNLINK_FAILED = _LLM_BASE + 11
    LLM_CLUSTER_NUM_EXCEED_LIMIT = _LLM_BASE + 12
    LLM_PROCESSING_LINK = _LLM_BASE + 13
    LLM_DEVICE_OUT_OF_MEMORY = _LLM_BASE + 14
    LLM_PREFIX_ALREADY_EXIST = _LLM_BASE + 15
    LLM_PREFIX_NOT_EXIST = _LLM_BASE + 16
    LLM_SEQ_LENOVERLIMIT = _LLM_BASE + 17
    LLM_NO_FREE_BLOCK = _LLM_BASE + 18
    LLM_BLOCKS_OUT_OF_MEMORY = _LLM_BASE + 19
    LLM_EXIST_LINK = _LLM_BASE + 24
    LLM_FEATURE_NOT_ENABLED = _LLM_BASE + 25
    LLM_TIMEOUT = _LLM_BASE + 26
    LLM_LINK_BUSY = _LLM_BASE + 27
    LLM_OUT_OF_MEMORY = _LLM_BASE + 28
    LLM_DEVICE_MEM_ERROR = 507053
    LLM_SUSPECT_REMOTE_ERROR = 507057
    LLM_UNKNOWN_ERROR = -1

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


# Every code the core may report; LLM_UNKNOWN_ERROR (-1) is Python-only and deliberately absent,
# so a raw -1 maps (as uint32 0xFFFFFFFF) to LLM_FAILED.
_CORE_CODES: dict[int, LLMStatusCode] = {
    int(code): code for code in LLMStatusCode if code is not LLMStatusCode.LLM_UNKNOWN_ERROR
}


def code_from_int(value: int) -> LLMStatusCode:
    """Map an integer code from the core to ``LLMStatusCode``; unknown codes give ``LLM_FAILED``.

    Negative values are read as their uint32 bit pattern (the core's codes are ``uint32_t``).
    """
    return _CORE_CODES.get(int(value) & _UINT32_MASK, LLMStatusCode.LLM_FAILED)


code_2_status = code_from_int
"""Alias under the reference package's name."""


class CacheLinkError(Exception):
    """Base of CacheLink's own errors; ``status_code`` tells the failure as an ``LLMStatusCode``."""

    def __init__(self, *args: object, status_code: LLMStatusCode = LLMStatusCode.LLM_FAILED) -> None:
        super().__init__(*args)
        self._status_code = status_code

    @property
    def status_code(self) -> LLMStatusCode:
        """The status code carried by this exception."""
        return self._status_code

    @property
    def code(self) -> LLMStatusCode:
        """Alias of ``status_code``."""
        return self._status_code


class LLMException(CacheLinkError, RuntimeError):
    """Error raised by the API; ``status_code`` tells the failure (``code`` is a CacheLink alias)."""

    def __init__(self, *args: object, status_code: LLMStatusCode = LLMStatusCode.LLM_SUCCESS) -> None:
        super().__init__(*args, status_code=status_code)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the status code across pickling (multiprocessing); the keyword would be lost otherwise.
        return (_rebuild_exception, (type(self), self.args, self._status_code))


def _rebuild_exception(
    cls: type[LLMException], args: tuple[object, ...], status_code: LLMStatusCode
) -> LLMException:
    return cls(*args, status_code=status_code)


class Status:
    """A status code with an ``is_ok()`` test."""

    def __init__(self, status: LLMStatusCode) -> None:
        self._status_code = status

    def is_ok(self) -> bool:
        """True when the code is ``LLM_SUCCESS``."""
        return self._status_code == LLMStatusCode.LLM_SUCCESS

    @property
    def status_code(self) -> LLMStatusCode:
        """The wrapped status code."""
        return self._status_code

    def __repr__(self) -> str:
        return f"Status({self._status_code})"


def _format(fmt: str, args: tuple[object, ...], kwargs: dict[str, object]) -> str:
    return fmt.format(*args, **kwargs) if args or kwargs else fmt


def raise_if_false(
    pred: object,
    fmt: str,
    *args: object,
    status_code: LLMStatusCode = LLMStatusCode.LLM_PARAM_INVALID,
    **kwargs: object,
) -> None:
    """Raise ``LLMException(fmt.format(*args), status_code)`` (logged) when ``pred`` is falsy."""
    if not pred:
        message = _format(fmt, args, kwargs)
        _log.error(message)
        raise LLMException(message, status_code=status_code)


def raise_if_true(
    pred: object,
    fmt: str,
    *args: object,
    status_code: LLMStatusCode = LLMStatusCode.LLM_PARAM_INVALID,
    **kwargs: object,
) -> None:
    """Raise ``LLMException`` (logged) when ``pred`` is truthy."""
    if pred:
        message = _format(fmt, args, kwargs)
        _log.error(message)
        raise LLMException(message, status_code=status_code)


def _func_tag(func_name: str) -> str:
    return func_name if func_name.startswith("[") else f"[{func_name}]"


def raise_status(func_name: str, code: LLMStatusCode, info: str) -> NoReturn:
    """Raise the reference's core-failure exception.

    Message: ``"[func] failed, error code is LLMStatusCode.X, <info>."``; ``func_name`` may be given
    with or without the brackets.
    """
    raise LLMException(f"{_func_tag(func_name)} failed, error code is {code}, {info}.", status_code=code)


def handle_llm_status(status: int, func_name: str, other_info: str) -> None:
    """Raise via ``raise_status`` when the raw core ``status`` is not success."""
    if int(status) != LLMStatusCode.LLM_SUCCESS:
        raise_status(func_name, code_from_int(status), other_info)
