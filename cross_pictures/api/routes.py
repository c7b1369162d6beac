"""Routes: read the request, call the service, shape the response."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from cross_pictures.api.errors import error_responses, status_for
from cross_pictures.api.schemas import (
    BatchItem,
    BatchResponse,
    HealthResponse,
    InferResponse,
    ItemError,
    PredictionOut,
    ReadyResponse,
)
from cross_pictures.api.uploads import (
    MalformedRequest,
    UploadSlots,
    cancel_if_client_leaves,
    read_image_parts,
)
from cross_pictures.config import Settings
from cross_pictures.errors import ModelNotReady
from cross_pictures.inference import Prediction
from cross_pictures.service import Classification, ClassificationService, ServiceState

router = APIRouter()

# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its threadpool, a thread hop per dependency per request (about 20 per /infer
# here), which cost ~1 ms of latency and CPU that decoding and the model want.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.runtime
    return state


async def get_upload_slots(request: Request) -> UploadSlots:
    slots: UploadSlots = request.app.state.upload_slots
    return slots


async def get_service(
    request: Request, state: Annotated[ServiceState, Depends(get_state)]
) -> ClassificationService:
    if state.draining and getattr(request.state, "arrived_while_draining", True):
        raise ModelNotReady("the service is shutting down; retry on another instance")
    if state.service is None:
        raise ModelNotReady("the model is not loaded yet; retry in a few seconds")
    state.service.admit()
    return state.service


SettingsDep = Annotated[Settings, Depends(get_settings)]
SlotsDep = Annotated[UploadSlots, Depends(get_upload_slots)]
ServiceDep = Annotated[ClassificationService, Depends(get_service)]
TopK = Annotated[
    int | None,
    Query(ge=1, le=1000, description="How many classes to return (default: TOP_K)."),
]


def _multipart_body(field: str, *, many: bool) -> dict[str, object]:
    # The body is parsed by hand (see api/uploads.py), so describe it to OpenAPI ourselves;
    # this is what makes Swagger UI show a file picker.
    file_schema: dict[str, object] = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file_schema} if many else file_schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [field],
                        "properties": {field: schema},
                    }
                }
            },
        }
    }


def _predictions(predictions: list[Prediction]) -> list[PredictionOut]:
    return [PredictionOut(label=p.label, confidence=p.confidence) for p in predictions]


def _record(request: Request, results: list[Classification]) -> None:
    # Read by the request log and metrics middleware.
    request.state.classifications = results


@router.get(
    "/health",
    summary="Liveness: is the process up and the model loaded?",
    responses={503: {"model": HealthResponse, "description": "Model not loaded"}},
    tags=["probes"],
)
async def health(state: Annotated[ServiceState, Depends(get_state)]) -> HealthResponse:
    if state.model_loaded:
        return HealthResponse(status="ok", model_loaded=True)
    body = HealthResponse(status="unavailable", model_loaded=False)
    return JSONResponse(body.model_dump(), status_code=503)  # type: ignore[return-value]


@router.get(
    "/ready",
    summary="Readiness: model loaded, warmed up and not shutting down",
    responses={503: {"model": ReadyResponse, "description": "Not ready (reason given)"}},
    tags=["probes"],
)
async def ready(state: Annotated[ServiceState, Depends(get_state)]) -> ReadyResponse:
    reason = state.not_ready_reason()
    if reason is None:
        return ReadyResponse(ready=True)
    body = ReadyResponse(ready=False, reason=reason)
    return JSONResponse(  # type: ignore[return-value]
        body.model_dump(), status_code=503, headers={"Retry-After": "1"}
    )


@router.post(
    "/infer",
    summary="Classify one image",
    description="Upload an image (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF) in the "
    "multipart field `image`; get the top-k ImageNet classes.\n\n"
    "`curl -F image=@cat.jpg http://127.0.0.1:8000/infer`",
    openapi_extra=_multipart_body("image", many=False),
    responses=error_responses(400, 408, 413, 415, 422, 503, 504),
    tags=["inference"],
)
async def infer(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    slots: SlotsDep,
    top_k: TopK = None,
) -> InferResponse:
    k = _bounded_k(top_k, settings, service)
    (image,) = await read_image_parts(
        request,
        field="image",
        max_part_bytes=settings.max_upload_bytes,
        max_parts=1,
        slots=slots,
        timeout_s=settings.upload_timeout_s,
    )
    result = await cancel_if_client_leaves(request, service.classify(image, k))
    _record(request, [result])
    return InferResponse(
        predictions=_predictions(result.predictions), inference_time_ms=result.inference_time_ms
    )


@router.post(
    "/infer/batch",
    summary="Classify several images in one request",
    description="Send up to MAX_BATCH_IMAGES files, each in a multipart part named `images`. "
    "Each gets its own result, in order: predictions, or the error /infer would have given "
    "for it alone; one bad image does not fail the others.\n\n"
    "`curl -F images=@a.jpg -F images=@b.png http://127.0.0.1:8000/infer/batch`",
    openapi_extra=_multipart_body("images", many=True),
    responses=error_responses(408, 413, 422, 503),
    tags=["inference"],
)
async def infer_batch(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    slots: SlotsDep,
    top_k: TopK = None,
) -> BatchResponse:
    k = _bounded_k(top_k, settings, service)
    images = await read_image_parts(
        request,
        field="images",
        max_part_bytes=settings.max_upload_bytes,
        max_parts=settings.max_batch_images,
        slots=slots,
        timeout_s=settings.upload_timeout_s,
    )
    outcomes = await cancel_if_client_leaves(request, service.classify_many(images, k))
    items: list[BatchItem] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Classification):
            items.append(
                BatchItem(
                    index=index,
                    predictions=_predictions(outcome.predictions),
                    inference_time_ms=outcome.inference_time_ms,
                )
            )
        else:
            error = ItemError(status=status_for(outcome), detail=str(outcome))
            items.append(BatchItem(index=index, error=error))
    _record(request, [o for o in outcomes if isinstance(o, Classification)])
    return BatchResponse(results=items)


def _bounded_k(top_k: int | None, settings: Settings, service: ClassificationService) -> int:
    # The query bound (1000) is static; a model with fewer classes is checked here.
    classes = len(service.labels)
    if top_k is not None and top_k > classes:
        raise MalformedRequest("top_k", f"top_k: must be between 1 and {classes}, got {top_k}")
    return min(top_k or settings.top_k, classes)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    tags=["probes"],
)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
