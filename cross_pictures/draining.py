"""Graceful shutdown: on SIGTERM stop taking work, finish what was accepted, then exit.

uvicorn on its own closes the listening socket at once on SIGTERM, so a load balancer polling
/ready sees refused connections instead of a 503, and a request that arrives on a kept-alive
connection is cut off. Here SIGTERM first flips the service to draining (/ready and new /infer
answer 503 with Retry-After), waits until the requests in flight are answered (at most
SHUTDOWN_TIMEOUT_S), and only then hands the signal to uvicorn's own handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from cross_pictures.service import ServiceState

logger = logging.getLogger("cross_pictures")
POLL_SECONDS = 0.02


def _pass_on(handler: object, signum: int, frame: FrameType | None) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_sigterm_drain(state: ServiceState, *, timeout_s: float) -> Callable[[], None]:
    """Wrap the current SIGTERM handler; returns a function that puts the old one back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals can only be handled on the main thread (not in tests)
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    async def drain_then_exit(signum: int) -> None:
        while state.in_flight > 0 and time.monotonic() < (state.shutdown_deadline or 0.0):
            await asyncio.sleep(POLL_SECONDS)
        logger.info(
            "drained, shutting down",
            extra={"unfinished_requests": state.in_flight, "timeout_s": timeout_s},
        )
        _pass_on(previous, signum, None)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if state.draining:  # a second SIGTERM: stop waiting
            _pass_on(previous, signum, frame)
            return
        state.draining = True
        # One budget for the whole shutdown (drain, uvicorn, runner), so the process is gone
        # within SHUTDOWN_TIMEOUT_S plus a moment, inside Kubernetes' grace period.
        state.shutdown_deadline = time.monotonic() + timeout_s
        logger.info("SIGTERM received: draining", extra={"in_flight": state.in_flight})
        loop.call_soon_threadsafe(
            lambda: state.background.add(loop.create_task(drain_then_exit(signum)))
        )

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return restore
