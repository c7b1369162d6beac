"""Dynamic batching: one thread owns the model and runs queued images together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cross_pictures.errors import DeadlineExceeded, ModelNotReady, Overloaded
from cross_pictures.inference import Classifier, FloatArray

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One image's probabilities and how it got them."""

    probabilities: FloatArray
    model_ms: float  # the model run of the batch this image was in
    queue_ms: float  # time from submit to the start of that run
    batch_size: int


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What happened in one model run, for metrics."""

    size: int
    model_seconds: float
    queue_seconds: tuple[float, ...]
    expired: int


@dataclass(slots=True)
class _Job:
    tensor: FloatArray
    future: asyncio.Future[RunResult]
    loop: asyncio.AbstractEventLoop
    waiting_since: float  # perf_counter() when the request started waiting (the deadline's start)
    submitted: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future[RunResult], outcome: RunResult | BaseException) -> None:
    # Runs on the event loop; the caller may have given up (cancelled) meanwhile.
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _deliver(job: _Job, outcome: RunResult | BaseException) -> None:
    # RuntimeError: the caller's event loop has closed, so nobody is waiting.
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_resolve, job.future, outcome)


class ModelRunner:
    """Feeds the classifier from a bounded queue, in batches, on threads of its own.

    Why not one `session.run` per request: several callers each spinning up intra-op threads
    fight over the cores. The runner adapts to the queue instead. A lone request (queue empty,
    no other run going) runs *wide*, with every intra-op thread: the best latency. When work
    piles up, `classifier.lanes` runner threads each take a batch and run it *narrow*, on one
    thread: a wide run stalls at every parallel step whenever decoding takes one of its cores,
    narrow runs do not (measured with the int8 model and two decoders on 2 cores: 59 img/s
    wide, 72-76 narrow). A wide run never overlaps another run, so the model never has more
    threads busy than cores.
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue: int,
        request_timeout_s: float,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._classifier = classifier
        limit = classifier.max_batch_size
        self.max_batch_size = min(max_batch_size, limit) if limit else max_batch_size
        self._max_delay = max_batch_delay_s
        self.max_queue = max_queue
        self._timeout = request_timeout_s
        self._on_batch = on_batch
        self._lanes = max(1, classifier.lanes)
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._accepting = False
        self._stopping = False
        self._busy = 0  # runner threads holding a batch (guarded by _cond)
        self._wide_running = False
        self._threads: list[threading.Thread] = []

    @property
    def queue_depth(self) -> int:
        """Images waiting for the model."""
        return len(self._queue)

    @property
    def accepting(self) -> bool:
        """True while new work is taken."""
        return self._accepting

    def start(self, *, warm_up: Callable[[], None] | None = None) -> None:
        """Start the runner threads and accept work.

        `warm_up` runs first on each runner thread, and start() returns once all have run it:
        ONNX Runtime pays first-run costs per calling thread, not only per session (measured:
        without it the first 1-3 requests after /ready took ~20 ms in the model instead of ~13).
        """
        warmed = threading.Barrier(self._lanes + 1)
        failures: list[Exception] = []

        def lane() -> None:
            try:
                if warm_up is not None:
                    warm_up()
            except Exception as exc:  # noqa: BLE001 - re-raised by start() on its own thread
                failures.append(exc)
            finally:
                warmed.wait()
            if not failures:
                self._loop()

        self._threads = [
            threading.Thread(target=lane, name=f"model-runner-{index}", daemon=True)
            for index in range(self._lanes)
        ]
        for thread in self._threads:
            thread.start()
        warmed.wait()
        if failures:
            raise failures[0]
        self._accepting = True

    def stop_accepting(self) -> None:
        """Refuse new work; what is queued still runs."""
        self._accepting = False

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what is queued, then end the thread."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    async def submit(self, tensor: FloatArray, *, waiting_since: float | None = None) -> RunResult:
        """Queue one preprocessed image and wait for its probabilities.

        `waiting_since` (a perf_counter() time) starts the REQUEST_TIMEOUT_S clock earlier than
        now, e.g. when the image began waiting for a decoder."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        since = now if waiting_since is None else min(now, waiting_since)
        job = _Job(tensor, loop.create_future(), loop, since, now)
        with self._cond:
            if not self._accepting:
                raise ModelNotReady("the service is not accepting work (starting or shutting down)")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(
                    f"{len(self._queue)} images are already waiting for the model; retry shortly"
                )
            self._queue.append(job)
            self._cond.notify()
        return await job.future

    @property
    def lanes(self) -> int:
        """Runner threads: narrow runs that may go at once under load."""
        return self._lanes

    @property
    def modes(self) -> tuple[bool, ...]:
        """The `narrow` values runs may use: wide only, or wide and narrow with several lanes."""
        return (False, True) if self._lanes > 1 else (False,)

    def run_sync(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        """Run a batch directly, bypassing the queue (warm-up before the threads start)."""
        return self._classifier.run(batch, narrow=narrow)

    def _take_batch(self) -> tuple[list[_Job], bool] | None:
        """The next batch, and whether it runs narrow; None once stopped and drained."""
        with self._cond:
            while not self._queue or self._wide_running:
                if self._stopping and not self._queue:
                    return None
                self._cond.wait()
            self._busy += 1  # counted before any wait below, so others see this run coming
            batch = [self._queue.popleft()]
            while self._queue and len(batch) < self.max_batch_size:
                batch.append(self._queue.popleft())
            # A lone request never waits; a batch that is already forming may wait a little
            # for more, because under load the next arrival is only moments away.
            if 1 < len(batch) < self.max_batch_size and self._max_delay > 0:
                give_up = time.perf_counter() + self._max_delay
                while len(batch) < self.max_batch_size:
                    if self._queue:
                        batch.append(self._queue.popleft())
                        continue
                    remaining = give_up - time.perf_counter()
                    if remaining <= 0 or self._stopping:
                        break
                    self._cond.wait(remaining)
            # Wide only when nothing else runs or waits: then every core is this batch's.
            narrow = self._lanes > 1 and (self._busy > 1 or bool(self._queue))
            self._wide_running = not narrow
            return batch, narrow

    def _loop(self) -> None:
        while (taken := self._take_batch()) is not None:
            batch, narrow = taken
            try:
                self._run(batch, narrow=narrow)
            finally:
                with self._cond:
                    self._busy -= 1
                    if not narrow:
                        self._wide_running = False
                    self._cond.notify_all()

    def _run(self, batch: list[_Job], *, narrow: bool) -> None:
        started = time.perf_counter()
        live: list[_Job] = []
        expired = 0
        for job in batch:
            if job.future.cancelled():
                continue  # the caller is gone: never spend the model on it
            waited = started - job.waiting_since
            if waited > self._timeout:
                _deliver(
                    job,
                    DeadlineExceeded(
                        f"the request waited {waited:.1f} s for the model, "
                        f"longer than REQUEST_TIMEOUT_S={self._timeout:g}; retry later"
                    ),
                )
                expired += 1
                continue
            live.append(job)
        if not live:
            if self._on_batch is not None and expired:
                # Count the expired ones even when nothing was left to run.
                self._on_batch(BatchStats(0, 0.0, (), expired=expired))
            return
        try:
            probabilities = self._classifier.run(
                np.stack([job.tensor for job in live]), narrow=narrow
            )
        except Exception as exc:
            if len(live) > 1:
                # One image may have sunk the batch: run them alone, so the error reaches only
                # the request that caused it and the others still get their answers.
                logger.warning(
                    "model run failed for a batch of %d (%s); retrying one by one", len(live), exc
                )
                for job in live:
                    self._run([job], narrow=narrow)
                return
            logger.exception("model run failed for one image")
            _deliver(live[0], exc)
            return
        model_s = time.perf_counter() - started
        for job, row in zip(live, probabilities, strict=True):
            result = RunResult(
                probabilities=row,
                model_ms=model_s * 1000,
                queue_ms=(started - job.submitted) * 1000,
                batch_size=len(live),
            )
            _deliver(job, result)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(live),
                    model_seconds=model_s,
                    queue_seconds=tuple(started - job.submitted for job in live),
                    expired=expired,
                )
            )
