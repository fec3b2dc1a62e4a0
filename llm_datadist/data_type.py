"""Tensor element types (GE ``DataType`` values) and their numpy equivalents."""

import importlib
from enum import Enum

import numpy

from llm_datadist.status import LLMException, LLMStatusCode

__all__ = ["DataType", "itemsize", "numpy_dtype"]


class DataType(Enum):
    """Element type of a cache tensor; values are GE's ``ge::DataType`` numbers."""

    DT_FLOAT = 0
    DT_FLOAT16 = 1
    DT_BF16 = 27
    DT_INT8 = 2
    DT_INT16 = 6
    DT_UINT16 = 7
    DT_UINT8 = 4
    DT_INT32 = 3
    DT_INT64 = 9
    DT_UINT32 = 8
    DT_UINT64 = 10
    DT_BOOL = 12
    DT_DOUBLE = 11
    DT_STRING = 13


_ITEMSIZE: dict[DataType, int] = {
    DataType.DT_FLOAT: 4,
    DataType.DT_FLOAT16: 2,
    DataType.DT_BF16: 2,
    DataType.DT_INT8: 1,
    DataType.DT_INT16: 2,
    DataType.DT_UINT16: 2,
    DataType.DT_UINT8: 1,
    DataType.DT_INT32: 4,
    DataType.DT_INT64: 8,
    DataType.DT_UINT32: 4,
    DataType.DT_UINT64: 8,
    DataType.DT_BOOL: 1,
    DataType.DT_DOUBLE: 8,
}

_NUMPY: dict[DataType, type[numpy.generic]] = {
    DataType.DT_FLOAT: numpy.float32,
    DataType.DT_FLOAT16: numpy.float16,
    DataType.DT_INT8: numpy.int8,
    DataType.DT_INT16: numpy.int16,
    DataType.DT_UINT16: numpy.uint16,
    DataType.DT_UINT8: numpy.uint8,
    DataType.DT_INT32: numpy.int32,
    DataType.DT_INT64: numpy.int64,
    DataType.DT_UINT32: numpy.uint32,
    DataType.DT_UINT64: numpy.uint64,
    DataType.DT_BOOL: numpy.bool_,
    DataType.DT_DOUBLE: numpy.float64,
}


def _no_fixed_size(data_type: DataType) -> LLMException:
    return LLMException(
        f"data_type {data_type} has no fixed element size", status_code=LLMStatusCode.LLM_PARAM_INVALID
    )


def itemsize(data_type: DataType) -> int:
    """Bytes per element; ``DT_STRING`` has none and raises ``LLMException(LLM_PARAM_INVALID)``."""
    size = _ITEMSIZE.get(data_type)
    if size is None:
        raise _no_fixed_size(data_type)
    return size


def _bfloat16() -> numpy.dtype[numpy.generic]:
    try:
        module = importlib.import_module("ml_dtypes")
    except ImportError:
        return numpy.dtype(numpy.uint16)
    bfloat16: numpy.dtype[numpy.generic] = numpy.dtype(module.bfloat16)
    return bfloat16


def numpy_dtype(data_type: DataType) -> numpy.dtype[numpy.generic]:
    """numpy dtype viewing one element of ``data_type``.

    ``DT_BF16`` is ``ml_dtypes.bfloat16`` when that package is importable, else raw ``uint16`` bits;
    ``DT_STRING`` cannot be viewed and raises ``LLMException(LLM_PARAM_INVALID)``.
    """
    if data_type is DataType.DT_BF16:
        return _bfloat16()
    scalar = _NUMPY.get(data_type)
    if scalar is None:
        raise _no_fixed_size(data_type)
    return numpy.dtype(scalar)
