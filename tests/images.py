"""Test image factories: every image a test needs is built here with Pillow, never stored."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageChops

# The team's 100 dev photos with golden top-3 sit beside the checkout (../shared/photos); a
# checkout elsewhere points CROSS_PICTURES_PHOTOS at them. They are never copied into the repo.
PHOTOS = Path(
    os.environ.get(
        "CROSS_PICTURES_PHOTOS",
        Path(__file__).resolve().parent.parent.parent / "shared" / "photos" / "imagenet-dev",
    )
)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# One step of an 8-bit value after normalization, per channel.
ONE_LEVEL = float((1 / 255 / STD).max())


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """`img` saved in `fmt` as bytes."""
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def pattern(size: tuple[int, int]) -> Image.Image:
    """An RGB image whose every flip and rotation looks different (x, y and xy gradients)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * y) % 256], axis=-1
    )
    return Image.fromarray(rgb.astype(np.uint8))


def smooth_photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Photo-like content: coarse random colour blobs, upscaled smoothly to `size`."""
    coarse = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def solid(
    color: tuple[int, ...] | int, size: tuple[int, int] = (64, 48), mode: str = "RGB"
) -> Image.Image:
    """A single-colour image."""
    return Image.new(mode, size, color)


def reference_tensor(img: Image.Image) -> npt.NDArray[np.float32]:
    """The reference pipeline of golden.json: RGB, shorter side to 256 (long side rounded),
    center crop 224 (offset floored), normalize."""
    img = img.convert("RGB")
    width, height = img.size
    if width <= height:
        resized = (256, round(256 * height / width))
    else:
        resized = (round(256 * width / height), 256)
    img = img.resize(resized, Image.Resampling.BILINEAR)
    left = (resized[0] - 224) // 2
    top = (resized[1] - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    values = np.asarray(img, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((values - MEAN) / STD).transpose(2, 0, 1))


def normalized(rgb: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    """The normalized value of one 8-bit RGB colour, per channel."""
    return ((np.array(rgb, dtype=np.float32) / 255.0) - MEAN) / STD


def exif_orientation(orientation: int) -> bytes:
    """An EXIF block that holds only an Orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` grayscale pixels (data is one row)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" + b"\x00" * min(width, 1024))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def ycck_jpeg(cmyk: Image.Image) -> bytes:
    """A YCCK (Adobe transform 2) JPEG that decodes to `cmyk`; Pillow can only write plain CMYK."""
    # libjpeg turns YCCK into CMYK by YCC->RGB on the first three channels, and Pillow reads the
    # Adobe-inverted result back: so store YCbCr of (C, M, Y) and an inverted K, then flip the
    # Adobe marker's transform byte from 0 (CMYK) to 2 (YCCK).
    c, m, y, k = cmyk.split()
    ycc = Image.merge("RGB", (c, m, y)).convert("YCbCr")
    stored = [ImageChops.invert(channel) for channel in ycc.split()]
    data = bytearray(encode(Image.merge("CMYK", (*stored, k)), "JPEG", quality=100))
    marker = data.find(b"Adobe")
    assert marker > 0
    assert data[marker + 11] == 0
    data[marker + 11] = 2
    return bytes(data)


def animated(
    fmt: str, colors: list[tuple[int, int, int]], size: tuple[int, int] = (64, 48)
) -> bytes:
    """An animated image in `fmt` with one solid frame per colour."""
    frames = [Image.new("RGB", size, color) for color in colors]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
