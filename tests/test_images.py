"""Odd but legitimate photos embed like their plain RGB twins; broken files are refused with a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_search.errors import InvalidImageError
from clip_search.images import decode_image
from tests.conftest import shared_data

LIMIT = 89_478_485


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    path = sorted((shared_data("coco-mini") / "val2017").glob("*.jpg"))[3]
    return Image.open(path).convert("RGB")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _cos(engine, a: Image.Image, b: Image.Image) -> float:
    va, vb = engine.encoder.encode_images([a, b])
    return float(va @ vb)


def _embed_bytes(engine, data: bytes) -> np.ndarray:
    return engine.encoder.encode_images([engine.decode(data).image])[0]


def test_greyscale_is_embedded_as_grey_rgb(engine, photo):
    grey = photo.convert("L")
    vec = _embed_bytes(engine, _png(grey))
    ref = engine.encoder.encode_images([grey.convert("RGB")])[0]
    assert float(vec @ ref) > 0.9999


def test_rgba_is_flattened_onto_white(engine, photo):
    rgba = photo.convert("RGBA")
    alpha = Image.new("L", photo.size, 255)
    alpha.paste(0, (0, 0, photo.width // 2, photo.height))  # left half fully transparent
    rgba.putalpha(alpha)
    decoded = decode_image(_png(rgba), max_pixels=LIMIT).image
    assert decoded.mode == "RGB"
    assert decoded.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.getpixel((photo.width - 5, 5)) == photo.getpixel((photo.width - 5, 5))


def test_cmyk_jpeg_embeds_like_its_rgb_original(engine, photo):
    buf = io.BytesIO()
    photo.convert("CMYK").save(buf, format="JPEG", quality=95)
    decoded = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert decoded.format == "JPEG"
    assert decoded.image.mode == "RGB"
    diff = np.abs(np.asarray(decoded.image, dtype=int) - np.asarray(photo, dtype=int)).mean()
    assert diff < 8, f"CMYK colours came back wrong (mean abs diff {diff:.1f})"
    assert _cos(engine, decoded.image, photo) > 0.995


def test_16_bit_png_is_scaled_not_clipped(engine, photo):
    grey8 = np.asarray(photo.convert("L"), dtype=np.uint16)
    grey16 = Image.fromarray(grey8 * 257)  # uint16 -> mode I;16
    data = _png(grey16)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    decoded = decode_image(data, max_pixels=LIMIT).image
    np.testing.assert_array_equal(np.asarray(decoded)[..., 0], grey8)
    assert _cos(engine, decoded, photo.convert("L").convert("RGB")) > 0.9999


def test_exif_rotated_photo_is_turned_upright(engine, photo):
    # A camera held sideways stores the pixels rotated and says so in the EXIF orientation tag (6 = rotate 90 CW).
    stored = photo.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == photo.size
    assert decoded.image.size == photo.size
    upright = _cos(engine, decoded.image, photo)
    sideways = _cos(engine, stored, photo)
    assert upright > 0.995
    assert upright > sideways


def test_palette_gif_first_frame(photo):
    frames = [photo.resize((64, 48)), Image.new("RGB", (64, 48), "red")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert decoded.frames == 2
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((10, 10)) != (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"hello, I am a text file pretending to be a JPEG\n", "not a supported image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "damaged PNG file"),
    ],
)
def test_non_images_are_refused_with_a_reason(data: bytes, message: str):
    with pytest.raises(InvalidImageError, match=message):
        decode_image(data, max_pixels=LIMIT)


def _bad_crc_png() -> bytes:
    data = bytearray(_png(Image.new("RGB", (20, 20), "red")))
    data[29] ^= 0xFF  # the IHDR chunk's checksum
    return bytes(data)


def _zero_size_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = b"\x00\x00\x00\x00"  # height and width 0
    return bytes(data)


def _huge_text_chunk_png() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 20 * 2**20, zip=True)  # compresses to ~20 KB, beyond Pillow's text limit
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_bad_crc_png, "^damaged PNG file: it starts like one but cannot be read$"),
        (_zero_size_jpeg, "^damaged JPEG file"),
        (_huge_text_chunk_png, "^unreadable image: its metadata is too large$"),
    ],
)
def test_damaged_photos_are_called_damaged_in_plain_words(make, message: str):
    """A photo that broke on the way is not "not an image", and Pillow's internal wording is not shown."""
    with pytest.raises(InvalidImageError, match=message):
        decode_image(make(), max_pixels=LIMIT, formats=("JPEG", "PNG", "WEBP", "HEIF"))


def test_truncated_jpeg_is_refused(photo):
    buf = io.BytesIO()
    photo.save(buf, format="JPEG")
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], max_pixels=LIMIT)


def test_too_many_pixels_refused_from_the_header():
    buf = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buf, format="PNG")
    with pytest.raises(InvalidImageError, match="too large: 4000x3000"):
        decode_image(buf.getvalue(), max_pixels=10_000_000)


def test_draft_decoding_keeps_enough_pixels(tmp_path: Path, photo):
    buf = io.BytesIO()
    photo.resize((1600, 1200)).save(buf, format="JPEG")
    decoded = decode_image(buf.getvalue(), max_pixels=LIMIT, draft_side=448)
    assert (decoded.width, decoded.height) == (1600, 1200)  # the original's size is reported
    assert min(decoded.image.size) >= 448
    assert decoded.image.size[0] < 1600
