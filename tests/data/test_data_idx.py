"""The IDX reader: raw and gzip files written here, every type code, malformed input."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from compressor.data.idx import IdxFormatError, encode_idx, parse_idx, read_idx, write_idx
from compressor.errors import UsageError


def handmade_idx(images: np.ndarray) -> bytes:
    """An ubyte IDX payload built from the format description, independent of encode_idx."""
    return bytes([0, 0, 0x08, images.ndim]) + struct.pack(">" + "I" * images.ndim, *images.shape) + images.tobytes()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_reads_handmade_ubyte_files_raw_and_gzip(tmp_path, compressed):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    payload = handmade_idx(images)
    # The name says nothing: compression must be detected from the content.
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_write_then_read_round_trips_every_type(tmp_path, dtype, compressed):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, compress=compressed)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype), "values come back in native byte order"
    np.testing.assert_array_equal(out, array)


def test_labels_file_is_one_dimensional(tmp_path):
    labels = np.array([9, 0, 0, 3], dtype=np.uint8)
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + labels.tobytes())
    np.testing.assert_array_equal(read_idx(path), labels)


def test_integers_are_big_endian_on_disk():
    assert encode_idx(np.array([1], dtype=np.int32))[-4:] == b"\x00\x00\x00\x01"


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"", "not an IDX file"),
        (b"\x01\x00\x08\x01", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "IDX size mismatch"),
    ],
    ids=["empty", "bad-magic", "bad-type", "short-header", "short-data"],
)
def test_malformed_payloads_are_usage_errors(payload, message):
    with pytest.raises(IdxFormatError, match=message) as info:
        parse_idx(payload)
    assert isinstance(info.value, UsageError)


def test_corrupt_gzip_is_reported(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros(100, np.uint8)))[:20])
    with pytest.raises(IdxFormatError, match="corrupt gzip"):
        read_idx(path)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        dtype=hypothesis.strategies.sampled_from([np.dtype(t) for t in ("u1", "i1", ">i2", "<i4", "<f4", ">f8")]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_encode_parse_round_trip_property(array):
    """For any array of a storable dtype and shape, parse(encode(a)) == a bit for bit."""
    out = parse_idx(encode_idx(array))
    assert out.shape == array.shape and out.dtype == array.dtype.newbyteorder("=")
    assert out.tobytes() == array.astype(out.dtype).tobytes()
