"""Open Inference Protocol (KServe v2) REST endpoints for the one loaded model.

Speaks the protocol as Triton's and KServe's clients expect it: `{"error": ...}` bodies, the
classification extension (top-K as "score:index:label" strings) and the binary tensor data
extension (tensors after the JSON header, sized by `Inference-Header-Content-Length`).
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import zlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from cross_pictures import __version__
from cross_pictures.api.errors import (
    CLIENT_CLOSED_REQUEST,
    RETRY_AFTER_SECONDS,
    count_rejection,
    status_for,
)
from cross_pictures.api.routes import get_settings, get_state, get_upload_slots
from cross_pictures.api.uploads import (
    ClientGone,
    Reservation,
    UploadSlots,
    cancel_if_client_leaves,
    declared_length,
    receiving,
)
from cross_pictures.api.v2_schemas import (
    ErrorBody,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from cross_pictures.config import Settings
from cross_pictures.errors import CrossPicturesError
from cross_pictures.inference import FloatArray, top_k
from cross_pictures.preprocessing import INPUT_SIZE
from cross_pictures.service import ClassificationService, ServiceState

SERVER_NAME = "cross_pictures"
EXTENSIONS = ["classification", "binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"
MODEL_VERSION = "1"
IMAGE_INPUT = "image"
DATA_INPUT = "data"
OUTPUT = "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"

IMAGE_SHAPE = (3, INPUT_SIZE, INPUT_SIZE)
IMAGE_ELEMENTS = math.prod(IMAGE_SHAPE)
# A float32 written by a JSON encoder: up to 17 significant digits, sign, exponent, separator.
JSON_BYTES_PER_FLOAT = 32
# The JSON around the tensors: names, shapes, parameters, outputs.
HEADER_OVERHEAD_BYTES = 64 * 1024
DECOMPRESS_PIECE_BYTES = 1 << 20
_LENGTH_PREFIX = struct.Struct("<I")


class ProtocolError(Exception):
    """A request the protocol answers with `{"error": message}` and this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def v2_error(status: int, message: str) -> JSONResponse:
    """The protocol's error body; Retry-After where retrying will help."""
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return JSONResponse(ErrorBody(error=message).model_dump(), status, headers=headers)


def _describe_errors(errors: Sequence[Any]) -> str:
    parts = []
    for error in errors:
        location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "path"))
        parts.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
    return "; ".join(parts)


class V2Route(APIRoute):
    """Answers every failure on the v2 routes in the protocol's `{"error": ...}` shape.

    Local to these routes, so the rest of the API keeps FastAPI's `{"detail": ...}` bodies.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_v2(request: Request) -> Response:
            try:
                return await handle(request)
            except ProtocolError as exc:
                return v2_error(exc.status, exc.message)
            except CrossPicturesError as exc:
                count_rejection(request, exc)
                return v2_error(status_for(exc), str(exc))
            except RequestValidationError as exc:
                return v2_error(400, _describe_errors(exc.errors()))
            except ClientGone:
                return v2_error(CLIENT_CLOSED_REQUEST, "the client disconnected")

        return handle_v2


router = APIRouter(route_class=V2Route, tags=["inference protocol v2"])

SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ServiceState, Depends(get_state)]
SlotsDep = Annotated[UploadSlots, Depends(get_upload_slots)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request or bad image"},
    404: {"model": ErrorBody, "description": "Unknown model or version"},
    408: {"model": ErrorBody, "description": "The body did not arrive within UPLOAD_TIMEOUT_S"},
    413: {"model": ErrorBody, "description": "Too many images, or an image or body too large"},
    415: {"model": ErrorBody, "description": "An element is not an image we can decode"},
    503: {"model": ErrorBody, "description": "Not ready or overloaded (see Retry-After)"},
    504: {"model": ErrorBody, "description": "Waited longer than REQUEST_TIMEOUT_S"},
}


def _check_model(settings: Settings, name: str, version: str | None) -> None:
    if name != settings.model_name:
        raise ProtocolError(
            404, f"model '{name}' is not served here; the model is '{settings.model_name}'"
        )
    if version is not None and version != MODEL_VERSION:
        raise ProtocolError(
            404, f"model '{name}' has no version '{version}'; its one version is '{MODEL_VERSION}'"
        )


def _ready_service(state: ServiceState) -> ClassificationService:
    reason = state.not_ready_reason()
    if reason is not None or state.service is None:
        raise ProtocolError(503, f"the model is not ready: {reason}; retry in a few seconds")
    return state.service


# --- health and metadata -------------------------------------------------------------------


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@router.get("/v2/health/live", summary="Liveness: the server answers")
async def server_live() -> LiveResponse:
    return LiveResponse()


@router.get(
    "/v2/health/ready",
    summary="Readiness: model loaded, warmed up, not shutting down",
    responses={503: ERRORS[503]},
)
async def server_ready(state: StateDep) -> ReadyResponse:
    _ready_service(state)
    return ReadyResponse()


def _model_metadata(settings: Settings, state: ServiceState) -> ModelMetadata:
    service = state.service
    if service is None:
        raise ProtocolError(503, "the model is not loaded yet; retry in a few seconds")
    return ModelMetadata(
        name=settings.model_name,
        versions=[MODEL_VERSION],
        platform=PLATFORM,
        inputs=[
            TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1]),
            TensorMetadata(name=DATA_INPUT, datatype="FP32", shape=[-1, *IMAGE_SHAPE]),
        ],
        outputs=[TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, len(service.labels)])],
    )


_METADATA: dict[str, Any] = {
    "summary": "Model metadata: platform, inputs and outputs (-1 is the batch axis)",
    "description": f"Send one input per request: `{IMAGE_INPUT}` (BYTES [N], encoded images) "
    f"or `{DATA_INPUT}` (FP32 [N,3,224,224], preprocessed).",
    "responses": {404: ERRORS[404], 503: ERRORS[503]},
}


@router.get("/v2/models/{model_name}", **_METADATA)
async def model_metadata(model_name: str, settings: SettingsDep, state: StateDep) -> ModelMetadata:
    _check_model(settings, model_name, None)
    return _model_metadata(settings, state)


@router.get("/v2/models/{model_name}/versions/{model_version}", **_METADATA)
async def model_version_metadata(
    model_name: str, model_version: str, settings: SettingsDep, state: StateDep
) -> ModelMetadata:
    _check_model(settings, model_name, model_version)
    return _model_metadata(settings, state)


_READY: dict[str, Any] = {
    "summary": "Model readiness",
    "responses": {404: ERRORS[404], 503: ERRORS[503]},
}


@router.get("/v2/models/{model_name}/ready", **_READY)
async def model_ready(
    model_name: str, settings: SettingsDep, state: StateDep
) -> ModelReadyResponse:
    _check_model(settings, model_name, None)
    _ready_service(state)
    return ModelReadyResponse(name=model_name)


@router.get("/v2/models/{model_name}/versions/{model_version}/ready", **_READY)
async def model_version_ready(
    model_name: str, model_version: str, settings: SettingsDep, state: StateDep
) -> ModelReadyResponse:
    _check_model(settings, model_name, model_version)
    _ready_service(state)
    return ModelReadyResponse(name=model_name)


# --- inference -----------------------------------------------------------------------------


def body_limit(settings: Settings) -> int:
    """The largest body a valid request can need: MAX_BATCH_IMAGES of the largest element."""
    base64_image = 4 * math.ceil(settings.max_upload_bytes / 3)
    json_tensor = IMAGE_ELEMENTS * JSON_BYTES_PER_FLOAT
    return settings.max_batch_images * max(base64_image, json_tensor) + HEADER_OVERHEAD_BYTES


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(
        413,
        f"the request body is larger than {limit} bytes, the most MAX_BATCH_IMAGES elements "
        "can need; send fewer or smaller images",
    )


async def _read_body(request: Request, limit: int, reservation: Reservation) -> bytearray:
    declared = declared_length(request)
    if declared is not None:
        if declared > limit:
            raise _too_large(limit)  # refuse before reading a byte we would throw away
        reservation.cover(declared)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:  # chunked bodies declare no length up front
                raise _too_large(limit)
            reservation.cover(len(body))
    except ClientDisconnect as exc:
        raise ClientGone from exc
    return _decompress(body, request.headers.get("content-encoding", ""), limit, reservation)


def _decompress(body: bytearray, encoding: str, limit: int, reservation: Reservation) -> bytearray:
    # tritonclient compresses requests with gzip or deflate when asked to.
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(400, f"Content-Encoding '{encoding}' is not supported; use gzip")
    wbits = zlib.MAX_WBITS | (16 if encoding == "gzip" else 32)
    decompressor = zlib.decompressobj(wbits)
    plain = bytearray()
    pending: bytes = bytes(body)
    try:
        # A piece at a time, each counted against the upload memory budget: a 1 MB gzip body
        # can inflate to a gigabyte.
        while pending or not decompressor.eof:
            piece = decompressor.decompress(pending, DECOMPRESS_PIECE_BYTES)
            pending = decompressor.unconsumed_tail
            if not piece and not pending:
                break
            plain += piece
            if len(plain) > limit:
                raise _too_large(limit)
            reservation.cover(len(body) + len(plain))
    except zlib.error as exc:
        raise ProtocolError(400, f"the {encoding} body cannot be decompressed: {exc}") from exc
    if not decompressor.eof:
        raise ProtocolError(400, f"the {encoding} body is truncated")
    return plain


def _split_header(request: Request, body: bytearray) -> tuple[bytearray, memoryview]:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return body, memoryview(b"")
    if not value.strip().isdecimal() or int(value) > len(body):
        raise ProtocolError(
            400, f"{HEADER_LENGTH}: {value!r} is not a length within the {len(body)}-byte body"
        )
    size = int(value)
    return body[:size], memoryview(body)[size:]


def _parse_request(header: bytearray) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        message = "invalid inference request: " + _describe_errors(exc.errors())
        raise ProtocolError(400, message) from None


def _the_input(infer: InferenceRequest) -> RequestInput:
    names = [tensor.name for tensor in infer.inputs]
    if len(names) != 1:
        raise ProtocolError(
            400,
            f"send exactly one input, '{IMAGE_INPUT}' or '{DATA_INPUT}'; got {len(names)}: "
            + ", ".join(repr(n) for n in names),
        )
    tensor = infer.inputs[0]
    if tensor.name not in (IMAGE_INPUT, DATA_INPUT):
        raise ProtocolError(
            400,
            f"unknown input '{tensor.name}'; this model takes '{IMAGE_INPUT}' (BYTES, encoded "
            f"images) or '{DATA_INPUT}' (FP32 [N,3,224,224])",
        )
    return tensor


def _binary_part(tensor: RequestInput, binary: memoryview) -> memoryview | None:
    """The tensor's bytes after the JSON header, or None when its data is in the JSON."""
    size = tensor.parameters.binary_data_size if tensor.parameters else None
    if size is None:
        if len(binary):
            raise ProtocolError(
                400,
                f"{len(binary)} bytes follow the JSON header but input '{tensor.name}' declares "
                "no parameters.binary_data_size",
            )
        if tensor.data is None:
            raise ProtocolError(
                400, f"input '{tensor.name}' has no data: send 'data' or binary_data_size"
            )
        return None
    if tensor.data is not None:
        raise ProtocolError(
            400, f"input '{tensor.name}' has both JSON 'data' and binary_data_size; send one"
        )
    sizes = size if isinstance(size, list) else [size]
    if any(s < 0 for s in sizes) or sum(sizes) != len(binary):
        raise ProtocolError(
            400,
            f"input '{tensor.name}' declares binary_data_size {size} but {len(binary)} bytes "
            "follow the JSON header",
        )
    return binary


def _batch_size(tensor: RequestInput, shape: list[int], settings: Settings) -> int:
    count = shape[0]
    if count < 1:
        raise ProtocolError(400, f"input '{tensor.name}' has shape {shape}: no elements")
    if count > settings.max_batch_images:
        raise ProtocolError(
            413,
            f"input '{tensor.name}' has {count} elements; at most {settings.max_batch_images} "
            "may be sent in one request (MAX_BATCH_IMAGES)",
        )
    return count


def _check_element_size(index: int, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ProtocolError(
            413,
            f"input '{IMAGE_INPUT}' element {index} has {size} bytes, more than "
            f"MAX_UPLOAD_BYTES={max_bytes}; send a smaller image",
        )


def _image_elements(
    tensor: RequestInput, binary: memoryview | None, settings: Settings
) -> list[bytes]:
    """The encoded images of a BYTES [N] input, from JSON base64 strings or binary data."""
    if tensor.datatype != "BYTES":
        raise ProtocolError(
            400, f"input '{IMAGE_INPUT}' must have datatype BYTES, not {tensor.datatype}"
        )
    if len(tensor.shape) != 1:
        raise ProtocolError(
            400,
            f"input '{IMAGE_INPUT}' must have shape [N] (one encoded image each), "
            f"not {tensor.shape}",
        )
    count = _batch_size(tensor, tensor.shape, settings)
    max_bytes = settings.max_upload_bytes
    if binary is None:
        images = _base64_elements(tensor, max_bytes)
    else:
        size = tensor.parameters.binary_data_size if tensor.parameters else None
        images = _sized_elements(binary, size) if isinstance(size, list) else _prefixed(binary)
        for index, image in enumerate(images):
            _check_element_size(index, len(image), max_bytes)
    if len(images) != count:
        raise ProtocolError(
            400, f"input '{IMAGE_INPUT}' has shape [{count}] but carries {len(images)} elements"
        )
    return images


def _base64_elements(tensor: RequestInput, max_bytes: int) -> list[bytes]:
    # JSON cannot carry raw image bytes (they are not UTF-8), so BYTES elements in JSON are
    # base64, as MLServer's content_type "base64" and OpenVINO Model Server expect.
    content_type = tensor.parameters.content_type if tensor.parameters else None
    if content_type not in (None, "base64"):
        raise ProtocolError(
            400,
            f"input '{IMAGE_INPUT}' has content_type {content_type!r}; images in JSON must be "
            "base64 strings (content_type 'base64'), or send them as binary data",
        )
    max_chars = 4 * math.ceil(max_bytes / 3)
    images = []
    for index, element in enumerate(tensor.data or []):
        if not isinstance(element, str):
            raise ProtocolError(
                400,
                f"input '{IMAGE_INPUT}' element {index} is {type(element).__name__}, not a "
                "base64 string of the encoded image",
            )
        if len(element) > max_chars:
            _check_element_size(index, len(element) * 3 // 4, max_bytes)
        try:
            images.append(base64.b64decode(element, validate=True))
        except ValueError as exc:
            raise ProtocolError(
                400,
                f"input '{IMAGE_INPUT}' element {index} is not valid base64 ({exc}); in JSON, "
                "send each encoded image base64-encoded",
            ) from exc
    return images


def _prefixed(binary: memoryview) -> list[bytes]:
    """Triton's BYTES serialization: each element a 4-byte little-endian length, then bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(binary):
        if offset + _LENGTH_PREFIX.size > len(binary):
            raise ProtocolError(
                400, f"input '{IMAGE_INPUT}' binary data ends inside a 4-byte length prefix"
            )
        (size,) = _LENGTH_PREFIX.unpack_from(binary, offset)
        offset += _LENGTH_PREFIX.size
        if offset + size > len(binary):
            raise ProtocolError(
                400,
                f"input '{IMAGE_INPUT}' element {len(elements)} declares {size} bytes but only "
                f"{len(binary) - offset} remain",
            )
        elements.append(bytes(binary[offset : offset + size]))
        offset += size
    return elements


def _sized_elements(binary: memoryview, sizes: list[int]) -> list[bytes]:
    """OpenVINO Model Server's form: binary_data_size lists each element's size."""
    elements = []
    offset = 0
    for size in sizes:
        elements.append(bytes(binary[offset : offset + size]))
        offset += size
    return elements


def _fp32_batch(tensor: RequestInput, binary: memoryview | None, settings: Settings) -> FloatArray:
    """The FP32 [N,3,224,224] input as an array, from JSON numbers or binary data."""
    expected = f"[N,{','.join(str(d) for d in IMAGE_SHAPE)}]"
    if tensor.datatype != "FP32":
        raise ProtocolError(
            400, f"input '{DATA_INPUT}' must have datatype FP32, not {tensor.datatype}"
        )
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != IMAGE_SHAPE:
        raise ProtocolError(
            400, f"input '{DATA_INPUT}' must have shape {expected}, not {tensor.shape}"
        )
    count = _batch_size(tensor, tensor.shape, settings)
    elements = count * IMAGE_ELEMENTS
    if binary is None:
        try:
            array = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(
                400, f"input '{DATA_INPUT}' data must be numbers (flat or nested): {exc}"
            ) from exc
        found = f"{array.size} numbers"
    else:
        if len(binary) % 4:
            raise ProtocolError(
                400, f"input '{DATA_INPUT}' has {len(binary)} bytes, not a whole number of FP32"
            )
        array = np.frombuffer(binary, dtype="<f4").astype(np.float32, copy=False)
        found = f"{len(binary)} bytes ({array.size} FP32)"
    if array.size != elements:
        raise ProtocolError(
            400, f"input '{DATA_INPUT}' has shape {tensor.shape} ({elements} FP32) but {found}"
        )
    if not np.isfinite(array).all():
        raise ProtocolError(
            400, f"input '{DATA_INPUT}' contains NaN or infinity (or numbers beyond FP32's range)"
        )
    return array.reshape(count, *IMAGE_SHAPE)


async def _image_probabilities(service: ClassificationService, images: list[bytes]) -> FloatArray:
    # Decoded together, so the runner sees them together and can batch them.
    prepared = await asyncio.gather(*(service.prepare(i) for i in images), return_exceptions=True)
    tensors = []
    for index, outcome in enumerate(prepared):
        if isinstance(outcome, CrossPicturesError):
            raise ProtocolError(
                status_for(outcome), f"input '{IMAGE_INPUT}' element {index}: {outcome}"
            )
        if isinstance(outcome, BaseException):
            raise outcome  # a bug, not a bad image: let it be a 500
        tensors.append(outcome.tensor)
    probabilities, _ = await service.probabilities(np.stack(tensors))
    return probabilities


def _requested(infer: InferenceRequest) -> list[tuple[RequestOutput, bool]]:
    """The outputs to return, each with whether it goes as binary data."""
    binary_default = infer.parameters.binary_data_output if infer.parameters else False
    outputs = infer.outputs or [RequestOutput(name=OUTPUT)]
    seen: set[str] = set()
    requested = []
    for output in outputs:
        if output.name != OUTPUT:
            raise ProtocolError(
                400, f"unknown output '{output.name}'; this model has one output, '{OUTPUT}'"
            )
        if output.name in seen:
            raise ProtocolError(400, f"output '{output.name}' is requested twice")
        seen.add(output.name)
        asked = output.parameters.binary_data if output.parameters else None
        requested.append((output, binary_default if asked is None else asked))
    return requested


def classification_strings(probabilities: FloatArray, labels: Sequence[str], k: int) -> list[str]:
    """Triton's classification extension: "score:index:label", best first, row after row."""
    # Triton formats the score with C++ std::to_string, i.e. printf("%f").
    return [
        f"{p.confidence:f}:{p.index}:{p.label}"
        for row in probabilities
        for p in top_k(row, labels, k)
    ]


def _serialize_strings(strings: list[str]) -> bytes:
    parts = []
    for string in strings:
        data = string.encode("utf-8")
        parts += [_LENGTH_PREFIX.pack(len(data)), data]
    return b"".join(parts)


def _output_tensor(
    output: RequestOutput, binary: bool, probabilities: FloatArray, labels: Sequence[str]
) -> tuple[ResponseOutput, bytes | None]:
    """One requested output, with its binary data when it goes after the JSON header."""
    classes = output.parameters.classification if output.parameters else None
    if classes is not None:
        k = min(classes, len(labels))
        strings = classification_strings(probabilities, labels, k)
        shape = [len(probabilities), k]
        if binary:
            blob = _serialize_strings(strings)
            parameters = {"binary_data_size": len(blob)}
            return ResponseOutput(
                name=output.name, datatype="BYTES", shape=shape, parameters=parameters
            ), blob
        return ResponseOutput(name=output.name, datatype="BYTES", shape=shape, data=strings), None
    shape = list(probabilities.shape)
    if binary:
        blob = probabilities.astype("<f4", copy=False).tobytes()
        parameters = {"binary_data_size": len(blob)}
        return ResponseOutput(
            name=output.name, datatype="FP32", shape=shape, parameters=parameters
        ), blob
    values: list[float] = probabilities.reshape(-1).tolist()
    return ResponseOutput(name=output.name, datatype="FP32", shape=shape, data=values), None


def _encode_response(
    infer: InferenceRequest, model_name: str, probabilities: FloatArray, labels: Sequence[str]
) -> Response:
    outputs: list[ResponseOutput] = []
    blobs: list[bytes] = []
    for output, binary in _requested(infer):
        tensor, blob = _output_tensor(output, binary, probabilities, labels)
        outputs.append(tensor)
        if blob is not None:
            blobs.append(blob)
    response = InferenceResponse(
        model_name=model_name, model_version=MODEL_VERSION, id=infer.id, outputs=outputs
    )
    header = response.model_dump_json(exclude_none=True).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


async def _tensor_probabilities(service: ClassificationService, batch: FloatArray) -> FloatArray:
    probabilities, _ = await service.probabilities(batch)
    if not np.isfinite(probabilities).all():
        # Finite but absurd values (1e38) overflow inside the model; a preprocessed image is
        # ImageNet-normalized, roughly within [-3, 3].
        raise ProtocolError(
            400,
            f"input '{DATA_INPUT}' drove the model to NaN or infinity: send preprocessed "
            "images (RGB / 255, minus ImageNet mean, over std: values within about [-3, 3])",
        )
    return probabilities


async def _infer(
    request: Request,
    settings: Settings,
    state: ServiceState,
    slots: UploadSlots,
    name: str,
    version: str | None,
) -> Response:
    _check_model(settings, name, version)
    service = _ready_service(state)
    service.admit()
    async with receiving(slots, settings.upload_timeout_s) as reservation:
        body = await _read_body(request, body_limit(settings), reservation)
    header, binary = _split_header(request, body)
    infer = _parse_request(header)
    tensor = _the_input(infer)
    _requested(infer)  # refuse a bad output before spending the model on the request
    data = _binary_part(tensor, binary)
    if tensor.name == IMAGE_INPUT:
        images = _image_elements(tensor, data, settings)
        work = _image_probabilities(service, images)
    else:
        work = _tensor_probabilities(service, _fp32_batch(tensor, data, settings))
    probabilities = await cancel_if_client_leaves(request, work)
    return _encode_response(infer, settings.model_name, probabilities, service.labels)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema with its $defs inlined, to stand alone inside the OpenAPI document."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_INFER_EXAMPLE = {
    "id": "42",
    "inputs": [
        {"name": IMAGE_INPUT, "shape": [1], "datatype": "BYTES", "data": ["<base64 of a JPEG>"]}
    ],
    "outputs": [{"name": OUTPUT, "parameters": {"classification": 3}}],
}
_INFER: dict[str, Any] = {
    "summary": "Classify images (BYTES) or preprocessed tensors (FP32)",
    "description": f"Send one input: `{IMAGE_INPUT}`, BYTES [N], each element an encoded image "
    f"(base64 in JSON), or `{DATA_INPUT}`, FP32 [N,3,224,224]. The output `{OUTPUT}` is FP32 "
    "[N, classes]; with `parameters.classification: K` it is BYTES [N, K] "
    '"score:index:label" strings. Binary tensor data (the `Inference-Header-Content-Length` '
    "header) works for inputs and outputs, as tritonclient sends it.",
    "response_model": InferenceResponse,
    "responses": {code: ERRORS[code] for code in (400, 404, 413, 415, 503, 504)},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _inline_refs(InferenceRequest.model_json_schema()),
                    "example": _INFER_EXAMPLE,
                },
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"JSON header ({HEADER_LENGTH} bytes), then tensor data",
                },
            },
        }
    },
}


@router.post("/v2/models/{model_name}/infer", **_INFER)
async def model_infer(
    request: Request, model_name: str, settings: SettingsDep, state: StateDep, slots: SlotsDep
) -> Response:
    return await _infer(request, settings, state, slots, model_name, None)


@router.post("/v2/models/{model_name}/versions/{model_version}/infer", **_INFER)
async def model_version_infer(
    request: Request,
    model_name: str,
    model_version: str,
    settings: SettingsDep,
    state: StateDep,
    slots: SlotsDep,
) -> Response:
    return await _infer(request, settings, state, slots, model_name, model_version)
