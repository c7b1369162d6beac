"""Domain errors -> HTTP status, in one place, with FastAPI's `{"detail": ...}` body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cross_pictures.api.schemas import ErrorResponse
from cross_pictures.api.uploads import ClientGone, MalformedRequest
from cross_pictures.errors import (
    CrossPicturesError,
    DeadlineExceeded,
    ImageTooLarge,
    InvalidImage,
    ModelNotReady,
    Overloaded,
    UnsupportedFormat,
    UploadTimeout,
    UploadTooLarge,
)

STATUS_BY_ERROR: dict[type[CrossPicturesError], int] = {
    InvalidImage: 400,
    UploadTooLarge: 413,
    UploadTimeout: 408,
    ImageTooLarge: 413,
    UnsupportedFormat: 415,
    ModelNotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
}
REJECTION_REASONS: dict[type[CrossPicturesError], str] = {
    Overloaded: "overloaded",
    ModelNotReady: "not_ready",
    DeadlineExceeded: "deadline",
    UploadTimeout: "upload_timeout",
}
RETRY_AFTER_SECONDS = "1"
# What a client that hung up "gets" (logged and counted only): nginx's "client closed request".
CLIENT_CLOSED_REQUEST = 499


def status_for(error: CrossPicturesError) -> int:
    """The HTTP status a domain error maps to (500 only for errors nobody mapped: a bug)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def count_rejection(request: Request, error: CrossPicturesError) -> None:
    """Count a refusal (overload, not ready, deadline) in cross_pictures_rejected_total."""
    reason = REJECTION_REASONS.get(type(error))
    if reason is not None:
        request.app.state.metrics.rejected.labels(reason).inc()


def request_id_of(request: Request) -> str | None:
    """The id the request-id middleware stored, if any."""
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def error_response(request: Request, status: int, detail: str) -> JSONResponse:
    """A JSON error with the request id, and Retry-After where retrying will help."""
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    if status == 408:
        headers = {"Connection": "close"}  # the rest of the body may still be on its way
    body = ErrorResponse(detail=detail, request_id=request_id_of(request))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
        name = ".".join(location) or "request"
        parts.append(f"{name}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Map every domain error and request problem to a clear JSON error."""

    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CrossPicturesError)
        count_rejection(request, exc)
        return error_response(request, status_for(exc), str(exc))

    async def on_malformed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MalformedRequest)
        return error_response(request, 422, exc.message)

    async def on_client_gone(request: Request, exc: Exception) -> JSONResponse:
        # Nobody reads this answer. 499 is nginx's "client closed request": it keeps the
        # disconnect out of the 5xx error budget and apart from real bad requests in metrics.
        return error_response(request, CLIENT_CLOSED_REQUEST, "the client disconnected")

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(request, 422, _describe_validation(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own 404 / 405 ...: the same body as every other error, with the id.
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith("/v2/"):  # the inference protocol's own error shape
            return JSONResponse(
                {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
            )
        response = error_response(request, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer; the client gets JSON with the id to
        # quote (this handler runs outside the request-id middleware, so the header is set here).
        response = error_response(
            request,
            500,
            "the server failed on this request (a bug, not your input); it is logged under "
            "this request id",
        )
        request_id = request_id_of(request)
        if request_id is not None:
            response.headers["X-Request-ID"] = request_id
        return response

    app.add_exception_handler(CrossPicturesError, on_domain_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)
    app.add_exception_handler(MalformedRequest, on_malformed)
    app.add_exception_handler(ClientGone, on_client_gone)
    app.add_exception_handler(RequestValidationError, on_validation)


def _example(detail: str) -> dict[str, Any]:
    return {"detail": detail, "request_id": "3f2b9c1e6a7d4e0f"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given statuses, with an example of each."""
    examples: dict[int, tuple[str, dict[str, dict[str, Any]]]] = {
        400: (
            "Empty, corrupt or truncated image",
            {
                "empty": {"value": _example("the uploaded file is empty (0 bytes)")},
                "truncated": {"value": _example("the image data is truncated or corrupt: ...")},
            },
        ),
        408: (
            "The body did not arrive within UPLOAD_TIMEOUT_S",
            {
                "slow": {
                    "value": _example(
                        "the upload did not arrive within UPLOAD_TIMEOUT_S=60 s; send it again "
                        "over a faster connection, or send a smaller file"
                    )
                }
            },
        ),
        413: (
            "Upload over MAX_UPLOAD_BYTES, or image over MAX_IMAGE_PIXELS",
            {
                "bytes": {
                    "value": _example("the image is larger than MAX_UPLOAD_BYTES=20971520 bytes")
                },
                "pixels": {
                    "value": _example(
                        "the image is 30000×30000 = 900000000 pixels, more than "
                        "MAX_IMAGE_PIXELS=50000000"
                    )
                },
            },
        ),
        415: (
            "Not an image, or a format that cannot be decoded",
            {"pdf": {"value": _example("PDF documents are not images; upload a JPEG or PNG")}},
        ),
        422: (
            "Missing `image` field or bad `top_k`",
            {
                "missing": {"value": _example("field 'image' is required")},
                "top_k": {"value": _example("top_k: Input should be less than or equal to 1000")},
            },
        ),
        503: (
            "Model not loaded, shutting down, or overloaded (see Retry-After)",
            {"overloaded": {"value": _example("64 images are already waiting; retry shortly")}},
        ),
        504: (
            "Waited longer than REQUEST_TIMEOUT_S for the model",
            {"timeout": {"value": _example("the request waited 10.2 s for the model")}},
        ),
    }
    return {
        status: {
            "model": ErrorResponse,
            "description": examples[status][0],
            "content": {"application/json": {"examples": examples[status][1]}},
        }
        for status in statuses
    }
