"""A small GGUF reader: metadata parsed with ``struct``, tensor data viewed through one ``numpy.memmap``."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cachelink_inference.quants import tensor_nbytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types.
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NUMPY_SCALARS: dict[int, str] = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING = 8
_ARRAY = 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: ``shape`` in numpy order (outermost first), ggml type, byte range."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


class GGUFFile:
    """Parses a GGUF file's header once; ``raw(name)`` returns a tensor's bytes without copying."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._buf = memoryview(self._map)  # type: ignore[arg-type]
        self._pos = 0
        if bytes(self._buf[:4]) != GGUF_MAGIC:
            raise ValueError(f"{self.path} is not a GGUF file")
        self._pos = 4
        self.version = self._u32()
        if self.version < 2:
            raise ValueError(f"GGUF version {self.version} is not supported")
        n_tensors = self._u64()
        n_kv = self._u64()
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._u32())
        infos: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._u32()
            dims = struct.unpack_from(f"<{n_dims}Q", self._buf, self._pos)
            self._pos += 8 * n_dims
            ggml_type = self._u32()
            offset = self._u64()
            infos.append((name, tuple(reversed(dims)), ggml_type, offset))
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        self.data_start = (self._pos + alignment - 1) // alignment * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, offset in infos:
            nbytes = tensor_nbytes(ggml_type, shape)
            self.tensors[name] = TensorInfo(name, shape, ggml_type, self.data_start + offset, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes (uint8, read-only view of the file)."""
        info = self.tensors[name]
        return self._map[info.offset : info.offset + info.nbytes]

    def close(self) -> None:
        self._buf.release()
        mm = getattr(self._map, "_mmap", None)
        del self._map
        if mm is not None:
            mm.close()

    def _u32(self) -> int:
        (value,) = struct.unpack_from("<I", self._buf, self._pos)
        self._pos += 4
        return int(value)

    def _u64(self) -> int:
        (value,) = struct.unpack_from("<Q", self._buf, self._pos)
        self._pos += 8
        return int(value)

    def _string(self) -> str:
        length = self._u64()
        text = bytes(self._buf[self._pos : self._pos + length]).decode("utf-8", errors="surrogateescape")
        self._pos += length
        return text

    def _value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype]
            (value,) = struct.unpack_from(fmt, self._buf, self._pos)
            self._pos += struct.calcsize(fmt)
            return value
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            item_type = self._u32()
            count = self._u64()
            if item_type in _NUMPY_SCALARS:  # numeric arrays in one read
                dtype = np.dtype(_NUMPY_SCALARS[item_type])
                end = self._pos + count * dtype.itemsize
                array = np.frombuffer(self._buf[self._pos : end], dtype=dtype).copy()
                self._pos = end
                return array
            if item_type == _STRING:
                return self._string_array(count)
            return [self._value(item_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")

    def _string_array(self, count: int) -> list[str]:
        buf, pos = self._buf, self._pos
        unpack = struct.Struct("<Q").unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            (length,) = unpack(buf, pos)
            pos += 8
            append(bytes(buf[pos : pos + length]).decode("utf-8", errors="surrogateescape"))
            pos += length
        self._pos = pos
        return out
