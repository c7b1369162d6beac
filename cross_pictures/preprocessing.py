"""Pure preprocessing: upload bytes -> normalized float32 tensor. All Pillow knowledge is here."""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import math
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, TiffImagePlugin, UnidentifiedImageError, features

from cross_pictures.errors import ImageTooLarge, InvalidImage, UnsupportedFormat

INPUT_SIZE = 224
RESIZE_SHORTER = 256

# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling) only while its shorter side stays at
# least twice RESIZE_SHORTER, so the antialiased resize still has ample resolution to work from.
_DRAFT_MIN_SIDE = 2 * RESIZE_SHORTER

# Up to this size (aspect ratios to 16:1) the resized image is built whole, which reproduces the
# reference pipeline bit for bit; beyond it only the kept 224x224 is computed.
_MAX_RESIZED_PIXELS = 16 * RESIZE_SHORTER * RESIZE_SHORTER

# libjpeg-turbo's advice for untrusted JPEGs is a scan limit of at most 500; 1.6 MB with 50,000
# empty scans took ~30 s to decode here.
MAX_JPEG_SCANS = 256

_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])
# (x / 255 - mean) / std == x * scale + offset: one multiply and one add per element.
_SCALE = (1.0 / (255.0 * _STD)).astype(np.float32).reshape(3, 1, 1)
_OFFSET = (-_MEAN / _STD).astype(np.float32).reshape(3, 1, 1)

# What browsers, phones and cameras produce. Pillow can open more (EPS runs Ghostscript, PSD, ICO,
# JPEG 2000, ...); an allow-list keeps every other parser away from untrusted bytes. (Multi-picture
# phone JPEGs come back from the JPEG opener with format "MPO".)
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
_SUPPORTED = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF"

# Everything Pillow and its codecs raise for bytes they cannot decode (RuntimeError: the AVIF
# decoder); any other exception is a bug and must stay a 500.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    RuntimeError,
    struct.error,
    zlib.error,
)

_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Modes the bilinear resize handles as-is (alpha is premultiplied by Pillow while resizing).
_RESIZABLE_MODES = frozenset({"RGB", "L", "RGBA", "LA", "I", "F"})
_TO_RGB_MODES = frozenset({"RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

_Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """The model input for one upload, plus what the caller may want to report about it."""

    tensor: npt.NDArray[np.float32]
    width: int
    height: int
    format: str


@functools.cache
def register_optional_formats() -> None:
    """Register pillow-heif's HEIF opener with Pillow, once; without the package HEIC gets a 415."""
    Image.init()  # all of Pillow's own openers, so the allow-list can be checked against them
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    # Only the primary image is ever decoded; skip parsing the extras.
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def warm_up_jpeg(size: tuple[int, int] = (500, 375)) -> bytes:
    """A synthetic photo-sized JPEG. Decoding it once at start-up pays Pillow's one-time costs
    (plugin imports, codec set-up: ~90 ms here) so that the first real upload does not."""
    ramp = np.linspace(0, 255, size[0], dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (size[1], 1))] * 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def prepare_image(data: bytes, *, max_pixels: int, draft: bool = True) -> PreparedImage:
    """Decode an upload and turn it into the normalized (3, 224, 224) ImageNet input."""
    if not data:
        raise InvalidImage("The upload is empty (0 bytes); send the image file's contents.")
    register_optional_formats()
    with _quiet_pillow(), _open(data, max_pixels) as img:
        image_format = img.format or "unknown"
        _check_pixels(img.size, max_pixels)
        if image_format in ("JPEG", "MPO"):
            _check_jpeg_scans(data)
        full_size = img.size
        extent = _draft(img) if draft and image_format in ("JPEG", "MPO") else None
        with _decoding(max_pixels):
            img.load()
        _check_pixels(img.size, max_pixels)  # a decoder may settle on a size only now (HEIF)
        if extent is None:
            # Without draft the decoded size is authoritative (libheif may crop while decoding).
            full_size = img.size
            extent = (0.0, 0.0, float(img.width), float(img.height))
        value_range = _value_range(img)
        image, full_size, extent = _apply_orientation(img, full_size, extent)
        image = _to_resizable_mode(image, image_format)
        # Big images (shorter side >= 1024) may be approximated: JPEGs were DCT-scaled above, and
        # any format then gets a cheap integer-factor reduction of just the kept region.
        approximate = draft and min(full_size) >= 2 * _DRAFT_MIN_SIDE
        cropped = _resize_center_crop(image, full_size, extent, approximate=approximate)
    pixels = _to_rgb_or_gray_pixels(cropped, value_range)
    return PreparedImage(
        tensor=_normalize(pixels), width=full_size[0], height=full_size[1], format=image_format
    )


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Keep Pillow's warnings about uploads (bomb size, corrupt EXIF, ...) from becoming errors."""
    # Our own max_pixels check replaces Pillow's global MAX_IMAGE_PIXELS warning, and a corrupt
    # EXIF block is the uploader's problem, not a server fault worth a log line per request.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


@contextlib.contextmanager
def _decoding(max_pixels: int) -> Iterator[None]:
    """Translate Pillow's decode failures into InvalidImage / ImageTooLarge."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Only reached when Pillow's own limit trips first (or its warning escaped the filter
        # because catch_warnings is process-global and another thread just restored it).
        pixels = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow: "Image size (N pixels) ..."
        size = f"{pixels.group(1)} pixels" if pixels else "more pixels than Pillow will decode"
        pillow_limit = Image.MAX_IMAGE_PIXELS and 2 * Image.MAX_IMAGE_PIXELS
        limit = min(max_pixels, pillow_limit) if pillow_limit else max_pixels
        raise ImageTooLarge(f"The image is {size}; the limit is {limit} pixels.") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImage(
            f"The image is corrupt or truncated and cannot be decoded ({exc})."
        ) from exc


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Identify the image from its header, without decoding pixels."""
    with _decoding(max_pixels):
        try:
            # Pillow raises KeyError for a listed format it has no opener for (HEIF without
            # pillow-heif), so list only the registered ones.
            formats = [name for name in _FORMATS if name in Image.OPEN]
            return Image.open(io.BytesIO(data), formats=formats)
        except UnidentifiedImageError as exc:
            raise _unidentified(data) from exc


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse images whose header declares too many (or no) pixels, before anything is decoded."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"The image declares an empty size ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels."
        )


def _check_jpeg_scans(data: bytes) -> None:
    """Refuse JPEGs with absurdly many scans: a CPU bomb, each scan re-walks the whole image.

    A start-of-scan marker (FF DA) cannot occur inside entropy-coded data (an FF there is
    always followed by 00 or a restart marker), so counting the bytes counts the scans, plus
    those of any embedded thumbnail. Cameras write 1 scan, progressive encoders about 10.
    """
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise InvalidImage(
            f"The JPEG has {scans} scans; photos have at most a few dozen and this service "
            f"decodes at most {MAX_JPEG_SCANS}. Re-encode it (e.g. as baseline JPEG)."
        )


def _draft(img: ImageFile.ImageFile) -> _Box | None:
    """Let libjpeg decode a large JPEG at reduced scale; return where the full image now lies."""
    if min(img.size) < 2 * _DRAFT_MIN_SIDE:
        return None
    configured = img.draft("RGB", (_DRAFT_MIN_SIDE, _DRAFT_MIN_SIDE))
    if configured is None:
        return None
    # Pillow rounds the scaled size up, so the original spans (0, 0, width / s, height / s).
    x0, y0, x1, y1 = configured[1]
    return (float(x0), float(y0), float(x1), float(y1))


def _value_range(img: Image.Image) -> tuple[float, float] | None:
    """The sample range to map onto 0..255 for 16/32-bit and float images; None for 8-bit ones."""
    if img.mode == "F":
        return _float_range(img)
    if img.mode not in _SIXTEEN_BIT_MODES and img.mode != "I":
        return None
    bits, signed = (16, False) if img.mode in _SIXTEEN_BIT_MODES else (32, True)
    if isinstance(img, TiffImagePlugin.TiffImageFile):
        # Only TIFF says more: 12-bit sensors stored in 16-bit samples, signed/unsigned integers.
        bits = _first_int(img.tag_v2.get(TiffImagePlugin.BITSPERSAMPLE), bits)
        signed = _first_int(img.tag_v2.get(TiffImagePlugin.SAMPLEFORMAT), 1) == 2
    if signed:
        return (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    return (0.0, 2.0**bits - 1)


def _first_int(value: object, default: int) -> int:
    """A TIFF tag value, which Pillow gives as an int or a per-sample tuple."""
    if isinstance(value, tuple) and value:
        value = value[0]
    return value if isinstance(value, int) and value > 0 else default


def _float_range(img: Image.Image) -> tuple[float, float]:
    """Float images in [0, 1] keep that scale; anything else is stretched from min to max."""
    low, high = img.getextrema()
    assert isinstance(low, float)
    assert isinstance(high, float)
    if not (math.isfinite(low) and math.isfinite(high)):
        values = np.asarray(img)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low >= 0.0 and high <= 1.0:
        return (0.0, 1.0)
    return (low, high)


def _apply_orientation(
    img: Image.Image, size: tuple[int, int], extent: _Box
) -> tuple[Image.Image, tuple[int, int], _Box]:
    """Rotate/flip as EXIF says (like ImageOps.exif_transpose), tracking size and extent."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        # EXIF is metadata: a broken block should not reject a photo whose pixels decode.
        return img, size, extent
    method = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return img, size, extent
    transposed = img.transpose(method)
    if transposed.size != img.size:
        size = (size[1], size[0])
    return transposed, size, _transpose_box(extent, img.size, method)


def _transpose_box(box: _Box, size: tuple[int, int], method: Image.Transpose) -> _Box:
    """Where `box` lands after `Image.transpose(method)` of an image of `size`."""
    x0, y0, x1, y1 = box
    width, height = size
    match method:
        case Image.Transpose.FLIP_LEFT_RIGHT:
            return (width - x1, y0, width - x0, y1)
        case Image.Transpose.FLIP_TOP_BOTTOM:
            return (x0, height - y1, x1, height - y0)
        case Image.Transpose.ROTATE_180:
            return (width - x1, height - y1, width - x0, height - y0)
        case Image.Transpose.ROTATE_90:
            return (y0, width - x1, y1, width - x0)
        case Image.Transpose.ROTATE_270:
            return (height - y1, x0, height - y0, x1)
        case Image.Transpose.TRANSPOSE:
            return (y0, x0, y1, x1)
        case Image.Transpose.TRANSVERSE:
            return (height - y1, width - x1, height - y0, width - x0)
    raise AssertionError(method)


def _to_resizable_mode(img: Image.Image, image_format: str) -> Image.Image:
    """Convert any decodable mode to RGB, L, RGBA, LA, I or F, keeping transparency as alpha."""
    mode = img.mode
    if "transparency" in img.info and mode in ("1", "L", "RGB", "P"):
        # A palette or colour-key transparency becomes a real alpha channel, composited later.
        return img.convert("LA" if mode in ("1", "L") else "RGBA")
    if mode in _RESIZABLE_MODES:
        return img
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's resize mishandles big-endian/native 16-bit modes; 32-bit I is exact and safe.
        return img.convert("I")
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA", "RGBa"):
        return img.convert("RGBA" if mode != "P" else "RGB")
    if mode == "La":
        return img.convert("LA")
    if mode in _TO_RGB_MODES:
        # CMYK is converted naively (no ICC profile), which is close enough for classification.
        return img.convert("RGB")
    raise UnsupportedFormat(
        f"{image_format} images in colour mode {mode!r} are not supported; "
        f"upload an 8-bit RGB or grayscale {_SUPPORTED} image."
    )


def _resize_center_crop(
    img: Image.Image, size: tuple[int, int], extent: _Box, *, approximate: bool
) -> Image.Image:
    """torchvision Resize(256) + CenterCrop(224) of a `size` image spanning `extent` of `img`."""
    width, height = size
    # The rounding of the reference pipeline that produced golden.json: the long side is
    # rounded to nearest, the crop offset floored. (torchvision truncates and rounds instead;
    # on odd sizes that moves the crop one pixel and shifts confidences past the tolerance.)
    if width <= height:
        resized_w, resized_h = RESIZE_SHORTER, round(RESIZE_SHORTER * height / width)
    else:
        resized_w, resized_h = round(RESIZE_SHORTER * width / height), RESIZE_SHORTER
    left = (resized_w - INPUT_SIZE) // 2
    top = (resized_h - INPUT_SIZE) // 2
    whole_image = extent == (0.0, 0.0, float(img.width), float(img.height))
    if not approximate and whole_image and resized_w * resized_h <= _MAX_RESIZED_PIXELS:
        resized = img.resize((resized_w, resized_h), Image.Resampling.BILINEAR)
        return resized.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    # Resizing just the crop's source box computes the same pixels (the filter still reads
    # neighbours outside the box) up to 1/255 (Pillow passes box edges as float32), and never
    # builds the resized image, which for a 1x5000 upload would be 256x1280000.
    x0, y0, x1, y1 = extent
    scale_x = (x1 - x0) / resized_w
    scale_y = (y1 - y0) / resized_h
    box = (
        x0 + left * scale_x,
        y0 + top * scale_y,
        x0 + (left + INPUT_SIZE) * scale_x,
        y0 + (top + INPUT_SIZE) * scale_y,
    )
    # reducing_gap=2: box-average by an integer factor first while >= 2x the output remains.
    reducing_gap = 2.0 if approximate else None
    return img.resize(
        (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, box=box, reducing_gap=reducing_gap
    )


def _to_rgb_or_gray_pixels(
    img: Image.Image, value_range: tuple[float, float] | None
) -> npt.NDArray[np.uint8]:
    """The cropped image as uint8 HxWx3 RGB or HxW gray, with alpha composited onto white."""
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB" if img.mode == "RGBA" else "L", img.size, "white")
        background.paste(img.convert(background.mode), mask=img.getchannel("A"))
        img = background
    if img.mode in ("I", "F"):
        assert value_range is not None
        return _rescale_to_uint8(np.asarray(img), value_range)
    return np.asarray(img)


def _rescale_to_uint8(
    values: npt.NDArray[np.int32] | npt.NDArray[np.float32], value_range: tuple[float, float]
) -> npt.NDArray[np.uint8]:
    """Map a sample range onto 0..255 linearly (never clipping a 16-bit image to white)."""
    low, high = value_range
    span = high - low if high > low else 1.0
    scaled = (values.astype(np.float64) - low) * (255.0 / span)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _normalize(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """HxWx3 (or HxW gray) uint8 -> 3xHxW float32, ImageNet-normalized, C-contiguous."""
    channels = pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    tensor = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    # The cast from uint8 happens inside the ufunc loop: no float copy of the input is made.
    np.multiply(channels, _SCALE, out=tensor)
    tensor += _OFFSET
    return tensor


# -- naming what an unidentifiable upload is ------------------------------------------------------

_NOT_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF documents"),
    (b"PK\x03\x04", "ZIP archives (and .docx/.xlsx/.pptx documents)"),
    (b"PK\x05\x06", "ZIP archives"),
    (b"\x1f\x8b", "gzip archives"),
    (b"Rar!\x1a\x07", "RAR archives"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archives"),
    (b"%!PS", "PostScript/EPS documents"),
    (b"\xc5\xd0\xd3\xc6", "EPS documents"),
    (b"8BPS", "Photoshop (PSD) documents"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Microsoft Office documents"),
    (b"\x1a\x45\xdf\xa3", "WebM/Matroska videos"),
    (b"\x00\x00\x01\xba", "MPEG videos"),
    (b"\x00\x00\x01\xb3", "MPEG videos"),
    (b"OggS", "Ogg audio/video files"),
    (b"ID3", "MP3 audio files"),
    (b"fLaC", "FLAC audio files"),
    (b"\x7fELF", "executable files"),
    (b"SQLite format 3\x00", "SQLite databases"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 images"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 images"),
    (b"\x00\x00\x01\x00", "ICO icons"),
    (b"qoif", "QOI images"),
)

# Formats we do decode: seeing their signature after Pillow gave up means a damaged file.
_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
)

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def _unidentified(data: bytes) -> InvalidImage | UnsupportedFormat:
    """The error for bytes no allowed Pillow plugin recognised, naming what they look like."""
    name = _image_signature(data)
    if name == "TIFF" and not _tiff_directory_is_cut_off(data):
        # TIFF has many layouts and sample formats; failing to open a whole one means a variant.
        return UnsupportedFormat(
            f"This TIFF file uses a layout or sample format that cannot be decoded; "
            f"re-save it as 8-bit RGB or upload a {_SUPPORTED} image."
        )
    if name in ("HEIC", "HEIF", "AVIF") and not _can_decode(name):
        return UnsupportedFormat(
            f"{name} images are not supported by this server build; "
            "upload a JPEG, PNG or WebP image."
        )
    if name is not None:
        return InvalidImage(f"The {name} image is corrupt or truncated and cannot be decoded.")
    what = _describe_non_image(data)
    if what is not None:
        return UnsupportedFormat(f"{what} are not supported; upload a {_SUPPORTED} image.")
    return UnsupportedFormat(
        f"The upload is not an image in a format this server understands; "
        f"upload a {_SUPPORTED} image."
    )


def _tiff_directory_is_cut_off(data: bytes) -> bool:
    """Whether a classic TIFF's first image directory lies (partly) beyond the end of `data`."""
    order = "<" if data.startswith(b"II") else ">"
    if len(data) < 8:
        return True
    offset: int = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return True
    entries: int = struct.unpack(order + "H", data[offset : offset + 2])[0]
    return offset + 2 + 12 * entries > len(data)


def _can_decode(name: str) -> bool:
    """Whether this Pillow build has a decoder for HEIC/HEIF or AVIF."""
    if name in ("HEIC", "HEIF"):
        return "HEIF" in Image.OPEN
    return bool(features.check("avif"))


def _image_signature(data: bytes) -> str | None:
    """The name of a format we decode whose signature starts `data`, if any."""
    for magic, name in _IMAGE_SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    # The reserved bytes are zero in real BMPs, which rules out text that happens to start "BM".
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIC_BRANDS:
            return "HEIC"
        if brand in _HEIF_BRANDS:
            return "HEIF"
        if brand in _AVIF_BRANDS:
            return "AVIF"
    return None


def _describe_non_image(data: bytes) -> str | None:
    """A plural noun for common non-image uploads, recognised by magic bytes, else None."""
    for magic, what in _NOT_IMAGES:
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        return "QuickTime (MOV) videos" if data[8:12] == b"qt  " else "MP4 videos"
    if data[:4] == b"RIFF":
        return {b"WAVE": "WAV audio files", b"AVI ": "AVI videos"}.get(data[8:12])
    return _describe_text(data[:1024])


def _describe_text(sample: bytes) -> str | None:
    """'HTML documents', 'SVG images', ... when `sample` is printable UTF-8 text, else None."""
    try:
        # Not final: the sample may end in the middle of a multi-byte character.
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(sample, final=False)
    except UnicodeDecodeError:
        return None
    if not text or not all(ch.isprintable() or ch in "\t\n\r\f" for ch in text):
        return None
    head = text.lstrip().lower()
    if "<svg" in head:
        return "SVG images"
    if head.startswith(("<!doctype html", "<html")) or "<html" in head:
        return "HTML documents"
    if head.startswith("<?xml"):
        return "XML documents"
    if head.startswith(("{", "[")):
        return "JSON documents"
    return "Text files"
