"""Shared fixtures: settings, the fake-classifier app, image bytes, the real model."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cross_pictures.app import create_app
from cross_pictures.config import Settings
from tests.fakes import FAKE_LABELS, FakeClassifier
from tests.images import PHOTOS
from tests.server import Server, running_server

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = ROOT / "resources" / "resnet50.onnx"
INT8_MODEL_PATH = ROOT / "resources" / "resnet50.int8.onnx"
LABELS_PATH = ROOT / "resources" / "imagenet_classes.txt"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), color: Any = "red") -> bytes:
    """A small solid image encoded in `fmt`."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def labels_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(FAKE_LABELS) + "\n")
    return path


@pytest.fixture
def settings(tmp_path: Path, labels_file: Path) -> Settings:
    return Settings(
        _env_file=None,
        model_path=tmp_path / "missing.onnx",
        labels_path=labels_file,
        num_threads=2,
        max_upload_bytes=200_000,
        max_image_pixels=4_000_000,
        max_batch_images=4,
    )


@pytest.fixture
def fake() -> FakeClassifier:
    return FakeClassifier()


@pytest.fixture
def client(settings: Settings, fake: FakeClassifier) -> Iterator[TestClient]:
    app = create_app(settings, load_classifier=lambda _: fake)
    with TestClient(app) as test_client:
        yield test_client


def require_model(path: Path = MODEL_PATH) -> Path:
    """The real model; `make test` builds it, so there it is a failure to lack it, else a skip."""
    if not path.is_file():
        message = f"{path} is missing: run `make install` (cross-pictures fetch-model)"
        if os.environ.get("CROSS_PICTURES_REQUIRE_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_photos() -> list[dict[str, Any]]:
    """The golden list of the shared dev photos, or a skip saying where they belong."""
    golden = PHOTOS / "golden.json"
    if not golden.is_file():
        pytest.skip(
            f"{golden} is missing: the dev photos live in ../shared/photos "
            "(or set CROSS_PICTURES_PHOTOS)"
        )
    entries: list[dict[str, Any]] = json.loads(golden.read_text())
    return entries


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real uvicorn process serving the real fp32 model, shared by the tests that need it."""
    require_model()
    log = tmp_path_factory.mktemp("live-server") / "server.log"
    with running_server(log, {"PRECISION": "fp32", "LOG_LEVEL": "warning"}) as server:
        yield server
