"""Per-request bookkeeping: request id, in-flight count, metrics and one log line.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: it adds no task or
stream copy per request, which shows at hundreds of requests per second on two cores.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cross_pictures.metrics import Metrics
from cross_pictures.service import Classification, ServiceState

logger = logging.getLogger("cross_pictures.access")

REQUEST_ID_HEADER = b"x-request-id"
# Callers' ids are echoed into headers and logs: keep them short and harmless.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes are frequent and dull: counted, but not logged at info level.
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            candidate = bytes(value).decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestObserver:
    """Assigns request ids and records every HTTP request in metrics and the access log."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, state: ServiceState) -> None:
        self.app = app
        self.metrics = metrics
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # A request that arrived before SIGTERM was accepted and will be answered in full.
        state["arrived_while_draining"] = self.state.draining
        status = 500  # if the app dies before answering, that is what the client sees
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode()),
                ]
            await send(message)

        self.state.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, counting_receive, send_with_id)
        finally:
            self.state.in_flight -= 1
            self.metrics.in_flight.dec()
            self._record(scope, status, time.perf_counter() - started, received, request_id)

    def _record(
        self, scope: Scope, status: int, seconds: float, received: int, request_id: str
    ) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"  # bounded label values
        self.metrics.requests.labels(route, scope["method"], str(status)).inc()
        self.metrics.request_seconds.labels(route).observe(seconds)
        results: list[Classification] = scope["state"].get("classifications", [])
        for result in results:
            self.metrics.image_pixels.observe(result.width * result.height)
        path = scope["path"]
        level = logging.DEBUG if path in _QUIET_PATHS and status < 400 else logging.INFO
        if not logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "upload_bytes": received,
        }
        if results:
            fields["images"] = [f"{r.width}x{r.height}" for r in results]
            fields["model_ms"] = round(max(r.inference_time_ms for r in results), 2)
            fields["batch_size"] = max(r.batch_size for r in results)
            fields["queue_ms"] = round(max(r.queue_ms for r in results), 2)
        logger.log(level, "request", extra=fields)
