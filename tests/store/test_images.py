import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from plankton_cli.store.images import MAX_SIDE, ImageError, _chunk, check, decode, encode_png, pixel_hash


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (30, 1), (1, 30), (17, 19, 3), (4, 4, 4), (9, 3, 2)])
def test_png_encoder_is_lossless_for_pillow(shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels)))), pixels)


def test_check_hashes_pixels_whatever_the_encoding():
    pixels = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=9)
    from_file, from_array = check(buf.getvalue()), check(pixels)
    assert from_file.data == buf.getvalue()  # encoded sources are kept byte for byte
    assert from_file.content_hash == from_array.content_hash == pixel_hash(pixels)
    assert np.array_equal(decode(from_array.data), pixels)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n broken", b"not an image at all"])
def test_bad_bytes_are_image_errors(data):
    with pytest.raises(ImageError):
        check(data)


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped():
    wide = np.array([[0, 257, 1000, 30000, 65535]], np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")  # really a 16-bit file
    expected = np.array([[0, 1, 4, 117, 255]], np.uint8)  # round(v * 255 / 65535)
    assert np.array_equal(decode(check(buf.getvalue()).data), expected)
    from plankton_cli.prepare.data.transforms import decode_gray  # training decodes it the same way

    assert np.array_equal(np.asarray(decode_gray(buf.getvalue())), expected)


def test_a_20000_x_20000_image_is_rejected_from_its_header():
    """The header of a real 20000 x 20000 grey PNG; it is refused before a single pixel is decoded."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 20001))
    with pytest.raises(ImageError, match=r"image too large: 20000 x 20000 pixels .* at most 10,000 pixels a side"):
        check(png)
    with pytest.raises(ImageError, match="too large"):
        check(np.zeros((1, MAX_SIDE + 1), np.uint8))  # a thin strip would pad to a huge square
    assert check(np.zeros((1, MAX_SIDE), np.uint8)).width == MAX_SIDE
