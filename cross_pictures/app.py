"""create_app(settings): the one place that wires settings, model, service and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
import numpy as np
from fastapi import FastAPI

from cross_pictures import __version__
from cross_pictures.api.errors import install_error_handlers
from cross_pictures.api.routes import router
from cross_pictures.batching import ModelRunner
from cross_pictures.config import Settings, check_files
from cross_pictures.inference import Classifier, OnnxClassifier
from cross_pictures.preprocessing import INPUT_SIZE
from cross_pictures.service import ClassificationService, ServiceState

logger = logging.getLogger("cross_pictures")

ClassifierLoader = Callable[[Settings], Classifier]


def load_onnx_classifier(settings: Settings) -> Classifier:
    """The real classifier for these settings (PRECISION picks the model file)."""
    classifier = OnnxClassifier.from_files(
        settings.active_model_path, settings.labels_path, threads=settings.threads
    )
    info = classifier.info
    assert info is not None
    logger.info(
        "model loaded",
        extra={
            "model_path": info.path,
            "sha256": info.sha256,
            "input": f"{info.input_name}{list(info.input_shape)}",
            "output": info.output_name,
            "classes": info.num_classes,
            "softmax_in_graph": info.ends_in_softmax,
            "threads": info.threads,
            "load_s": round(info.load_seconds, 3),
        },
    )
    return classifier


def warm_up(runner: ModelRunner) -> None:
    """Run every batch size the runner will use once, so no real request pays first-run costs."""
    for size in range(1, runner.max_batch_size + 1):
        runner.run_sync(np.zeros((size, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32))


def create_app(
    settings: Settings | None = None, *, load_classifier: ClassifierLoader | None = None
) -> FastAPI:
    """Build the app. Tests pass a `load_classifier` returning a fake; the default loads ONNX."""
    settings = settings or Settings()
    if load_classifier is None:
        check_files(settings)  # fail at start-up with the fix, not at the first request
        load_classifier = load_onnx_classifier
    loader = load_classifier
    runtime = ServiceState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        classifier = await anyio.to_thread.run_sync(loader, settings)
        runner = ModelRunner(
            classifier,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
        )
        runtime.service = ClassificationService(
            runner,
            classifier.labels,
            max_image_pixels=settings.max_image_pixels,
            decode_threads=settings.threads,
        )
        await anyio.to_thread.run_sync(warm_up, runner)
        runner.start()
        runtime.warmed_up = True
        try:
            yield
        finally:
            runtime.draining = True
            await anyio.to_thread.run_sync(runner.stop, settings.shutdown_timeout_s)
            runtime.service = None

    app = FastAPI(
        title="cross_pictures",
        version=__version__,
        summary="ImageNet ResNet-50 image classification on the CPU, with ONNX Runtime.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(router)
    return app
