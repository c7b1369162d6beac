"""The int8 model: ONNX Runtime static quantization (QDQ, U8S8, per-channel, MinMax) behind a gate.

Calibration images go through the service's own `prepare_image`, so the activation ranges are
those of what the service will feed the model. Without a calibration folder, a fixed-seed set of
procedural images is generated (no photos are shipped). After quantizing, the int8 model and the
fp32 model classify the evaluation images with the service's session options; the int8 model is
written (atomically) only if its top-1 agrees with fp32 on at least `min_agreement` of them.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from cross_pictures.errors import CrossPicturesError
from cross_pictures.inference import FloatArray, session_options, softmax
from cross_pictures.preprocessing import prepare_image

# Measured on the 100 ImageNet dev photos (see the quantize report in the README): U8S8 keeps the
# same top-1 as fp32 on ~97-98% of real photos; a broken quantization (clipped ranges, a U8S8
# saturation on a CPU without VNNI, a wrong calibration set) lands far below. 0.95 leaves room for
# the few low-margin photos that flip while still refusing a model that lost real accuracy.
DEFAULT_MIN_AGREEMENT: Final = 0.95
DEFAULT_CALIBRATION_IMAGES: Final = 48
DEFAULT_SEED: Final = 20240611
# Generated images are 4:3 like most photos, so the resize + center crop path is exercised too.
GENERATED_SIZE: Final = (320, 240)
# Images per session.run while calibrating and evaluating: amortizes the run, bounds the memory.
BATCH: Final = 8
DEFAULT_MAX_PIXELS: Final = 50_000_000
IMAGE_SUFFIXES: Final = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

UInt8Array = npt.NDArray[np.uint8]
Float64Array = npt.NDArray[np.float64]


class QuantizationError(CrossPicturesError):
    """Quantization could not run: no usable calibration or evaluation images, bad arguments."""


class AgreementTooLowError(QuantizationError):
    """The int8 model disagrees with fp32 too often; it was not written."""

    def __init__(self, report: QuantizationReport) -> None:
        self.report = report
        agreement = report.agreement
        super().__init__(
            f"refusing to write {report.int8_path}: int8 top-1 agrees with fp32 on "
            f"{agreement.agreeing}/{agreement.images} {report.eval_source} "
            f"= {agreement.rate:.1%}, below the threshold {report.min_agreement:.1%} "
            f"(mean |Δp| of fp32's top-1 {agreement.mean_top1_delta:.4f}); "
            "calibrate on photos like the ones you serve (--calibration DIR), "
            "or lower --min-agreement if that drop is acceptable"
        )


@dataclass(frozen=True, slots=True)
class Agreement:
    """How closely the int8 model's answers follow the fp32 model's on the same images."""

    images: int
    agreeing: int
    mean_top1_delta: float  # mean over images of |p_fp32[c] - p_int8[c]|, c = fp32's top-1
    max_top1_delta: float

    @property
    def rate(self) -> float:
        """Fraction of images whose top-1 class is the same in both models."""
        return self.agreeing / self.images if self.images else 0.0


@dataclass(frozen=True, slots=True)
class QuantizationReport:
    """What `quantize_model` did, for the command to print."""

    fp32_path: Path
    int8_path: Path
    calibration_source: str
    calibration_images: int
    eval_source: str
    agreement: Agreement
    min_agreement: float
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    written: bool

    def __str__(self) -> str:
        a = self.agreement
        verdict = "wrote" if self.written else "did NOT write"
        return "\n".join(
            [
                f"{verdict} {self.int8_path}: {_mib(self.int8_bytes)} "
                f"(fp32 {self.fp32_path}: {_mib(self.fp32_bytes)}) in {self.seconds:.1f} s",
                "  quantization:  static, QDQ, U8S8 (uint8 activations, int8 weights), "
                "per-channel, MinMax",
                f"  calibrated on: {self.calibration_images} {self.calibration_source}",
                f"  evaluated on:  {a.images} {self.eval_source}",
                f"  top-1 agreement with fp32: {a.agreeing}/{a.images} = {a.rate:.1%} "
                f"(threshold {self.min_agreement:.1%})",
                f"  |Δp| of fp32's top-1 class: mean {a.mean_top1_delta:.4f}, "
                f"max {a.max_top1_delta:.4f}",
            ]
        )


def quantize_model(
    *,
    fp32_path: Path,
    int8_path: Path,
    calibration_dir: Path | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    eval_dir: Path | None = None,
    generated_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 2,
) -> QuantizationReport:
    """Quantize fp32_path to int8_path; below the gate raise AgreementTooLowError, write nothing."""
    if not 0.0 <= min_agreement <= 1.0:
        raise QuantizationError(f"min_agreement must be within 0..1, not {min_agreement}")
    if not fp32_path.is_file():
        raise QuantizationError(
            f"{fp32_path} does not exist: run `cross-pictures fetch-model` first"
        )
    started = time.perf_counter()
    if calibration_dir is None:
        calibration_source = f"generated images (seed {DEFAULT_SEED}, {_size_text()})"
        calibration = prepare_all(
            [(f"generated-{i}", png) for i, png in enumerate(generate_images(generated_images))],
            max_pixels=max_pixels,
        )
    else:
        calibration_source = f"images from {calibration_dir}"
        calibration = prepare_all(read_images(calibration_dir), max_pixels=max_pixels)
    if eval_dir is None:
        eval_source = f"calibration images (no --eval folder given; {calibration_source})"
        evaluation = calibration
    else:
        eval_source = f"images from {eval_dir}"
        evaluation = prepare_all(read_images(eval_dir), max_pixels=max_pixels)

    facts = _graph_facts(fp32_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=int8_path.parent, prefix=f".{int8_path.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(name)
    try:
        with tempfile.TemporaryDirectory(prefix="cross-pictures-quantize-") as work:
            prepared = Path(work) / "preprocessed.onnx"
            # Symbolic shape inference (sympy) is for transformer graphs; ONNX shape inference
            # plus the ORT optimizer (constant folding, BatchNorm fusion) is what a CNN needs.
            quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
            quantize_static(
                prepared,
                temp,
                TensorReader(facts.input_name, calibration, batch=facts.batch),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
        # The int8 graph ends in DequantizeLinear even where the fp32 one ends in Softmax.
        apply_softmax = not facts.ends_in_softmax
        agreement = compare(
            run_model(fp32_path, evaluation, threads=threads, apply_softmax=apply_softmax),
            run_model(temp, evaluation, threads=threads, apply_softmax=apply_softmax),
        )
        written = agreement.rate >= min_agreement
        report = QuantizationReport(
            fp32_path=fp32_path,
            int8_path=int8_path,
            calibration_source=calibration_source,
            calibration_images=len(calibration),
            eval_source=eval_source,
            agreement=agreement,
            min_agreement=min_agreement,
            fp32_bytes=fp32_path.stat().st_size,
            int8_bytes=temp.stat().st_size,
            seconds=time.perf_counter() - started,
            written=written,
        )
        if not written:
            raise AgreementTooLowError(report)
        _fsync(temp)
        os.replace(temp, int8_path)
        _fsync(int8_path.parent)
    finally:
        temp.unlink(missing_ok=True)
    return report


class TensorReader:
    """ONNX Runtime's CalibrationDataReader protocol over prepared tensors, `batch` at a time."""

    def __init__(self, input_name: str, tensors: FloatArray, *, batch: int = BATCH) -> None:
        self._input_name = input_name
        self._tensors = tensors
        self._batch = batch
        self._position = 0

    def get_next(self) -> dict[str, FloatArray] | None:
        """The next batch as session inputs, or None when every tensor has been given."""
        if self._position >= len(self._tensors):
            return None
        chunk = self._tensors[self._position : self._position + self._batch]
        self._position += len(chunk)
        return {self._input_name: chunk}

    def rewind(self) -> None:
        """Start again from the first tensor."""
        self._position = 0

    def __len__(self) -> int:
        return math.ceil(len(self._tensors) / self._batch)


def compare(fp32: FloatArray, int8: FloatArray) -> Agreement:
    """Top-1 agreement and top-1 probability drift between two [N, classes] probability arrays."""
    if fp32.shape != int8.shape or fp32.ndim != 2:
        raise ValueError(f"cannot compare probabilities of shapes {fp32.shape} and {int8.shape}")
    top = fp32.argmax(axis=1)
    rows = np.arange(len(fp32))
    delta = np.abs(fp32[rows, top].astype(np.float64) - int8[rows, top])
    return Agreement(
        images=len(fp32),
        agreeing=int((int8.argmax(axis=1) == top).sum()),
        mean_top1_delta=float(delta.mean()) if len(delta) else 0.0,
        max_top1_delta=float(delta.max()) if len(delta) else 0.0,
    )


def run_model(
    path: Path, tensors: FloatArray, *, threads: int, apply_softmax: bool = True
) -> FloatArray:
    """Class probabilities [N, classes] with the service's session options."""
    session = ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )
    model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
    batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else BATCH
    parts = [
        np.asarray(
            session.run([model_output.name], {model_input.name: tensors[i : i + batch]})[0],
            dtype=np.float32,
        ).reshape(len(tensors[i : i + batch]), -1)
        for i in range(0, len(tensors), batch)
    ]
    scores = np.concatenate(parts)
    return softmax(scores) if apply_softmax else scores


def read_images(directory: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of the image files directly in `directory`, sorted by name."""
    if not directory.is_dir():
        raise QuantizationError(f"{directory} is not a folder of images")
    files = sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise QuantizationError(f"{directory} holds no image files ({suffixes})")
    return [(p.name, p.read_bytes()) for p in files]


def prepare_all(images: Sequence[tuple[str, bytes]], *, max_pixels: int) -> FloatArray:
    """Run every image through the service's preprocessing: [N, 3, 224, 224] float32."""
    tensors = []
    for name, data in images:
        try:
            tensors.append(prepare_image(data, max_pixels=max_pixels).tensor)
        except CrossPicturesError as exc:
            raise QuantizationError(f"{name}: {exc}") from exc
    if not tensors:
        raise QuantizationError("no images to calibrate or evaluate on")
    return np.stack(tensors)


# -- generated calibration images -----------------------------------------------------------------


def generate_images(
    count: int = DEFAULT_CALIBRATION_IMAGES,
    *,
    seed: int = DEFAULT_SEED,
    size: tuple[int, int] = GENERATED_SIZE,
) -> list[bytes]:
    """`count` procedural, photo-like RGB images as PNG bytes; the same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    return [encode_png(_generated_image(rng, i, width, height)) for i in range(count)]


def _generated_image(rng: np.random.Generator, index: int, width: int, height: int) -> UInt8Array:
    """One image: a 1/f field, a gradient, occluding textured shapes, stripes, grain."""
    kind = index % 4
    # Natural images have ~1/f amplitude spectra and strongly correlated colour channels.
    background = _coloured(rng, _fractal(rng, height, width, rng.uniform(1.6, 2.6)))
    image = background + _coloured(rng, _gradient(rng, height, width)) * rng.uniform(0.3, 1.0)
    if kind in (1, 2, 3):
        image = _dead_leaves(rng, image, leaves=int(rng.integers(8, 60)))
    if kind in (2, 3):
        image = image + _coloured(rng, _stripes(rng, height, width)) * rng.uniform(0.1, 0.5)
    # Grain at pixel scale, as sensor noise and fine texture would add.
    image = image + rng.normal(0.0, rng.uniform(0.005, 0.05), size=image.shape)
    # Exposure: some dim, some bright, some clipped at both ends, as real photos are.
    low, high = np.percentile(image, [rng.uniform(0, 3), rng.uniform(97, 100)])
    image = (image - low) / max(high - low, 1e-6)
    image = image * rng.uniform(0.5, 1.1) + rng.uniform(-0.05, 0.3)
    gamma = rng.uniform(0.7, 1.5)
    pixels: UInt8Array = (np.clip(image, 0.0, 1.0) ** gamma * 255.0 + 0.5).astype(np.uint8)
    return pixels


def _fractal(rng: np.random.Generator, height: int, width: int, exponent: float) -> Float64Array:
    """Gaussian noise with a 1/f^(exponent/2) amplitude spectrum, scaled to unit std."""
    fy = np.fft.fftfreq(height)[:, np.newaxis]
    fx = np.fft.rfftfreq(width)[np.newaxis, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    amplitude = radius ** (-exponent / 2.0)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (
        rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape)
    )
    field = np.fft.irfft2(spectrum, s=(height, width))
    return np.asarray(field / (field.std() + 1e-12), dtype=np.float64)


def _gradient(rng: np.random.Generator, height: int, width: int) -> Float64Array:
    """A linear ramp in a random direction, like sky or lighting falling off."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    y, x = np.mgrid[0:height, 0:width]
    ramp = (x * math.cos(angle) + y * math.sin(angle)) / max(height, width)
    return np.asarray((ramp - ramp.mean()) * 2.0, dtype=np.float64)


def _stripes(rng: np.random.Generator, height: int, width: int) -> Float64Array:
    """A sinusoidal grating (fabric, fences, fur) of random period and orientation."""
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(3.0, 40.0)
    y, x = np.mgrid[0:height, 0:width]
    phase = (x * math.cos(angle) + y * math.sin(angle)) * (2.0 * math.pi / period)
    return np.asarray(np.sin(phase), dtype=np.float64)


def _coloured(rng: np.random.Generator, field: Float64Array) -> Float64Array:
    """A scalar field as an RGB image (H, W, 3): mostly luminance, a little random hue."""
    tint = np.array([1.0, 1.0, 1.0]) + rng.normal(0.0, 0.35, size=3)
    return field[..., np.newaxis] * (0.25 * tint) + rng.uniform(0.2, 0.8, size=3)


def _dead_leaves(rng: np.random.Generator, image: Float64Array, *, leaves: int) -> Float64Array:
    """Paint occluding ellipses and rectangles with power-law sizes, each with its own texture."""
    height, width, _ = image.shape
    out = image.copy()
    # A few textures shared by all leaves (an FFT per leaf is too slow), each leaf its own sign.
    textures = [_fractal(rng, height, width, exponent) for exponent in (1.2, 2.0, 2.8)]
    for _ in range(leaves):
        # Power-law sizes: few large objects, many small ones (scale invariance of scenes).
        radius = min(height, width) * 0.5 * rng.uniform(0.03, 1.0) ** 2.0 + 2.0
        aspect = rng.uniform(0.4, 2.5)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = max(0, int(cy - radius)), min(height, int(cy + radius) + 1)
        x0, x1 = max(0, int(cx - radius * aspect)), min(width, int(cx + radius * aspect) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        y, x = np.ogrid[y0:y1, x0:x1]
        ellipse = rng.random() < 0.5
        colour = rng.uniform(0.0, 1.0, size=3) * rng.uniform(0.3, 1.0) + rng.uniform(0.0, 0.3)
        texture = textures[int(rng.integers(len(textures)))][y0:y1, x0:x1, np.newaxis]
        leaf = colour + texture * (rng.choice([-1.0, 1.0]) * rng.uniform(0.02, 0.15))
        if ellipse:
            inside = (y - cy) ** 2 + ((x - cx) / aspect) ** 2 < radius**2
            np.copyto(out[y0:y1, x0:x1], leaf, where=inside[..., np.newaxis])
        else:
            out[y0:y1, x0:x1] = leaf
    return out


def encode_png(pixels: UInt8Array) -> bytes:
    """An 8-bit RGB (H, W, 3) array as PNG bytes, with zlib only (Pillow stays in preprocessing)."""
    height, width, channels = pixels.shape
    if channels != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"need uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    # Filter type 0 (None) in front of every row.
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
            chunk(b"IEND", b""),
        ]
    )


# -- helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GraphFacts:
    input_name: str
    batch: int  # images per run: BATCH, or the model's fixed batch size (the zoo's declares 1)
    ends_in_softmax: bool


def _graph_facts(model_path: Path) -> _GraphFacts:
    try:
        graph = onnx.load(str(model_path), load_external_data=False).graph
    except (OSError, DecodeError) as exc:
        raise QuantizationError(f"{model_path} is not a readable ONNX model: {exc}") from exc
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise QuantizationError(f"{model_path} needs one input and one output to be quantized")
    dims = graph.input[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    producers = {out: node.op_type for node in graph.node for out in node.output}
    return _GraphFacts(
        input_name=graph.input[0].name,
        batch=min(BATCH, fixed) if fixed > 0 else BATCH,
        ends_in_softmax=producers.get(graph.output[0].name) == "Softmax",
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _size_text() -> str:
    return f"{GENERATED_SIZE[0]}×{GENERATED_SIZE[1]}"
