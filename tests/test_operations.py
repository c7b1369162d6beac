"""Metrics, request ids, logs, readiness and overload through the app (fake classifier)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from cross_pictures.app import create_app
from cross_pictures.batching import ModelRunner
from cross_pictures.config import Settings, describe_validation_error
from cross_pictures.errors import Overloaded
from cross_pictures.inference import FloatArray
from cross_pictures.logs import JsonFormatter, TextFormatter
from cross_pictures.preprocessing import PreparedImage
from cross_pictures.service import ClassificationService, ServiceState
from tests.conftest import image_bytes
from tests.fakes import FAKE_LABELS, FakeClassifier


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_metrics_count_requests_batches_and_images(client: TestClient) -> None:
    for _ in range(3):
        client.post("/infer", files={"image": ("a.png", image_bytes(size=(40, 30)))})
    client.post("/infer", files={"image": ("a.jpg", b"")})
    text = client.get("/metrics").text
    assert (
        metric_value(
            text, "cross_pictures_requests_total", route="/infer", method="POST", status="200"
        )
        == 3
    )
    assert (
        metric_value(
            text, "cross_pictures_requests_total", route="/infer", method="POST", status="400"
        )
        == 1
    )
    assert metric_value(text, "cross_pictures_model_run_seconds_count") >= 3
    assert metric_value(text, "cross_pictures_batch_size_count") >= 3
    assert metric_value(text, "cross_pictures_queue_wait_seconds_count") >= 3
    assert metric_value(text, "cross_pictures_image_pixels_sum") == 3 * 40 * 30
    for name in (
        "cross_pictures_request_duration_seconds_bucket",
        "cross_pictures_requests_in_flight",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ):
        assert name in text


def test_unknown_paths_do_not_explode_label_cardinality(client: TestClient) -> None:
    for i in range(5):
        assert client.get(f"/no/such/{i}").status_code == 404
    text = client.get("/metrics").text
    assert 'route="unmatched"' in text
    assert "/no/such/" not in text


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.get("/health", headers={"X-Request-ID": "abc-123.x"})
    assert given.headers["x-request-id"] == "abc-123.x"
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    unsafe = client.get("/health", headers={"X-Request-ID": "x" * 500})
    assert unsafe.headers["x-request-id"] != "x" * 500


def test_error_bodies_carry_the_request_id(client: TestClient) -> None:
    response = client.post(
        "/infer", files={"image": ("a.jpg", b"")}, headers={"X-Request-ID": "req-42"}
    )
    assert response.status_code == 400
    assert response.json()["request_id"] == "req-42"
    assert response.headers["x-request-id"] == "req-42"


def test_ready_is_200_after_warm_up_and_503_while_draining(client: TestClient) -> None:
    assert client.get("/ready").json() == {"ready": True, "reason": None}
    runtime: ServiceState = client.app.state.runtime  # type: ignore[attr-defined]
    runtime.draining = True
    try:
        response = client.get("/ready")
        assert response.status_code == 503
        assert response.json()["reason"] == "shutting down"
        infer = client.post("/infer", files={"image": ("a.png", image_bytes())})
        assert infer.status_code == 503
        assert infer.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 200  # alive, just not taking work
    finally:
        runtime.draining = False


def test_warm_up_runs_every_batch_size_before_ready(settings: Settings) -> None:
    fake = FakeClassifier()
    with TestClient(create_app(settings, load_classifier=lambda _: fake)) as client:
        # Every batch size once, then one run on each runner thread (one lane here).
        assert fake.batch_sizes == [*range(1, settings.max_batch_size + 1), 1]
        assert len(fake.batch_sizes) == warm_up_runs(settings)
        assert client.get("/ready").status_code == 200


def wait_for_queue_depth(app: FastAPI, depth: int) -> None:
    """Block until `depth` images wait for the model (requests posted from other threads)."""
    runner = app.state.runtime.service.runner
    for _ in range(500):
        if runner.queue_depth == depth:
            break
        threading.Event().wait(0.01)
    assert runner.queue_depth == depth


def warm_up_runs(settings: Settings) -> int:
    """Model runs before ready, with a one-lane fake: every batch size, then the runner thread."""
    return settings.max_batch_size + 1


class StuckAfterWarmUp(FakeClassifier):
    """Runs the warm-up, then blocks every real run until `gate` opens."""

    def __init__(self, warm_up_runs: int) -> None:
        super().__init__()
        self.warm_up_runs = warm_up_runs
        self.gate = threading.Event()

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        if len(self.batch_sizes) >= self.warm_up_runs:
            self.running.set()
            assert self.gate.wait(10)
        return super().run(batch, narrow=narrow)


def test_overload_is_503_at_once_and_counted(settings: Settings) -> None:
    settings.max_queue = 1
    stuck = StuckAfterWarmUp(warm_up_runs(settings))
    gate = stuck.gate
    app = create_app(settings, load_classifier=lambda _: stuck)
    with TestClient(app) as client:
        results: list[int] = []

        def post() -> None:
            response = client.post("/infer", files={"image": ("a.png", image_bytes())})
            results.append(response.status_code)

        stuck.running.clear()  # warm-up ran the model already
        first = threading.Thread(target=post)
        first.start()
        assert stuck.running.wait(5)  # the model is busy
        second = threading.Thread(target=post)
        second.start()
        wait_for_queue_depth(app, 1)
        overloaded = client.post("/infer", files={"image": ("a.png", image_bytes())})
        assert overloaded.status_code == 503
        assert overloaded.headers["retry-after"] == "1"
        assert "retry" in overloaded.json()["detail"]
        # Refused before its upload is even read: a non-image gets the 503, not a 415.
        unread = client.post("/infer", files={"image": ("a.txt", b"not an image")})
        assert unread.status_code == 503
        gate.set()
        first.join()
        second.join()
        assert results == [200, 200]
        text = client.get("/metrics").text
        assert metric_value(text, "cross_pictures_rejected_total", reason="overloaded") == 2


def test_request_that_waited_past_its_deadline_is_504_and_never_runs(settings: Settings) -> None:
    settings.request_timeout_s = 0.05
    stuck = StuckAfterWarmUp(warm_up_runs(settings))
    gate = stuck.gate
    app = create_app(settings, load_classifier=lambda _: stuck)
    with TestClient(app) as client:
        statuses: dict[str, int] = {}
        details: dict[str, str] = {}

        def post(name: str) -> None:
            response = client.post("/infer", files={"image": ("a.png", image_bytes())})
            statuses[name] = response.status_code
            details[name] = response.text

        stuck.running.clear()
        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert stuck.running.wait(5)  # the model is busy with the first request
        runs_before = len(stuck.batch_sizes)
        late = threading.Thread(target=post, args=("late",))
        late.start()
        wait_for_queue_depth(app, 1)
        threading.Event().wait(0.2)  # longer than the 50 ms REQUEST_TIMEOUT_S
        gate.set()
        first.join()
        late.join()
        assert statuses == {"first": 200, "late": 504}, details
        assert "REQUEST_TIMEOUT_S" in details["late"]
        # Only the first request ran (it is recorded once released); the late one never did.
        assert len(stuck.batch_sizes) == runs_before + 1
        text = client.get("/metrics").text
        assert metric_value(text, "cross_pictures_rejected_total", reason="deadline") == 1
        assert metric_value(text, "cross_pictures_deadline_expired_total") == 1


def test_concurrent_uploads_are_bounded(settings: Settings) -> None:
    settings.max_concurrent_uploads = 1
    app = create_app(settings, load_classifier=lambda _: FakeClassifier())
    with TestClient(app) as client:
        app.state.upload_slots.busy = 1  # one upload is being received
        response = client.post("/infer", files={"image": ("a.png", image_bytes())})
        assert response.status_code == 503
        assert "MAX_CONCURRENT_UPLOADS" in response.json()["detail"]
        app.state.upload_slots.busy = 0
        ok = client.post("/infer", files={"image": ("a.png", image_bytes())})
        assert ok.status_code == 200


def test_bytes_of_uploads_being_received_are_bounded(settings: Settings) -> None:
    settings.max_upload_memory_bytes = settings.max_upload_bytes + 100_000
    app = create_app(settings, load_classifier=lambda _: FakeClassifier())
    photo = ("a.png", image_bytes(size=(200, 200)))
    with TestClient(app) as client:
        slots = app.state.upload_slots
        slots.bytes = settings.max_upload_memory_bytes - 10  # big uploads are arriving
        busy = client.post("/infer", files={"image": photo})
        assert busy.status_code == 503
        assert "MAX_UPLOAD_MEMORY_BYTES" in busy.json()["detail"]
        assert busy.headers["retry-after"] == "1"
        slots.bytes = 0
        assert client.post("/infer", files={"image": photo}).status_code == 200
        assert slots.bytes == 0  # released once read
        # A body that could never fit is 413 (retrying cannot help), not 503.
        parts = [("images", (f"{i}.jpg", b"\xff" * 150_000)) for i in range(4)]
        too_big = client.post("/infer/batch", files=parts)
        assert too_big.status_code == 413
        assert "MAX_UPLOAD_MEMORY_BYTES" in too_big.json()["detail"]


def test_memory_budget_must_hold_one_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1000000")
    monkeypatch.setenv("MAX_UPLOAD_MEMORY_BYTES", "500000")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    message = describe_validation_error(caught.value)
    assert message.startswith("invalid configuration: MAX_UPLOAD_MEMORY_BYTES=500000")
    assert "raise it to at least" in message


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_log(client: TestClient) -> Iterator[list[logging.LogRecord]]:
    # The service's loggers do not propagate to the root (uvicorn owns it), so listen directly.
    handler = Records()
    logger = logging.getLogger("cross_pictures.access")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_one_json_log_line_per_request_without_file_names(
    client: TestClient, access_log: list[logging.LogRecord]
) -> None:
    client.post(
        "/infer",
        files={"image": ("secret-holiday.png", image_bytes(size=(40, 30)))},
        headers={"X-Request-ID": "log-1"},
    )
    (record,) = access_log
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "log-1"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/infer", 200)
    assert line["images"] == ["40x30"]
    assert line["batch_size"] == 1
    assert line["upload_bytes"] > 0
    assert {"time", "duration_ms", "model_ms"} <= set(line)
    assert "secret-holiday" not in json.dumps(line)
    assert "request_id=log-1" in TextFormatter().format(record)


def test_probes_are_not_logged_at_info(
    client: TestClient, access_log: list[logging.LogRecord]
) -> None:
    client.get("/health")
    client.get("/ready")
    client.get("/nope")
    assert [r.path for r in access_log] == ["/nope"]  # type: ignore[attr-defined]


def test_a_decode_abandoned_by_its_client_keeps_its_slot_until_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hung-up client cancels its request, but the decode thread cannot be stopped: its slot
    # in the decode pool and in the admission count must stay taken until the thread is done.
    started, release = threading.Event(), threading.Event()
    runner = ModelRunner(
        FakeClassifier(), max_batch_size=2, max_batch_delay_s=0, max_queue=1, request_timeout_s=5
    )
    runner.start()
    service = ClassificationService(runner, FAKE_LABELS, max_image_pixels=10**6, decode_threads=1)
    real_prepare = service._prepare_sync

    def slow_prepare(data: bytes) -> PreparedImage:
        started.set()
        assert release.wait(10)
        return real_prepare(data)

    monkeypatch.setattr(service, "_prepare_sync", slow_prepare)

    async def main() -> None:
        request = asyncio.ensure_future(service.classify(image_bytes(), 3))
        while not started.is_set():
            await asyncio.sleep(0.01)
        request.cancel()  # the client hung up
        with contextlib.suppress(asyncio.CancelledError):
            await request
        with pytest.raises(Overloaded):
            service.admit()  # the abandoned decode still counts
        release.set()
        for _ in range(500):
            if service.decoding == 0:
                break
            await asyncio.sleep(0.01)
        service.admit()  # its slot is free once the thread is done

    asyncio.run(main())
    runner.stop(5)
