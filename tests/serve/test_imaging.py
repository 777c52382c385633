"""Post-processing from generator output to image bytes, shared by every backend."""

from __future__ import annotations

import numpy as np
import pytest

from ganserve.serve.imaging import Encoding, decode, encode, to_uint8


def test_to_uint8_maps_range_ends_and_midpoint() -> None:
    x = np.array([-1.0, 0.0, 1.0, -5.0, 5.0], dtype=np.float32).reshape(1, 1, 1, 5)
    assert to_uint8(x).ravel().tolist() == [0, 128, 255, 0, 255]


def test_to_uint8_transposes_nchw_to_nhwc() -> None:
    x = np.zeros((2, 3, 4, 5), dtype=np.float32)
    x[1, 2, 3, 4] = 1.0
    out = to_uint8(x)
    assert out.shape == (2, 4, 5, 3) and out[1, 3, 4, 2] == 255


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("encoding", list(Encoding))
def test_encode_decode_round_trip(channels: int, encoding: Encoding) -> None:
    image = np.random.RandomState(0).randint(0, 256, (6, 5, channels)).astype(np.uint8)
    data = encode(image, encoding)
    np.testing.assert_array_equal(decode(data, encoding, 6, 5, channels), image)


def test_png_bytes_are_deterministic() -> None:
    image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    assert encode(image, Encoding.PNG) == encode(image.copy(), Encoding.PNG)


def test_raw_decode_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="expected 12"):
        decode(b"\0" * 11, Encoding.RAW_UINT8, 2, 2, 3)
