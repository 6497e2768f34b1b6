"""Read and write IDX files (the MNIST container format), raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions ``d``, then ``d`` big-endian
uint32 sizes, then the data in C order, big-endian. Compression is detected from the gzip
magic bytes, not the file name.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from compressor.errors import UsageError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> numpy dtype (big-endian, as stored).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {dt.newbyteorder("=").str: code for code, dt in IDX_DTYPES.items()}


class IdxFormatError(UsageError):
    """The bytes are not a well-formed IDX file."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's payload: decompressed if it is gzip, as-is otherwise."""
    data = Path(path).read_bytes()
    if data[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise IdxFormatError(f"{path}: corrupt gzip stream ({exc}); reinstall the file") from exc
    return data


def parse_idx(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an (uncompressed) IDX payload into an array in native byte order."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0:
        raise IdxFormatError(f"{source}: not an IDX file (bad magic {payload[:4].hex() or 'empty'})")
    code, ndim = payload[2], payload[3]
    if code not in IDX_DTYPES:
        raise IdxFormatError(f"{source}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise IdxFormatError(f"{source}: truncated IDX header ({len(payload)} bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", payload[4:header])
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        raise IdxFormatError(
            f"{source}: IDX size mismatch: header says shape {shape} ({expected} bytes), file has {len(payload)} bytes"
        )
    array = np.frombuffer(payload, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-byte-order numpy array."""
    return parse_idx(read_bytes(path), os.fspath(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX payload for ``array`` (dtype one of uint8, int8, int16, int32, float32, float64)."""
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str
    if key not in _DTYPE_CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    code = _DTYPE_CODES[key]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed if ``compress``; returns the path."""
    payload = encode_idx(array)
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path
