import io

import numpy as np
import pytest
from PIL import Image

from plankton_cli.store.images import ImageError, check, decode, encode_png, pixel_hash


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
