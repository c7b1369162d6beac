"""The int8 model: ONNX Runtime static quantization (QDQ, U8S8, per-channel, MinMax) behind a gate.

Calibration photos come from a folder, or by default from the ten CC0 / public-domain photos
shipped in `cross_pictures/calibration` (scikit-image samples, not ImageNet photos). Each photo is
expanded into 7 views (itself, its mirror image, four corner crops and a center crop of 55% size)
and every view goes through the service's own `prepare_image`, so the activation ranges are those
of what the service will feed the model. After quantizing, the int8 model and the fp32 model
classify the evaluation images with the service's session options; the int8 model is written
(atomically) only if its top-1 agrees with fp32 on at least `min_agreement` of the images fp32
classifies with confidence (see CONFIDENT). Without an evaluation folder that check is in-sample
(the calibration views) and flatters the int8 model.

Offline tool, not on the request path: it uses Pillow directly to make the views.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np
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
from PIL import Image, ImageOps

from cross_pictures.errors import CrossPicturesError
from cross_pictures.inference import FloatArray, session_options, softmax
from cross_pictures.preprocessing import RESIZE_SHORTER, prepare_image

# The gate counts only images whose fp32 top-1 probability is at least CONFIDENT. Where fp32 is
# unsure, its top two classes are near-tied and any rounding flips them, good quantization or
# bad: on the shipped photos' own views (grass, gravel, a galaxy field...) a good int8 model keeps
# fp32's top-1 on 59/70 views and a badly calibrated one (4 colour-blob images) on 56/70, no
# signal; on the views fp32 is confident about the two score 30/30 and 26/30.
CONFIDENT: Final = 0.5
# Measured (bench/RESULTS.md has the commands): calibrated on the shipped photos, U8S8 keeps
# fp32's top-1 on 91/93 of the ImageNet dev photos fp32 is confident about (96/100 of all;
# mean |Δp| 0.045) and on 30/30 confident calibration views; the badly calibrated model scores
# 79/93 (83/100 of all; mean |Δp| 0.265) and 26/30. 0.95 passes the first and refuses the second.
DEFAULT_MIN_AGREEMENT: Final = 0.95
# The default calibration photos, inside the package (see calibration/README.md).
SHIPPED_CALIBRATION: Final = "calibration"
# Each calibration image becomes VIEWS_PER_IMAGE views: itself, its mirror image, and crops of
# CROP_FRACTION of its width and height at the four corners and the center. Ten photos with their
# views calibrate as well as many more photos would (94/100 agreement without the views, 96/100
# with them), because the activation ranges also cover objects at a larger scale and off-center.
VIEWS_PER_IMAGE: Final = 7
CROP_FRACTION: Final = 0.55
# A big photo is box-reduced before its views are made, as long as a crop's shorter side stays at
# least twice the 256-pixel resize: the service approximates big images the same way, and lossless
# PNG views of a 12-megapixel photo would be slow to encode and decode for nothing.
_VIEW_MIN_SIDE: Final = 2 * RESIZE_SHORTER
# Modes a PNG holds as they are; others are converted the way the service's preprocessing does.
_PNG_MODES: Final = frozenset({"L", "LA", "RGB", "RGBA", "I;16", "I;16B"})
# Everything Pillow raises for bytes it cannot decode (the service has already accepted them).
_DECODE_ERRORS: Final = (OSError, ValueError, SyntaxError, EOFError, RuntimeError)
# Images per session.run while calibrating and evaluating: amortizes the run, bounds the memory.
BATCH: Final = 8
DEFAULT_MAX_PIXELS: Final = 50_000_000
IMAGE_SUFFIXES: Final = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


class QuantizationError(CrossPicturesError):
    """Quantization could not run: no usable calibration or evaluation images, bad arguments."""


class AgreementTooLowError(QuantizationError):
    """The int8 model disagrees with fp32 too often; it was not written."""

    def __init__(self, report: QuantizationReport) -> None:
        self.report = report
        agreement = report.agreement
        super().__init__(
            f"refusing to write {report.int8_path}: int8 top-1 agrees with fp32 on "
            f"{agreement.gated_counts()} of {agreement.images} {report.eval_source} "
            f"= {agreement.gated_rate:.1%}, below the threshold {report.min_agreement:.1%} "
            f"(mean |Δp| of fp32's top-1 {agreement.mean_top1_delta:.4f}); "
            "calibrate on photos like the ones you serve (--calibration DIR), "
            "or lower --min-agreement if that drop is acceptable"
        )


@dataclass(frozen=True, slots=True)
class Agreement:
    """How closely the int8 model's answers follow the fp32 model's on the same images."""

    images: int
    agreeing: int
    confident_images: int  # images whose fp32 top-1 probability is at least CONFIDENT
    confident_agreeing: int
    mean_top1_delta: float  # mean over images of |p_fp32[c] - p_int8[c]|, c = fp32's top-1
    max_top1_delta: float

    @property
    def rate(self) -> float:
        """Fraction of images whose top-1 class is the same in both models."""
        return self.agreeing / self.images if self.images else 0.0

    @property
    def gated_rate(self) -> float:
        """What the gate checks: agreement where fp32 is confident (all images if it never is)."""
        if self.confident_images:
            return self.confident_agreeing / self.confident_images
        return self.rate

    def gated_counts(self) -> str:
        """`agreeing/images` of the gated set, for messages."""
        if self.confident_images:
            return f"{self.confident_agreeing}/{self.confident_images} confident"
        return f"{self.agreeing}/{self.images} (fp32 confident on none)"


@dataclass(frozen=True, slots=True)
class QuantizationReport:
    """What `quantize_model` did, for the command to print."""

    fp32_path: Path
    int8_path: Path
    calibration_source: str
    calibration_photos: int
    calibration_images: int  # the views the model was calibrated on, VIEWS_PER_IMAGE per photo
    eval_source: str
    eval_in_sample: bool  # evaluated on the calibration views: no --eval folder was given
    agreement: Agreement
    min_agreement: float
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    written: bool

    def __str__(self) -> str:
        a = self.agreement
        verdict = "wrote" if self.written else "did NOT write"
        lines = [
            f"{verdict} {self.int8_path}: {_mib(self.int8_bytes)} "
            f"(fp32 {self.fp32_path}: {_mib(self.fp32_bytes)}) in {self.seconds:.1f} s",
            "  quantization:  static, QDQ, U8S8 (uint8 activations, int8 weights), "
            "per-channel, MinMax",
            f"  calibrated on: {self.calibration_images} views (each image, its mirror, "
            f"5 crops) of {self.calibration_photos} {self.calibration_source}",
            f"  evaluated on:  {a.images} {self.eval_source}",
            f"  top-1 agreement with fp32: {a.gated_counts()} = {a.gated_rate:.1%} "
            f"(threshold {self.min_agreement:.1%}; images with fp32 top-1 >= {CONFIDENT:.0%})",
            f"  top-1 agreement, all images: {a.agreeing}/{a.images} = {a.rate:.1%}",
            f"  |Δp| of fp32's top-1 class: mean {a.mean_top1_delta:.4f}, "
            f"max {a.max_top1_delta:.4f}",
        ]
        if self.eval_in_sample:
            lines.append(
                "  IN-SAMPLE: these figures come from the images the model was calibrated on and "
                "flatter it; the real check is --eval DIR with held-out photos like the ones "
                "you serve"
            )
        return "\n".join(lines)


def quantize_model(
    *,
    fp32_path: Path,
    int8_path: Path,
    calibration_dir: Path | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    eval_dir: Path | None = None,
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
        calibration_source = (
            "photos shipped with cross-pictures (scikit-image samples, CC0 / public domain, "
            "not ImageNet photos)"
        )
        photos = shipped_images()
    else:
        calibration_source = f"images from {calibration_dir}"
        photos = read_images(calibration_dir)
    calibration = prepare_views(photos, max_pixels=max_pixels)
    if eval_dir is None:
        eval_source = "calibration views (in-sample: no --eval folder given)"
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
        written = agreement.gated_rate >= min_agreement
        report = QuantizationReport(
            fp32_path=fp32_path,
            int8_path=int8_path,
            calibration_source=calibration_source,
            calibration_photos=len(photos),
            calibration_images=len(calibration),
            eval_source=eval_source,
            eval_in_sample=eval_dir is None,
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
    agrees = int8.argmax(axis=1) == top
    confident = fp32[rows, top] >= CONFIDENT
    return Agreement(
        images=len(fp32),
        agreeing=int(agrees.sum()),
        confident_images=int(confident.sum()),
        confident_agreeing=int((agrees & confident).sum()),
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
    files = sorted(p for p in directory.iterdir() if p.is_file() and _is_image_name(p.name))
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise QuantizationError(f"{directory} holds no image files ({suffixes})")
    return [(p.name, p.read_bytes()) for p in files]


def shipped_images() -> list[tuple[str, bytes]]:
    """(name, bytes) of the calibration photos shipped in the package, sorted by name."""
    folder = resources.files("cross_pictures").joinpath(SHIPPED_CALIBRATION)
    files = (
        sorted(
            (e for e in folder.iterdir() if e.is_file() and _is_image_name(e.name)),
            key=lambda e: e.name,
        )
        if folder.is_dir()
        else []
    )
    if not files:
        raise QuantizationError(
            "the calibration photos shipped in cross_pictures/calibration are missing "
            "(a broken install?); pass --calibration DIR"
        )
    return [(e.name, e.read_bytes()) for e in files]


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


def prepare_views(images: Sequence[tuple[str, bytes]], *, max_pixels: int) -> FloatArray:
    """The VIEWS_PER_IMAGE views of every image, through the service's preprocessing."""
    tensors = []
    for name, data in images:
        try:
            # The image itself exactly as the service sees it; this also refuses, with the
            # service's message, anything it would refuse, before Pillow decodes it again.
            tensors.append(prepare_image(data, max_pixels=max_pixels).tensor)
            tensors.extend(
                prepare_image(view, max_pixels=max_pixels).tensor for view in extra_views(data)
            )
        except CrossPicturesError as exc:
            raise QuantizationError(f"{name}: {exc}") from exc
    if not tensors:
        raise QuantizationError("no images to calibrate on")
    return np.stack(tensors)


def extra_views(data: bytes) -> list[bytes]:
    """The mirror image and the 4 corner and center crops of CROP_FRACTION size, as PNG bytes.

    `data` must be an image the service accepts (prepare_image has read it): the pixel limit and
    the format allow-list are checked there.
    """
    with warnings.catch_warnings():
        # prepare_image has applied MAX_IMAGE_PIXELS; Pillow's own bomb limit is not ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                try:
                    image = ImageOps.exif_transpose(opened)
                except _DECODE_ERRORS:
                    image = opened.copy()  # a broken EXIF block: the service ignores it too
        except _DECODE_ERRORS as exc:
            raise QuantizationError(f"cannot decode the image for its views: {exc}") from exc
    image = _reduced(_png_mode(image))
    width, height = image.size
    crop_w, crop_h = max(1, int(width * CROP_FRACTION)), max(1, int(height * CROP_FRACTION))
    corners = [
        (0, 0),
        (width - crop_w, 0),
        (0, height - crop_h),
        (width - crop_w, height - crop_h),
        ((width - crop_w) // 2, (height - crop_h) // 2),
    ]
    views = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    views += [image.crop((x, y, x + crop_w, y + crop_h)) for x, y in corners]
    return [_encode_png(view) for view in views]


def _png_mode(image: Image.Image) -> Image.Image:
    """`image` in a mode PNG stores losslessly, converted as the service's preprocessing would."""
    mode = image.mode
    if "transparency" in image.info and mode in ("1", "L", "RGB", "P"):
        return image.convert("LA" if mode in ("1", "L") else "RGBA")
    if mode in _PNG_MODES:
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("I;16L", "I;16N"):
        return image.convert("I;16")
    if mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if mode in ("I", "F"):
        # The service maps these onto 8 bits by their value range; a PNG view cannot say that.
        raise QuantizationError(
            f"{mode!r} (32-bit integer or float) images cannot be calibration images; "
            "use 8- or 16-bit photos"
        )
    return image.convert("RGB")  # P, CMYK, YCbCr, ...


def _reduced(image: Image.Image) -> Image.Image:
    """`image` box-reduced by an integer factor while a crop's shorter side stays >= 512."""
    factor = int(min(image.size) * CROP_FRACTION) // _VIEW_MIN_SIDE
    if factor < 2:
        return image
    size = (max(1, image.width // factor), max(1, image.height // factor))
    return image.resize(size, Image.Resampling.BOX)


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # lossless either way; level 1 is fast
    return buffer.getvalue()


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


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
