"""prepare_image on everything real uploads throw at it: formats, modes, geometry, abuse."""

from __future__ import annotations

import io
import json
import random
import resource
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile

from cross_pictures import preprocessing
from cross_pictures.errors import (
    CrossPicturesError,
    ImageTooLarge,
    InvalidImage,
    UnsupportedFormat,
)
from cross_pictures.preprocessing import (
    INPUT_SIZE,
    PreparedImage,
    prepare_image,
    register_optional_formats,
)
from tests.images import (
    ONE_LEVEL,
    PHOTOS,
    animated,
    encode,
    exif_orientation,
    normalized,
    pattern,
    png_declaring_size,
    reference_tensor,
    smooth_photo,
    solid,
    ycck_jpeg,
)

MAX_PIXELS = 50_000_000
WHITE = normalized((255, 255, 255))
RED = normalized((255, 0, 0))


def prepare(data: bytes, **kwargs: bool) -> PreparedImage:
    return prepare_image(data, max_pixels=MAX_PIXELS, **kwargs)


def tensor_of(data: bytes) -> npt.NDArray[np.float32]:
    return prepare(data).tensor


def channel_means(tensor: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    return np.asarray(tensor.reshape(3, -1).mean(axis=1), dtype=np.float64)


def assert_everywhere(tensor: npt.NDArray[np.float32], value: npt.NDArray[np.float32]) -> None:
    """Every pixel of `tensor` equals the per-channel `value` (to float rounding)."""
    np.testing.assert_allclose(
        tensor, np.broadcast_to(value[:, None, None], tensor.shape), atol=1e-5
    )


# -- output contract and the reference pipeline --------------------------------------------------


def test_output_is_a_contiguous_float32_chw_tensor_with_upload_facts() -> None:
    prepared = prepare(encode(pattern((500, 375)), "PNG"))
    assert prepared.tensor.shape == (3, INPUT_SIZE, INPUT_SIZE)
    assert prepared.tensor.dtype == np.float32
    assert prepared.tensor.flags.c_contiguous
    assert (prepared.width, prepared.height, prepared.format) == (500, 375, "PNG")
    with pytest.raises(AttributeError):
        prepared.width = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "size", [(500, 375), (375, 500), (333, 500), (256, 256), (1152, 864), (224, 900), (640, 257)]
)
def test_matches_resize_256_center_crop_224_bit_for_bit(size: tuple[int, int]) -> None:
    img = smooth_photo(size)
    data = encode(img, "PNG")
    np.testing.assert_allclose(tensor_of(data), reference_tensor(img), rtol=0, atol=1e-5)


def test_matches_the_reference_pipeline_on_the_dev_photos() -> None:
    # The goldens were computed with the textbook pipeline: identical tensors reproduce them.
    if not (PHOTOS / "golden.json").is_file():
        pytest.skip(f"{PHOTOS} is missing: the dev photos live in ../shared/photos")
    for entry in json.loads((PHOTOS / "golden.json").read_text()):
        data = (PHOTOS / entry["file"]).read_bytes()
        expected = reference_tensor(Image.open(io.BytesIO(data)))
        np.testing.assert_allclose(tensor_of(data), expected, rtol=0, atol=1e-5)


def test_channel_order_is_rgb() -> None:
    tensor = tensor_of(encode(solid((255, 0, 0)), "PNG"))
    assert_everywhere(tensor, RED)
    assert tensor[0].min() > 2.0
    assert tensor[1].max() < -2.0
    assert tensor[2].max() < -1.5


def test_center_crop_drops_the_border_and_keeps_the_middle() -> None:
    # 400x300 -> 341x256, crop x 58..282, y 16..240, i.e. source x 68..331, y 19..281; the
    # bilinear filter reads ~1.2 px further. A blue frame outside that must vanish entirely.
    img = Image.new("RGB", (400, 300), (0, 0, 255))
    img.paste((0, 255, 0), (60, 14, 340, 286))
    assert_everywhere(tensor_of(encode(img, "PNG")), normalized((0, 255, 0)))
    # ...while a frame reaching into the crop area shows up on every side.
    img.paste((0, 0, 255), (60, 14, 340, 286))
    img.paste((0, 255, 0), (80, 40, 320, 260))
    tensor = tensor_of(encode(img, "PNG"))
    blue = normalized((0, 0, 255))
    for edge in (tensor[:, 0, :], tensor[:, -1, :], tensor[:, :, 0], tensor[:, :, -1]):
        np.testing.assert_allclose(edge[:, edge.shape[1] // 2], blue, atol=1e-5)
    np.testing.assert_allclose(tensor[:, 112, 112], normalized((0, 255, 0)), atol=1e-5)


@pytest.mark.parametrize(
    "size", [(1, 1), (1, 5000), (5000, 1), (3, 2), (224, 224), (10000, 3), (7, 9)]
)
def test_tiny_and_extreme_aspect_images_work(size: tuple[int, int]) -> None:
    prepared = prepare(encode(pattern(size), "PNG"))
    assert prepared.tensor.shape == (3, INPUT_SIZE, INPUT_SIZE)
    assert np.isfinite(prepared.tensor).all()
    assert (prepared.width, prepared.height) == size


def test_a_single_pixel_is_upscaled_to_the_whole_input() -> None:
    assert_everywhere(tensor_of(encode(solid((255, 0, 0), (1, 1)), "PNG")), RED)


def test_very_elongated_images_match_the_reference_within_one_level() -> None:
    # Beyond 16:1 only the kept box is resized (no 256x12800 intermediate); Pillow's float32 box
    # edges may move a value by one 8-bit level, never more.
    img = smooth_photo((20, 1000))
    difference = np.abs(tensor_of(encode(img, "PNG")) - reference_tensor(img))
    assert difference.max() <= ONE_LEVEL + 1e-5
    assert difference.mean() < ONE_LEVEL / 4


# -- EXIF orientation ------------------------------------------------------------------------------

# What the camera stored for an upright picture, per EXIF orientation (the inverse of the fix-up).
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_exif_orientation_is_applied_before_resizing(orientation: int) -> None:
    upright = pattern((300, 200))
    method = STORED_AS[orientation]
    stored = upright if method is None else upright.transpose(method)
    prepared = prepare(encode(stored, "PNG", exif=exif_orientation(orientation)))
    np.testing.assert_allclose(prepared.tensor, tensor_of(encode(upright, "PNG")), atol=1e-5)
    assert (prepared.width, prepared.height) == (300, 200)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {"quality": 95}),
        ("WEBP", {"quality": 95}),
        ("TIFF", {}),
        ("AVIF", {"quality": 95}),
        ("HEIF", {"quality": 95}),
    ],
)
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_phone_photos_come_out_upright(
    fmt: str, params: dict[str, object], orientation: int
) -> None:
    # Some decoders (libheif, Pillow's TIFF reader) already apply the rotation: never twice.
    register_optional_formats()
    upright = smooth_photo((300, 200))
    method = STORED_AS[orientation]
    assert method is not None
    exif = exif_orientation(orientation)
    stored = encode(upright.transpose(method), fmt, exif=exif, **params)
    prepared = prepare(stored)
    assert (prepared.width, prepared.height) == (300, 200)
    expected = tensor_of(encode(upright, fmt, **params))
    assert np.abs(prepared.tensor - expected).mean() < 0.03


@pytest.mark.parametrize("orientation", [3, 6, 7, 8])
def test_draft_decoding_and_exif_orientation_together(orientation: int) -> None:
    upright = smooth_photo((2000, 1500))
    method = STORED_AS[orientation]
    assert method is not None
    stored = encode(
        upright.transpose(method), "JPEG", quality=90, exif=exif_orientation(orientation)
    )
    prepared = prepare(stored, draft=True)
    assert (prepared.width, prepared.height) == (2000, 1500)
    expected = prepare(encode(upright, "JPEG", quality=90), draft=False).tensor
    assert np.abs(prepared.tensor - expected).mean() < 0.02


def test_broken_exif_does_not_reject_a_decodable_photo() -> None:
    data = encode(pattern((120, 90)), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert prepare(data).tensor.shape == (3, INPUT_SIZE, INPUT_SIZE)


@pytest.mark.parametrize("method", list(Image.Transpose))
def test_transposed_box_follows_the_pixels(method: Image.Transpose) -> None:
    # The draft extent is tracked through the EXIF transpose: check the mapping against Pillow.
    img = Image.new("L", (7, 4), 0)
    img.putpixel((5, 1), 255)
    moved = img.transpose(method)
    x0, y0, x1, y1 = preprocessing._transpose_box((5.0, 1.0, 6.0, 2.0), img.size, method)
    assert (x1 - x0, y1 - y0) == (1.0, 1.0)
    assert moved.getpixel((int(x0), int(y0))) == 255


# -- colour modes and transparency ----------------------------------------------------------------


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cmyk = Image.new("CMYK", (64, 48), (0, 255, 255, 0))  # pure red ink
    assert np.abs(channel_means(tensor_of(encode(cmyk, "JPEG", quality=95))) - RED).max() < 0.05


def test_ycck_jpeg_decodes_like_the_same_cmyk() -> None:
    cmyk = Image.merge("CMYK", (*pattern((96, 64)).split(), solid(40, (96, 64), "L")))
    plain = tensor_of(encode(cmyk, "JPEG", quality=100))
    ycck = tensor_of(ycck_jpeg(cmyk))
    assert np.abs(ycck - plain).mean() < 0.05


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_grayscale_becomes_three_equal_channels(fmt: str) -> None:
    tensor = tensor_of(encode(solid(128, mode="L"), fmt))
    assert_everywhere(tensor, normalized((128, 128, 128)))


def test_bilevel_images_are_black_and_white() -> None:
    img = Image.new("1", (100, 100), 0)
    img.paste(1, (0, 0, 100, 50))
    tensor = tensor_of(encode(img, "PNG"))
    np.testing.assert_allclose(tensor[:, 10, 112], WHITE, atol=1e-5)
    np.testing.assert_allclose(tensor[:, -10, 112], normalized((0, 0, 0)), atol=1e-5)


@pytest.mark.parametrize(
    ("mode", "transparent"),
    [("RGBA", (0, 0, 0, 0)), ("RGBA", (255, 0, 0, 0)), ("LA", (0, 0))],
)
def test_fully_transparent_pixels_become_white(mode: str, transparent: tuple[int, ...]) -> None:
    assert_everywhere(tensor_of(encode(solid(transparent, mode=mode), "PNG")), WHITE)


def test_transparent_palette_gif_becomes_white() -> None:
    img = Image.new("P", (64, 48), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 64, 24))  # red top half, transparent black bottom half
    tensor = tensor_of(encode(img, "GIF", transparency=0))
    np.testing.assert_allclose(tensor[:, 5, 112], RED, atol=1e-5)
    np.testing.assert_allclose(tensor[:, -5, 112], WHITE, atol=1e-5)


@pytest.mark.parametrize(("mode", "color"), [("RGB", (10, 20, 30)), ("L", 10), ("P", 3)])
def test_colour_key_transparency_becomes_white(mode: str, color: tuple[int, ...] | int) -> None:
    img = solid(color, mode=mode)
    if mode == "P":
        img.putpalette([value for index in range(8) for value in (index * 30, 0, 0)])
    assert_everywhere(tensor_of(encode(img, "PNG", transparency=color)), WHITE)


def test_half_transparent_pixels_are_blended_onto_white() -> None:
    tensor = tensor_of(encode(solid((0, 0, 0, 128), mode="RGBA"), "PNG"))
    assert_everywhere(tensor, normalized((127, 127, 127)))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB"])
def test_tiff_in_every_8_bit_mode_decodes(mode: str) -> None:
    img = (
        pattern((120, 80)).convert(mode)
        if mode not in ("LAB", "PA")
        else Image.new(mode, (120, 80))
    )
    assert np.isfinite(tensor_of(encode(img, "TIFF"))).all()


def test_lab_tiff_is_converted_to_rgb() -> None:
    white = Image.new("LAB", (64, 48), (255, 128, 128))  # L*=100, a*=b*=0
    assert np.abs(channel_means(tensor_of(encode(white, "TIFF"))) - WHITE).max() < 0.05


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pillow_mode_has_a_resizable_form(mode: str) -> None:
    img = Image.new(mode, (8, 6))
    converted = preprocessing._to_resizable_mode(img, "TEST")
    assert converted.mode in {"RGB", "L", "RGBA", "LA", "I", "F"}
    converted.resize((4, 3), Image.Resampling.BILINEAR)


# -- high bit depth --------------------------------------------------------------------------------


def gradient(low: float, high: float) -> npt.NDArray[np.float64]:
    """A 600x400 left-to-right ramp from `low` to `high`."""
    return np.tile(np.linspace(low, high, 600), (400, 1))


def assert_same_picture_as_8_bit(
    tensor: npt.NDArray[np.float32], fraction: npt.NDArray[Any]
) -> None:
    """Scaled by bit depth, not clipped: the 8-bit image of the same brightness `fraction`s."""
    eight_bit = np.rint(fraction * 255).astype(np.uint8)
    expected = tensor_of(encode(Image.fromarray(eight_bit), "PNG"))
    # Resizing before rather than after quantizing moves a value by at most one level.
    assert np.abs(tensor - expected).max() <= ONE_LEVEL + 1e-5
    assert tensor[0].max() - tensor[0].min() > 2.5  # a ramp, not a white (or black) sheet


def test_16_bit_png_gradient_is_scaled_not_clipped() -> None:
    values = gradient(0, 65535).astype(np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert_same_picture_as_8_bit(tensor_of(data), values / 65535)


def test_16_bit_big_endian_tiff_gradient_is_scaled_not_clipped() -> None:
    values = gradient(0, 65535).astype(np.uint16)
    img = Image.frombytes("I;16B", (600, 400), values.astype(">u2").tobytes())
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert_same_picture_as_8_bit(tensor_of(data), values / 65535)


def test_32_bit_integer_tiff_is_scaled_by_its_range() -> None:
    values = gradient(-(2**31), 2**31 - 1).astype(np.int32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert_same_picture_as_8_bit(tensor_of(data), (values + 2.0**31) / (2.0**32 - 1))


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (0.2, 0.7), (-50.0, 3000.0)])
def test_float_tiff_keeps_0_to_1_else_is_stretched(low: float, high: float) -> None:
    values = gradient(low, high).astype(np.float32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    tensor = tensor_of(data)
    if high <= 1.0:
        expected = tensor_of(encode(Image.fromarray(np.rint(values * 255).astype(np.uint8)), "PNG"))
        assert np.abs(tensor - expected).max() <= ONE_LEVEL + 1e-5
    else:
        assert_same_picture_as_8_bit(tensor, (values - low) / (high - low))


# -- formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "name"),
    [
        ("JPEG", {"quality": 95}, "JPEG"),
        ("PNG", {}, "PNG"),
        ("WEBP", {"quality": 95}, "WEBP"),
        ("WEBP", {"lossless": True}, "WEBP"),
        ("BMP", {}, "BMP"),
        ("TIFF", {}, "TIFF"),
        ("TIFF", {"compression": "tiff_lzw"}, "TIFF"),
        ("GIF", {}, "GIF"),
    ],
)
def test_common_formats_decode(fmt: str, params: dict[str, object], name: str) -> None:
    prepared = prepare(encode(solid((200, 30, 40), (80, 60)), fmt, **params))
    assert prepared.format == name
    assert np.abs(channel_means(prepared.tensor) - normalized((200, 30, 40))).max() < 0.1


@pytest.mark.parametrize(("fmt", "name"), [("HEIF", "HEIF"), ("AVIF", "AVIF")])
def test_heic_and_avif_decode(fmt: str, name: str) -> None:
    register_optional_formats()
    try:
        data = encode(solid((200, 30, 40), (80, 60)), fmt, quality=90)
    except (KeyError, OSError) as exc:
        pytest.skip(f"this Pillow/libheif build cannot encode {fmt}: {exc}")
    prepared = prepare(data)
    assert (prepared.format, prepared.width, prepared.height) == (name, 80, 60)
    assert np.abs(channel_means(prepared.tensor) - normalized((200, 30, 40))).max() < 0.15


def test_heic_with_exif_rotation_comes_out_upright() -> None:
    register_optional_formats()
    upright = pattern((90, 60))
    try:
        data = encode(
            upright.transpose(Image.Transpose.ROTATE_90), "HEIF", exif=exif_orientation(6)
        )
    except (KeyError, OSError) as exc:
        pytest.skip(f"this libheif build cannot encode HEIC: {exc}")
    prepared = prepare(data)
    assert (prepared.width, prepared.height) == (90, 60)


def test_multi_picture_jpeg_uses_the_first_picture() -> None:
    first, second = solid((255, 0, 0), (1200, 1100)), solid((0, 0, 255), (1200, 1100))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    prepared = prepare(data, draft=True)
    assert (prepared.format, prepared.width, prepared.height) == ("MPO", 1200, 1100)
    assert np.abs(channel_means(prepared.tensor) - RED).max() < 0.05


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_use_the_first_frame(fmt: str) -> None:
    tensor = tensor_of(animated(fmt, [(255, 0, 0), (0, 0, 255), (0, 255, 0)]))
    assert np.abs(channel_means(tensor) - RED).max() < 0.05


def test_multi_page_tiff_uses_the_first_page() -> None:
    pages = [solid((255, 0, 0)), solid((0, 0, 255), (300, 300))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    prepared = prepare(data)
    assert (prepared.width, prepared.height) == (64, 48)
    assert_everywhere(prepared.tensor, RED)


# -- JPEG draft decoding ---------------------------------------------------------------------------


def test_draft_decoding_of_a_big_jpeg_is_close_to_full_decoding() -> None:
    data = encode(smooth_photo((4000, 3000)), "JPEG", quality=90)
    drafted = prepare(data, draft=True)
    plain = prepare(data, draft=False)
    assert (drafted.width, drafted.height) == (plain.width, plain.height) == (4000, 3000)
    assert not np.array_equal(drafted.tensor, plain.tensor)  # the draft path really ran
    assert np.abs(drafted.tensor - plain.tensor).mean() < 0.01


def test_draft_leaves_small_jpegs_exact() -> None:
    # Shorter side below 1024: decoding at reduced scale would leave < 512 px, so none happens.
    data = encode(smooth_photo((1200, 1000)), "JPEG", quality=90)
    np.testing.assert_array_equal(
        prepare(data, draft=True).tensor, prepare(data, draft=False).tensor
    )


def test_big_non_jpeg_takes_the_reducing_shortcut_only_with_draft() -> None:
    data = encode(smooth_photo((2400, 1800)), "PNG", compress_level=1)
    drafted, plain = prepare(data, draft=True).tensor, prepare(data, draft=False).tensor
    assert not np.array_equal(drafted, plain)
    assert np.abs(drafted - plain).mean() < 0.01


# -- bad uploads -----------------------------------------------------------------------------------


def test_empty_upload_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        prepare(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_truncated_images_are_invalid(fmt: str) -> None:
    data = encode(smooth_photo((400, 300)), fmt)
    with pytest.raises(InvalidImage):
        prepare(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("keep", [12, 30, 60])
def test_images_cut_inside_their_header_are_invalid(fmt: str, keep: int) -> None:
    # TIFF writes its directory at the end: cut anywhere, it is missing.
    data = encode(smooth_photo((400, 300)), fmt)
    with pytest.raises(InvalidImage, match=r"corrupt|truncated"):
        prepare(data[:keep])


def test_tiff_layouts_pillow_cannot_open_are_unsupported_and_named() -> None:
    # A complete directory whose sample format Pillow has no decoder for (64-bit floats).
    values = np.tile(np.linspace(0, 1, 64), (48, 1))
    data = bytearray(encode(Image.fromarray(values.astype(np.float32)), "TIFF"))
    offset = int.from_bytes(data[4:8], "little")
    for index in range(int.from_bytes(data[offset : offset + 2], "little")):
        entry = offset + 2 + 12 * index
        if int.from_bytes(data[entry : entry + 2], "little") == 258:  # BitsPerSample
            data[entry + 8 : entry + 10] = (64).to_bytes(2, "little")
    with pytest.raises(UnsupportedFormat, match="TIFF"):
        prepare(bytes(data))


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_truncated_or_corrupt_avif_and_heic_are_invalid(fmt: str) -> None:
    register_optional_formats()
    try:
        data = encode(smooth_photo((200, 150)), fmt)
    except (KeyError, OSError) as exc:
        pytest.skip(f"this build cannot encode {fmt}: {exc}")
    broken = [data[: len(data) // 2], data[:30]]
    if fmt == "AVIF":  # libde265 conceals damaged HEVC data; libavif raises RuntimeError
        clobbered = bytearray(data)
        clobbered[-50:-10] = bytes(40)
        broken.append(bytes(clobbered))
    for upload in broken:
        with pytest.raises(InvalidImage):
            prepare(upload)


def test_corrupt_png_data_is_invalid() -> None:
    data = bytearray(encode(smooth_photo((200, 150)), "PNG"))
    data[100:140] = b"\x00" * 40  # clobbers the start of the compressed image data
    with pytest.raises(InvalidImage):
        prepare(bytes(data))


def test_truncated_loading_stays_off_and_bomb_limit_stays_global_default() -> None:
    before = Image.MAX_IMAGE_PIXELS
    data = encode(smooth_photo((400, 300)), "JPEG")
    with pytest.raises(InvalidImage):
        prepare(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "ZIP"),
        (b"<!DOCTYPE html>\n<html><body>not a photo</body></html>", "HTML"),
        (b"  <html lang='en'><head></head></html>", "HTML"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
        (b'<?xml version="1.0"?>\n<note>hi</note>', "XML"),
        (b'{"image": "elsewhere"}', "JSON"),
        (b"Hello, this is just some text.\nReally.\n", "Text"),
        ("Grüße aus Köln — ein Text".encode(), "Text"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(16), "MP4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + bytes(16), "MOV"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(20), "WAV"),
        (b"8BPS\x00\x01" + bytes(30), "PSD"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "EPS"),
    ],
)
def test_non_images_are_unsupported_and_named(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedFormat, match=named) as caught:
        prepare(data)
    assert "JPEG, PNG, WebP" in str(caught.value)


def test_unknown_binary_is_unsupported() -> None:
    data = bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))
    with pytest.raises(UnsupportedFormat, match="not an image in a format"):
        prepare(data)


def test_heic_without_the_plugin_is_unsupported_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    register_optional_formats()
    monkeypatch.delitem(Image.OPEN, "HEIF", raising=False)
    with pytest.raises(UnsupportedFormat, match="HEIC"):
        prepare(heic)


# -- size limits and decompression bombs -----------------------------------------------------------


def test_image_over_max_pixels_is_too_large_before_decoding() -> None:
    data = encode(solid((1, 2, 3), (2000, 1500)), "PNG")
    with pytest.raises(ImageTooLarge, match="3000000"):
        prepare_image(data, max_pixels=2_999_999)
    assert prepare_image(data, max_pixels=3_000_000).width == 2000


def test_decompression_bomb_is_refused_from_the_header_without_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = png_declaring_size(30_000, 30_000)  # 900 MP: 2.7 GB as RGB, under 1 kB here
    assert len(bomb) < 2000

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the bomb's pixels were decoded")

    # Refused from the header: the decoder never runs, so it costs no time and no memory.
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20):
        with pytest.raises(ImageTooLarge):
            prepare_image(bomb, max_pixels=MAX_PIXELS)
    # ru_maxrss is in KiB on Linux: decoding even one bomb would add gigabytes.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100_000


def test_pillow_bomb_warning_never_escapes_when_our_limit_allows_the_size() -> None:
    # 10000x10000 is past Pillow's warning threshold (~89 MP); with a higher limit of our own,
    # the (truncated) file is decoded and rejected for its data, not for a warning.
    with pytest.raises(InvalidImage):
        prepare_image(png_declaring_size(10_000, 10_000), max_pixels=200_000_000)


def test_pillow_bomb_error_becomes_too_large_whatever_our_limit() -> None:
    with pytest.raises(ImageTooLarge, match=r"is 400000000 pixels; the limit is 178956970 pixels"):
        prepare_image(png_declaring_size(20_000, 20_000), max_pixels=10**12)
    with pytest.raises(ImageTooLarge, match=r"is 400000000 pixels; the limit is 50000000 pixels"):
        prepare_image(png_declaring_size(20_000, 20_000), max_pixels=50_000_000)


def test_zero_sized_image_is_invalid() -> None:
    with pytest.raises(InvalidImage):
        prepare(png_declaring_size(0, 10))


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_calls_give_each_their_own_answer() -> None:
    uploads = [encode(smooth_photo((300 + i * 37, 240), seed=i), "PNG") for i in range(8)]
    bad = [b"", b"%PDF-1.4", png_declaring_size(30_000, 30_000)]
    expected = [tensor_of(data) for data in uploads]

    def run(index: int) -> npt.NDArray[np.float32] | str:
        work = uploads[index % len(uploads)] if index % 3 else bad[index % len(bad)]
        try:
            return tensor_of(work)
        except (InvalidImage, UnsupportedFormat, ImageTooLarge) as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(1, 49)))
    for index, result in zip(range(1, 49), results, strict=True):
        if index % 3:
            assert isinstance(result, np.ndarray)
            np.testing.assert_array_equal(result, expected[index % len(uploads)])
        else:
            assert isinstance(result, str)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("BMP", {}),
    ],
)
def test_mangled_uploads_are_refused_cleanly_never_crash(fmt: str, params: dict[str, Any]) -> None:
    """Flipped bytes, cut-off files and inserted junk: a prepared image or one of our errors
    (a 4xx), never any other exception (a 500). 4,000 such mutants ran clean once; these are
    a fixed, seeded sample of them."""
    photo = encode(pattern((160, 120)), fmt, **params)
    rng = random.Random(f"{fmt}{params}")
    outcomes: dict[str, int] = {}
    for _ in range(150):
        mutant = bytearray(photo)
        roll = rng.random()
        if roll < 0.5:
            for _ in range(rng.randint(1, 10)):
                mutant[rng.randrange(len(mutant))] = rng.randrange(256)
        elif roll < 0.75:
            del mutant[rng.randrange(len(mutant)) :]
        else:
            at = rng.randrange(min(len(mutant), 200))
            mutant[at:at] = rng.randbytes(rng.randint(1, 8))
        try:
            prepare_image(bytes(mutant), max_pixels=MAX_PIXELS)
            outcome = "decoded"
        except CrossPicturesError as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("InvalidImage", 0) > 0, outcomes  # the sample does hit broken files


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding() -> None:
    # A CPU bomb: the first scan's header repeated, each copy a full pass over the image.
    photo = encode(smooth_photo((400, 300)), "JPEG", progressive=True)
    start = photo.index(b"\xff\xda")
    length = int.from_bytes(photo[start + 2 : start + 4], "big")
    header = photo[start : start + 2 + length]
    bomb = photo[:-2] + header * 2000 + b"\xff\xd9"
    with pytest.raises(InvalidImage, match=r"JPEG has \d+ scans"):
        prepare_image(bomb, max_pixels=MAX_PIXELS)
    assert prepare_image(photo, max_pixels=MAX_PIXELS).width == 400  # ordinary progressive
