"""Wire format of the Open Inference Protocol (KServe v2) REST API, as pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

# The protocol lets clients add parameters we do not know; they are accepted and ignored.
_OPEN = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    """Every v2 error: the protocol's `{"error": ...}`."""

    error: str = Field(examples=["model 'resnet5' is not served here; the model is 'resnet50'"])


class LiveResponse(BaseModel):
    """The process answers."""

    live: bool = True


class ReadyResponse(BaseModel):
    """The model is loaded, warmed up, and the server is not shutting down."""

    ready: bool = True


class ModelReadyResponse(BaseModel):
    """Readiness of one model."""

    name: str = Field(examples=["resnet50"])
    ready: bool = True


class ServerMetadata(BaseModel):
    """Who is speaking the protocol, and which extensions it supports."""

    name: str = Field(examples=["cross_pictures"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["classification", "binary_tensor_data"]])


class TensorMetadata(BaseModel):
    """One input or output of the model; -1 marks the batch axis."""

    name: str
    datatype: Literal["BYTES", "FP32"]
    shape: list[int]


class ModelMetadata(BaseModel):
    """The served model, its versions, and its tensors."""

    name: str = Field(examples=["resnet50"])
    versions: list[str] = Field(examples=[["1"]])
    platform: str = Field(examples=["onnxruntime_onnx"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InputParameters(BaseModel):
    """Per-input parameters this server reads."""

    model_config = _OPEN

    binary_data_size: StrictInt | list[StrictInt] | None = Field(
        None,
        description="Bytes of this input after the JSON header (binary tensor data extension); "
        "for BYTES a list gives each element's size instead of 4-byte length prefixes.",
    )
    content_type: str | None = Field(
        None, description="For BYTES in JSON: 'base64' (the default; the only one accepted)."
    )


class RequestInput(BaseModel):
    """One input tensor: `image` (BYTES [N], encoded images) or `data` (FP32 [N,3,224,224])."""

    name: str = Field(examples=["image"])
    shape: list[StrictInt] = Field(examples=[[1]])
    datatype: str = Field(examples=["BYTES"])
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(
        None,
        description="Row-major elements: base64 strings for BYTES, numbers for FP32. Leave out "
        "when the tensor follows the JSON as binary data.",
    )


class OutputParameters(BaseModel):
    """Per-output parameters this server reads."""

    model_config = _OPEN

    classification: StrictInt | None = Field(
        None, ge=1, description="Return the top-K classes as BYTES 'score:index:label'."
    )
    binary_data: StrictBool | None = Field(
        None, description="Return this output as binary data after the JSON header."
    )


class RequestOutput(BaseModel):
    """An output the client wants back."""

    name: str = Field(examples=["probabilities"])
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    """Request-level parameters this server reads."""

    model_config = _OPEN

    binary_data_output: StrictBool = Field(
        False, description="Return every output as binary data unless the output says otherwise."
    )


class InferenceRequest(BaseModel):
    """POST .../infer: one input, optionally the outputs to return."""

    id: str | None = Field(None, max_length=256, description="Echoed in the response.")
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor, in JSON or (with `binary_data_size`) after the JSON header."""

    name: str = Field(examples=["probabilities"])
    datatype: Literal["BYTES", "FP32"]
    shape: list[int] = Field(examples=[[1, 3]])
    parameters: dict[str, Any] | None = None
    data: list[float] | list[str] | None = Field(
        None, examples=[["0.937600:0:tench", "0.041800:1:goldfish", "0.014100:397:puffer"]]
    )


class InferenceResponse(BaseModel):
    """The answer to an inference request."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str = Field(examples=["resnet50"])
    model_version: str = Field(examples=["1"])
    id: str | None = None
    outputs: list[ResponseOutput]
