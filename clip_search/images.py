"""Turn bytes into an upright RGB picture, or refuse them with a reason a person can read.

Every path into the index (ingest, upload, search by image) decodes through :func:`decode_image`, so a photo
embeds the same way whichever door it came in by: EXIF orientation applied, alpha flattened onto white,
16-bit and CMYK pixels mapped to 8-bit RGB, animations reduced to their first frame.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clip_search.errors import InvalidImageError

log = logging.getLogger(__name__)

# PIL format name -> (file extension, Content-Type) for formats every browser displays.
WEB_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("jpg", "image/jpeg"),
    "MPO": ("jpg", "image/jpeg"),  # camera multi-picture JPEGs are plain JPEGs to a browser
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
}
CONTENT_TYPES = {ext: ctype for ext, ctype in WEB_FORMATS.values()}

_heif_registered = False


def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF when pillow-heif is installed (phone photos)."""
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # optional
        return
    register_heif_opener()


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image plus facts about the original it came from."""

    image: Image.Image  # RGB, oriented; may be smaller than the original when decoded in draft mode
    format: str  # Pillow's name of the source format, taken from the bytes ("JPEG", "PNG"...)
    width: int  # of the original, after orientation
    height: int
    frames: int = 1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        elif mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 0..65535 -> 0..255
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # 2-D uint8 -> mode L
        return grey.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    formats: list[str] | tuple[str, ...] | None = None,
    draft_side: int | None = None,
) -> DecodedImage:
    """Decode ``data`` into an upright RGB image, or raise :class:`InvalidImageError` saying why.

    ``formats`` restricts which decoders Pillow may try (the format is always taken from the bytes);
    ``max_pixels`` is checked from the header, before any pixel is decoded, so a decompression bomb costs nothing;
    ``draft_side`` lets JPEG decode at a reduced scale that is still at least that many pixels on each side.
    """
    img = open_image(data, max_pixels=max_pixels, formats=formats)
    source_format = img.format or "unknown"
    width, height = img.size
    frames = getattr(img, "n_frames", 1)
    try:
        if draft_side and source_format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_side, draft_side))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size was checked above
            img.load()
        oriented = ImageOps.exif_transpose(img)
        rgb = _to_rgb(oriented)
        rgb.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or exc.__class__.__name__
        if "truncated" in reason.lower():
            raise InvalidImageError("truncated image: the file ends before the picture does") from None
        raise InvalidImageError(f"corrupt image data: {reason}") from None
    if oriented.size != img.size:  # rotated by 90/270 degrees: the original's sides swap too
        width, height = height, width
    return DecodedImage(image=rgb, format=source_format, width=width, height=height, frames=frames)


def open_image(data: bytes, *, max_pixels: int, formats: list[str] | tuple[str, ...] | None = None) -> Image.Image:
    """Read only the header: the format (from the bytes) and the size, checked against ``formats`` and
    ``max_pixels``; no pixel is decoded. Raises :class:`InvalidImageError` saying why an image is refused."""
    if not data:
        raise InvalidImageError("empty file (0 bytes)")
    _register_heif()
    try:
        with warnings.catch_warnings():
            # Our own, lower limit is checked below from the header, with the image's size in the message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
    except UnidentifiedImageError:
        looks_like = sniff_format(data)
        if looks_like and (not formats or looks_like in formats):
            raise InvalidImageError(f"damaged {looks_like} file: it starts like one but cannot be read") from None
        allowed = f" (accepted: {', '.join(formats)})" if formats else ""
        raise InvalidImageError(f"not a supported image format{allowed}") from None
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's limit: refused at open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
        raise InvalidImageError(f"image too large: {size} (limit {max_pixels / 1e6:.1f})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        log.info("unreadable image: %s", exc)  # Pillow's wording is for developers: the log keeps it
        if "too large" in str(exc).lower():  # a huge text (zTXt/iTXt) or ICC chunk
            raise InvalidImageError("unreadable image: its metadata is too large") from None
        raise InvalidImageError(f"damaged {sniff_format(data) or 'image'} file: it cannot be read") from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"image too large: {width}x{height} is {width * height / 1e6:.1f} megapixels (limit {max_pixels / 1e6:.1f})"
        )
    return img


_MAGIC = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (8, b"WEBP", "WEBP"),
    (0, b"GIF8", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (4, b"ftypheic", "HEIF"),
    (4, b"ftypheix", "HEIF"),
    (4, b"ftypmif1", "HEIF"),
)


def sniff_format(data: bytes) -> str | None:
    """The format the first bytes announce, so a damaged photo is called damaged, not "not an image"."""
    for offset, magic, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def model_draft_side(input_size: int) -> int:
    """How small a JPEG may decode (DCT scaling, ~4x faster) for a model that sees ``input_size`` pixels:
    twice that, so the final resize still has more detail than the model resolves. One rule for every path
    into the model, so the same photo embeds the same way from ingest, upload, search and evaluation."""
    return 2 * int(input_size)


def encode_web_copy(
    image: Image.Image, *, max_side: int = 0, quality: int = 90, lossless: bool = False
) -> tuple[bytes, str, str]:
    """Re-encode pixels for the browser with no metadata at all (no EXIF, GPS, ICC, XMP, text chunks).

    JPEG, or PNG when ``lossless`` (the source was lossless: screenshots, drawings). The same pixels always give
    the same bytes, so the hash of a copy identifies its pixels. Returns (bytes, extension, content type);
    ``max_side`` > 0 shrinks the longer side to at most that.
    """
    img = image.convert("RGB")
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    clean = Image.frombytes("RGB", img.size, img.tobytes())  # pixels only: nothing of img.info survives
    buf = io.BytesIO()
    if lossless:
        clean.save(buf, format="PNG", optimize=False, compress_level=6)
        return buf.getvalue(), "png", "image/png"
    clean.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue(), "jpg", "image/jpeg"


def web_format(source_format: str) -> tuple[str, str] | None:
    """(extension, content type) when the original bytes can go to a browser as they are, else None."""
    return WEB_FORMATS.get(source_format)
