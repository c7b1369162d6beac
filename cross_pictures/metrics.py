"""Prometheus metrics (prometheus-client), with multiprocess mode when WORKERS > 1.

With several uvicorn workers each process counts its own requests; prometheus-client's
multiprocess mode writes every process's values to files in PROMETHEUS_MULTIPROC_DIR and
sums them at scrape time, so /metrics answers for the whole server whichever worker serves it.
`cross-pictures serve` sets that directory up when WORKERS > 1.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from cross_pictures.batching import BatchStats

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Milliseconds to seconds: one image is ~6 ms (int8) to ~20 ms (fp32); a queued request or a
# 12 MP upload takes tens to hundreds of ms; anything past 10 s has hit REQUEST_TIMEOUT_S.
LATENCY_BUCKETS = (
    0.002,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
PIXEL_BUCKETS = (
    50_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    4_000_000,
    8_000_000,
    12_000_000,
    24_000_000,
    50_000_000,
)


def multiprocess_enabled() -> bool:
    """True when the server runs several worker processes sharing a metrics directory."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """Every metric the service exports, registered in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cross_pictures_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "cross_pictures_request_duration_seconds",
            "Whole request time, from first byte to response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "cross_pictures_model_run_seconds",
            "Time of one model run (a whole batch).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "cross_pictures_queue_wait_seconds",
            "Time an image waited for the model after decoding.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "cross_pictures_batch_size",
            "Images per model run.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.image_pixels = Histogram(
            "cross_pictures_image_pixels",
            "Decoded image size (width × height, as uploaded).",
            buckets=PIXEL_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "cross_pictures_requests_in_flight",
            "HTTP requests being handled now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rejected = Counter(
            "cross_pictures_rejected_total",
            "Requests refused to protect the service: overload, shutting down, deadline.",
            ["reason"],
            registry=r,
        )
        self.expired = Counter(
            "cross_pictures_deadline_expired_total",
            "Images dropped before the model because they waited past REQUEST_TIMEOUT_S.",
            registry=r,
        )
        self.model_info = Gauge(
            "cross_pictures_model_info",
            "The loaded model (value is always 1).",
            ["file", "sha256", "input_shape", "precision"],
            multiprocess_mode="max",
            registry=r,
        )
        if not multiprocess_enabled():
            # In multiprocess mode these would describe only the process that got the scrape.
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    def observe_batch(self, stats: BatchStats) -> None:
        """Called by the model runner after each run (on its thread; metrics are thread-safe)."""
        if stats.size:  # a "run" whose every image had expired ran nothing
            self.model_seconds.observe(stats.model_seconds)
            self.batch_size.observe(stats.size)
        for waited in stats.queue_seconds:
            self.queue_seconds.observe(waited)
        if stats.expired:
            self.expired.inc(stats.expired)

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        if multiprocess_enabled():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges from the multiprocess files."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
