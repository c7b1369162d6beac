"""Settings: every environment variable the service reads, typed and bounded."""

from __future__ import annotations

import math
import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cross_pictures.errors import ModelLoadError

MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Precision(StrEnum):
    """Which model file the service loads."""

    FP32 = "fp32"
    INT8 = "int8"


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 or v1 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        # A quota of 1.5 CPUs still lets two threads make progress; round up, never below 1.
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`; None if unlimited."""
    try:
        text = (root / "cpu.max").read_text().split()  # "max 100000" or "150000 100000"
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


class Settings(BaseSettings):
    """Service configuration, read from the environment, then `.env`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        protected_namespaces=(),
    )

    model_path: Path = Field(
        Path("resources/resnet50.onnx"),
        description="fp32 ONNX classifier: input NCHW float32, output [N, labels].",
    )
    int8_model_path: Path = Field(
        Path("resources/resnet50.int8.onnx"),
        description="int8 model made by `cross-pictures quantize`, used when PRECISION=int8.",
    )
    precision: Precision = Field(
        Precision.INT8,
        description=(
            "Which model to serve: int8 (default, ~3x the throughput) or fp32. When MODEL_PATH is "
            "set and PRECISION is not, the model MODEL_PATH names is served (fp32)."
        ),
    )
    labels_path: Path = Field(
        Path("resources/imagenet_classes.txt"), description="One class name per line."
    )
    model_name: str = Field(
        "resnet50",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Model name in the v2 inference protocol.",
    )
    top_k: int = Field(
        3,
        ge=1,
        validation_alias=AliasChoices("top_k", "TOP_K", "TOP_k"),
        description="Predictions returned when a request does not ask for a number.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="ONNX Runtime intra-op threads; default: the CPUs this process may use.",
    )
    host: str = Field("127.0.0.1", description="Address `cross-pictures serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `cross-pictures serve` binds to.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    max_upload_bytes: int = Field(
        20 * MIB, ge=1024, description="Largest accepted image upload, in bytes."
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Largest accepted image, in pixels (width × height)."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Most images the model runs together.")
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest a started batch waits to fill; a lone request never waits.",
    )
    max_batch_images: int = Field(
        32, ge=1, le=256, description="Most images one POST /infer/batch may carry."
    )
    max_queue: int = Field(
        64, ge=1, description="Images waiting for the model; past it requests get 503."
    )
    max_concurrent_uploads: int = Field(
        64, ge=1, description="Request bodies read at once; bounds memory under a flood."
    )
    max_upload_memory_bytes: int = Field(
        256 * MIB,
        ge=1024,
        description="Bytes all request bodies being received may hold together; past it 503.",
    )
    upload_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest a request body may take to arrive; past it 408 (slow-loris guard).",
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="A request that waited longer is dropped before the model (504)."
    )
    shutdown_timeout_s: float = Field(
        20.0, ge=0, description="On SIGTERM, how long accepted requests may take to finish."
    )
    log_format: Literal["json", "text"] = Field("json", description="Request log format.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level printed."
    )

    @model_validator(mode="after")
    def _serve_the_named_model(self) -> Settings:
        # An operator who points MODEL_PATH at a model (the zoo's, their own) means that file;
        # quietly serving the int8 build of the default model instead would be a trap.
        if "model_path" in self.model_fields_set and "precision" not in self.model_fields_set:
            self.precision = Precision.FP32
        return self

    @model_validator(mode="after")
    def _one_upload_fits_the_memory_budget(self) -> Settings:
        # Room for one largest image plus the multipart framing around it.
        needed = self.max_upload_bytes + 64 * 1024
        if self.max_upload_memory_bytes < needed:
            raise ValueError(
                f"MAX_UPLOAD_MEMORY_BYTES={self.max_upload_memory_bytes} cannot hold even one "
                f"upload of MAX_UPLOAD_BYTES={self.max_upload_bytes}: raise it to at least {needed}"
            )
        return self

    @model_validator(mode="after")
    def _fill_threads(self) -> Settings:
        if self.num_threads is None:
            self.num_threads = max(1, available_cpus() // self.workers)
        return self

    @property
    def threads(self) -> int:
        """Intra-op threads for ONNX Runtime (never None after validation)."""
        assert self.num_threads is not None
        return self.num_threads

    @property
    def active_model_path(self) -> Path:
        """The model file PRECISION selects."""
        return self.int8_model_path if self.precision is Precision.INT8 else self.model_path


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad variable, naming it as the user spells it in the environment."""
    parts = []
    for error in exc.errors():
        if not error["loc"]:  # a check across variables: its message names them
            parts.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        name = str(error["loc"][0]).upper()
        parts.append(f"{name}={error.get('input')!r}: {error['msg']}")
    return "invalid configuration: " + "; ".join(parts)


def check_files(settings: Settings) -> None:
    """Fail early, with the fix, if the model or labels file is missing."""
    model = settings.active_model_path
    if not model.is_file():
        if settings.precision is Precision.INT8:
            fix = "run `cross-pictures quantize` (or `make install`), or set PRECISION=fp32"
            variable = "INT8_MODEL_PATH"
        else:
            fix = "run `cross-pictures fetch-model` (or `make install`)"
            variable = "MODEL_PATH"
        raise ModelLoadError(f"{variable}={model} does not exist: {fix}")
    if not settings.labels_path.is_file():
        raise ModelLoadError(
            f"LABELS_PATH={settings.labels_path} does not exist: point it at a file with one "
            "class name per line (the repository ships resources/imagenet_classes.txt)"
        )
