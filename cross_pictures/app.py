"""create_app(settings): the one place that wires settings, model, service and routes."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
import numpy as np
from fastapi import FastAPI

from cross_pictures import __version__
from cross_pictures.allocator import limit_malloc_arenas
from cross_pictures.api.errors import install_error_handlers
from cross_pictures.api.middleware import RequestObserver
from cross_pictures.api.pages import router as pages_router
from cross_pictures.api.routes import router
from cross_pictures.api.uploads import UploadSlots
from cross_pictures.api.v2 import router as v2_router
from cross_pictures.batching import ModelRunner
from cross_pictures.config import Settings, check_files
from cross_pictures.draining import install_sigterm_drain
from cross_pictures.errors import ModelLoadError
from cross_pictures.inference import Classifier, ModelInfo, OnnxClassifier
from cross_pictures.logs import configure_logging
from cross_pictures.metrics import Metrics, mark_process_dead
from cross_pictures.preprocessing import INPUT_SIZE, warm_up_jpeg
from cross_pictures.service import ClassificationService, ServiceState

logger = logging.getLogger("cross_pictures")
LAST_BATCH_S = 2.0  # a full fp32 batch takes well under this on one slow core

ClassifierLoader = Callable[[Settings], Classifier]


def load_onnx_classifier(settings: Settings) -> Classifier:
    """The real classifier for these settings (PRECISION picks the model file)."""
    return OnnxClassifier.from_files(
        settings.active_model_path, settings.labels_path, threads=settings.threads
    )


def describe_model(classifier: Classifier, settings: Settings, metrics: Metrics) -> None:
    """Log the start-up line and set the model_info metric, for a real model."""
    info: ModelInfo | None = getattr(classifier, "info", None)
    if info is None:
        return  # a test double
    metrics.model_info.labels(
        os.path.basename(info.path), info.sha256, str(list(info.input_shape)), settings.precision
    ).set(1)
    logger.info(
        "model loaded",
        extra={
            "model_path": info.path,
            "sha256": info.sha256,
            "input": f"{info.input_name}{list(info.input_shape)}",
            "output": info.output_name,
            "classes": info.num_classes,
            "softmax_in_graph": info.ends_in_softmax,
            "precision": settings.precision.value,
            "threads": info.threads,
            "workers": settings.workers,
            "pid": os.getpid(),
            "load_s": round(info.load_seconds, 3),
        },
    )


def warm_up(runner: ModelRunner, labels: int) -> None:
    """Run every batch size the runner will use once, wide and narrow, so no real request pays
    first-run costs; and check the output really has one score per label (a model whose output
    width is symbolic could not be checked when it loaded)."""
    for narrow in runner.modes:
        for size in range(1, runner.max_batch_size + 1):
            batch = np.zeros((size, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
            scores = runner.run_sync(batch, narrow=narrow)
            if scores.shape != (size, labels):
                raise ModelLoadError(
                    f"the model answered a batch of {size} with shape {list(scores.shape)}, not "
                    f"[{size}, {labels}] (one score per line of LABELS_PATH): use the labels "
                    "file that belongs to this model"
                )


def warm_up_calling_thread(runner: ModelRunner) -> None:
    """One run per session on the thread that calls this (see ModelRunner.start)."""
    one = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for narrow in runner.modes:
        runner.run_sync(one, narrow=narrow)


def create_app(
    settings: Settings | None = None, *, load_classifier: ClassifierLoader | None = None
) -> FastAPI:
    """Build the app. Tests pass a `load_classifier` returning a fake; the default loads ONNX."""
    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    if load_classifier is None:
        check_files(settings)  # fail at start-up with the fix, not at the first request
        load_classifier = load_onnx_classifier
    loader = load_classifier
    runtime = ServiceState()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        restore_sigterm = install_sigterm_drain(runtime, timeout_s=settings.shutdown_timeout_s)
        limit_malloc_arenas()  # before the model's and the decoders' threads exist
        classifier = await anyio.to_thread.run_sync(loader, settings)
        describe_model(classifier, settings, metrics)
        runner = ModelRunner(
            classifier,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
            on_batch=metrics.observe_batch,
        )
        runtime.service = ClassificationService(
            runner,
            classifier.labels,
            max_image_pixels=settings.max_image_pixels,
            decode_threads=settings.threads,
        )
        await anyio.to_thread.run_sync(warm_up, runner, len(classifier.labels))
        # The decode path too: its first call costs ~90 ms (Pillow's plugins, the pool thread).
        await runtime.service.prepare(warm_up_jpeg())
        await anyio.to_thread.run_sync(
            functools.partial(
                runner.start, warm_up=functools.partial(warm_up_calling_thread, runner)
            )
        )
        runtime.warmed_up = True
        logger.info("ready", extra={"max_batch_size": runner.max_batch_size, "lanes": runner.lanes})
        try:
            yield
        finally:
            runtime.draining = True
            # What is left of SIGTERM's budget (a little at least, for the last batch), or
            # the whole budget when the shutdown did not start with SIGTERM.
            budget = settings.shutdown_timeout_s
            if runtime.shutdown_deadline is not None:
                budget = max(LAST_BATCH_S, runtime.shutdown_deadline - time.monotonic())
            await anyio.to_thread.run_sync(runner.stop, budget)
            runtime.service = None
            restore_sigterm()
            mark_process_dead(os.getpid())

    app = FastAPI(
        title="cross_pictures",
        version=__version__,
        summary="ImageNet ResNet-50 image classification on the CPU, with ONNX Runtime.",
        lifespan=lifespan,
        docs_url=None,  # served offline by api/pages.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.upload_slots = UploadSlots(
        settings.max_concurrent_uploads, settings.max_upload_memory_bytes
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(v2_router)
    app.include_router(pages_router)
    app.add_middleware(RequestObserver, metrics=metrics, state=runtime)
    return app
