import io

import numpy as np
import pytest
from PIL import Image

from fake_pixelsail import png_header_only
from pixelsail.imageio import ImageInputError, load_image


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_png_file_round_trips(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(load_image(str(p)), arr)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 0, 0, 255)    # opaque red stays red
    rgba[0, 1] = (0, 0, 0, 0)        # fully transparent -> white
    rgba[1, 0] = (0, 0, 0, 128)      # half black over white -> 255 * (1 - 128/255) = 127
    out = load_image(Image.fromarray(rgba, "RGBA"))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert tuple(out[1, 0]) == (127, 127, 127)
    np.testing.assert_array_equal(load_image(rgba), out)


def test_grayscale_palette_and_cmyk():
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], np.uint8), "L")
    out = load_image(gray)
    assert out.shape == (2, 2, 3) and tuple(out[1, 0]) == (200, 200, 200)
    pal = Image.fromarray(np.full((3, 3, 3), (10, 20, 30), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(load_image(pal)[1, 1]) == (10, 20, 30)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))  # no ink -> white
    assert tuple(load_image(_png_bytes(cmyk, "JPEG", quality=100))[0, 0]) == (255, 255, 255)


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    arr16 = np.array([[0, 257 * 100], [65535, 257 * 3]], np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr16).save(p)
    out = load_image(p)
    assert out[..., 0].tolist() == [[0, 100], [255, 3]]
    assert load_image(arr16)[..., 2].tolist() == [[0, 100], [255, 3]]


def test_float_and_bool_arrays():
    f = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)
    assert load_image(f)[..., 0].tolist() == [[0, 128], [255, 51]]
    b = np.array([[True, False]])
    assert load_image(b)[0, :, 1].tolist() == [255, 0]


def test_exif_orientation_is_applied():
    arr = np.zeros((2, 4, 3), np.uint8)  # landscape 4 wide, 2 high
    arr[0, 0] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _png_bytes(img, "PNG", exif=exif)
    out = load_image(data)
    assert out.shape == (4, 2, 3)
    assert out[0, 1].tolist() == [255, 255, 255]  # rotating 90 CW moves the top-left pixel to the top-right
    assert out.sum() == 255 * 3


@pytest.mark.parametrize("source, message", [
    ("/nonexistent/x.png", "image file not found"),
    (b"", "empty image data"),
    (b"this is plainly not an image", "not an image"),
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.zeros((3, 16, 16), np.uint8), "channels-first"),
    (np.zeros((4, 4, 2), np.uint8), "expected (H, W)"),
    (np.full((2, 2), 1.5, np.float32), "must be in [0, 1]"),
    (np.full((2, 2), np.nan, np.float32), "NaN"),
    (np.zeros((2, 2), np.complex64), "unsupported dtype"),
    (12345, "cannot read an image from a int"),
])
def test_bad_inputs_have_clear_messages(source, message):
    with pytest.raises(ImageInputError) as ei:
        load_image(source)
    assert message in str(ei.value)


def test_truncated_png_is_reported(tmp_path):
    data = _png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(p)


def test_pixel_cap_is_checked_before_decoding():
    data = _png_bytes(Image.new("1", (5000, 4000)))
    with pytest.raises(ImageInputError, match=r"too large: 5000x4000 = 20,000,000 pixels, the limit is 16,777,216"):
        load_image(data)
    with pytest.raises(ImageInputError, match="too large to decode safely"):
        load_image(png_header_only(100_000, 100_000))
    with pytest.raises(ImageInputError, match="limit is 15"):
        load_image(np.zeros((4, 4, 3), np.uint8), max_pixels=15)
    assert load_image(np.zeros((4, 4, 3), np.uint8), max_pixels=16).shape == (4, 4, 3)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "I", "I;16", "F", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"])
def test_every_pil_mode_becomes_rgb_uint8(mode):
    out = load_image(Image.new(mode, (3, 2)))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
