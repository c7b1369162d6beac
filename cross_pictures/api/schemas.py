"""Wire format of every response (pydantic models; no logic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PredictionOut(BaseModel):
    """One class and the model's confidence in it."""

    label: str = Field(examples=["tiger cat"])
    confidence: float = Field(ge=0, le=1, examples=[0.41])


class InferResponse(BaseModel):
    """Top-k predictions for one image, most confident first."""

    predictions: list[PredictionOut]
    inference_time_ms: float = Field(
        description="Time the model spent on the batch holding this image (not the request).",
        examples=[31.2],
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "predictions": [
                        {"label": "tiger cat", "confidence": 0.41},
                        {"label": "tabby", "confidence": 0.33},
                        {"label": "Egyptian cat", "confidence": 0.2},
                    ],
                    "inference_time_ms": 31.2,
                }
            ]
        }
    }


class ItemError(BaseModel):
    """Why one image of a batch failed; `status` is what /infer would have answered."""

    status: int = Field(examples=[415])
    detail: str = Field(examples=["PDF documents are not images; upload a JPEG, PNG or WebP"])


class BatchItem(BaseModel):
    """The result for one image of a batch: predictions or an error, never both."""

    index: int = Field(ge=0, description="Position of the image in the request.")
    predictions: list[PredictionOut] | None = None
    inference_time_ms: float | None = None
    error: ItemError | None = None


class BatchResponse(BaseModel):
    """One result per uploaded image, in upload order."""

    results: list[BatchItem]


class HealthResponse(BaseModel):
    """Liveness: the process answers; `model_loaded` tells whether it can classify."""

    status: Literal["ok", "unavailable"] = Field(examples=["ok"])
    model_loaded: bool = Field(examples=[True])


class ReadyResponse(BaseModel):
    """Readiness: model loaded, warm-up done, not shutting down."""

    ready: bool
    reason: str | None = Field(None, examples=["warming up"])


class ErrorResponse(BaseModel):
    """Every error: a message a person can act on."""

    detail: str = Field(examples=["the uploaded file is empty (0 bytes)"])
    request_id: str | None = Field(None, description="Quote it when reporting a problem.")
