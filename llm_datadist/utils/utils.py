"""Argument checks shared by the API; errors and messages follow the reference package.

* wrong type -> ``TypeError("<name> only support ['int'], but got <class 'str'>.")``
* integer outside its C width -> ``ValueError("<name>'s value is out of range,<v> is not a uint64 value.")``
* semantic rule -> ``LLMException(..., status_code=LLM_PARAM_INVALID)``

``bool`` is never accepted where ``int`` is asked for (only where ``bool`` itself is listed).
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from llm_datadist.status import LLMStatusCode, raise_if_false

__all__ = [
    "check_dict",
    "check_inner",
    "check_int32",
    "check_int64",
    "check_int_list",
    "check_isinstance",
    "check_list_int32",
    "check_list_int64",
    "check_list_uint64",
    "check_param",
    "check_positive_or_set_default",
    "check_range",
    "check_uint8",
    "check_uint16",
    "check_uint32",
    "check_uint64",
]

_T = TypeVar("_T")

MAX_UINT8 = 2**8 - 1
MAX_UINT16 = 2**16 - 1
MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1
MIN_INT32, MAX_INT32 = -(2**31), 2**31 - 1
MIN_INT64, MAX_INT64 = -(2**63), 2**63 - 1

TypeSpec = type | Sequence[type]


def _is_a(value: object, cls: type) -> bool:
    # bool is an int subclass, but an int parameter must not take True/False.
    if isinstance(value, bool) and cls is int:
        return False
    return isinstance(value, cls)


def _as_list(types: TypeSpec) -> list[type]:
    return [types] if isinstance(types, type) else list(types)


def check_inner(name: str, values: Iterable[object], inner: type) -> None:
    """TypeError unless every element of ``values`` is an ``inner``."""
    for value in values:
        if not _is_a(value, inner):
            raise TypeError(f"{name} inner type only support {[inner]}, but got {type(value)}.")


def check_isinstance(
    name: str,
    value: _T,
    types: TypeSpec,
    *,
    allow_none: bool = False,
    inner: type | None = None,
    extra_fmt: str = "",
) -> _T:
    """Return ``value`` if it is one of ``types`` (its elements ``inner`` if given), else TypeError.

    ``None`` passes only with ``allow_none=True`` (the reference's default is True; here it is False,
    so callers say it where the reference lets ``None`` through). ``extra_fmt`` prefixes the message.
    """
    if value is None and allow_none:
        return value
    classes = _as_list(types)
    for cls in classes:
        if _is_a(value, cls):
            if inner is not None:
                check_inner(name, value, inner)  # type: ignore[arg-type]
            return value
    raise TypeError(
        f"{extra_fmt}{name} only support {[cls.__name__ for cls in classes]}, but got {type(value)}."
    )


def check_dict(
    name: str,
    value: dict[Any, Any],
    key_type: type,
    value_type: type,
    value_inner: type | None = None,
) -> None:
    """TypeError unless all keys are ``key_type`` and values ``value_type`` (elements ``value_inner``)."""
    for key, item in value.items():
        if not _is_a(key, key_type):
            raise TypeError(f"{name} dict key only support {key_type}, but got {type(key)}.")
        if not _is_a(item, value_type):
            raise TypeError(f"{name} dict value only support {value_type}, but got {type(item)}.")
        if value_inner is not None:
            check_inner("dict value", item, value_inner)


def _check_width(name: str, value: object, low: int, high: int, width: str) -> None:
    check_isinstance(name, value, int)
    assert isinstance(value, int)
    if value < low or value > high:
        raise ValueError(f"{name}'s value is out of range,{value} is not a {width} value.")


def check_uint8(name: str, value: object) -> None:
    """TypeError unless an int, ValueError unless in [0, 2**8)."""
    _check_width(name, value, 0, MAX_UINT8, "uint8")


def check_uint16(name: str, value: object) -> None:
    """TypeError unless an int, ValueError unless in [0, 2**16)."""
    _check_width(name, value, 0, MAX_UINT16, "uint16")


def check_uint32(name: str, value: object) -> None:
    """TypeError unless an int, ValueError unless in [0, 2**32)."""
    _check_width(name, value, 0, MAX_UINT32, "uint32")


def check_uint64(name: str, value: object) -> None:
    """TypeError unless an int, ValueError unless in [0, 2**64)."""
    _check_width(name, value, 0, MAX_UINT64, "uint64")


def check_int32(name: str, value: object) -> None:
    """TypeError unless an int, ValueError unless in [-2**31, 2**31)."""
    _check_width(name, value, MIN_INT32, MAX_INT32, "int32")


def check_int64(name: str, value: object) -> None:
    """TypeError unless an int, ValueError unless in [-2**63, 2**63)."""
    _check_width(name, value, MIN_INT64, MAX_INT64, "int64")


def check_list_int32(name: str, values: Iterable[object]) -> None:
    """``check_int32`` on each element."""
    for value in values:
        check_int32(name, value)


def check_list_int64(name: str, values: Iterable[object]) -> None:
    """``check_int64`` on each element."""
    for value in values:
        check_int64(name, value)


def check_list_uint64(name: str, values: Iterable[object]) -> None:
    """``check_uint64`` on each element."""
    for value in values:
        check_uint64(name, value)


def check_int_list(
    name: str,
    values: object,
    checker: Callable[[str, object], None],
    *,
    allow_none: bool = False,
) -> None:
    """TypeError unless a list/tuple of ints; then ``checker(name, element)`` on each element."""
    check_isinstance(name, values, [list, tuple], allow_none=allow_none, inner=int)
    if values is None:
        return
    assert isinstance(values, list | tuple)
    for value in values:
        checker(name, value)


def check_positive_or_set_default(name: str, value: int | None, default: int = -1) -> int:
    """``default`` for None; else an int64 that must be >= 0 (ValueError)."""
    if value is None:
        return default
    check_int64(name, value)
    if value < 0:
        raise ValueError(f"{name}'s value:{value} is invalid, should be >= 0")
    return value


def check_param(cond: object, message: str, *args: object) -> None:
    """``LLMException(message.format(*args), status_code=LLM_PARAM_INVALID)`` unless ``cond``."""
    raise_if_false(cond, message, *args, status_code=LLMStatusCode.LLM_PARAM_INVALID)


def check_range(name: str, value: object, *, require_increasing: bool, allow_none: bool = False) -> None:
    """Check a layer range: a ``range`` (TypeError) with step 1 (LLMException).

    With ``require_increasing`` also ``0 <= start < stop`` (LLMException). ``None`` passes only with
    ``allow_none``.
    """
    if value is None and allow_none:
        return
    check_isinstance(name, value, range)
    assert isinstance(value, range)
    check_param(value.step == 1, f"check {name}.step == 1 failed")
    if require_increasing:
        check_param(
            0 <= value.start < value.stop,
            "check 0 <= range.start < range.stop failed, {0} = {1}",
            name,
            value,
        )
