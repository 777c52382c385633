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


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_to_uint8_is_the_documented_formula_with_nan_as_0(dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 3, 5, 6)) * 0.8).astype(dtype)
    x.flat[:3] = [np.nan, np.inf, -np.inf]
    expected = np.clip(np.rint((x.astype(np.float64) + 1) * 127.5), 0, 255)
    expected = np.nan_to_num(expected, nan=0.0).astype(np.uint8).transpose(0, 2, 3, 1)
    out = to_uint8(x)
    assert out.flags.c_contiguous and out[0, 0, :3, 0].tolist() == [0, 255, 0]
    # float16 rounds (x + 1) * 127.5 in half precision: at most one level off.
    tolerance = 1 if dtype is np.float16 else 0
    assert np.abs(out.astype(int) - expected).max() <= tolerance


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
