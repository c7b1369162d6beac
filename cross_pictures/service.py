"""Glue between the routes and the work: limits, thread hops, timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import numpy as np

from cross_pictures.batching import ModelRunner
from cross_pictures.errors import CrossPicturesError, InvalidImage, Overloaded
from cross_pictures.inference import FloatArray, Prediction, top_k
from cross_pictures.preprocessing import INPUT_SIZE, PreparedImage, prepare_image


@dataclass(frozen=True, slots=True)
class Classification:
    """The answer for one image, with what the logs and metrics want to know."""

    predictions: list[Prediction]
    inference_time_ms: float
    width: int
    height: int
    batch_size: int
    queue_ms: float
    decode_ms: float


class ClassificationService:
    """Decodes uploads in a bounded thread pool and feeds the shared model runner."""

    def __init__(
        self,
        runner: ModelRunner,
        labels: Sequence[str],
        *,
        max_image_pixels: int,
        decode_threads: int,
    ) -> None:
        self.runner = runner
        self.labels = labels
        self._max_pixels = max_image_pixels
        # Decoding competes with the model for the same cores; as many decoders as cores
        # keeps every core busy without piling up threads.
        self._decode_limiter = anyio.CapacityLimiter(decode_threads)
        self._decoding = 0  # images between upload and queue; only touched on the event loop

    @property
    def decoding(self) -> int:
        """Images being decoded, or waiting for a decoder."""
        return self._decoding

    def admit(self) -> None:
        """Refuse a request before its upload is read when the model's queue is already full.

        Under overload a refusal must cost next to nothing: one that is refused only after
        parsing and decoding its image burns the CPU the accepted requests need (measured at
        10x overload: accepted throughput fell by more than half).
        """
        waiting = self.runner.queue_depth + self._decoding
        if waiting >= self.runner.max_queue:
            raise Overloaded(
                f"{waiting} images are already waiting for the model "
                f"(MAX_QUEUE={self.runner.max_queue}); retry shortly"
            )

    async def prepare(self, data: bytes) -> PreparedImage:
        """Decode and preprocess off the event loop."""
        if not data:
            raise InvalidImage("the uploaded file is empty (0 bytes); send the image's contents")
        # A decode cannot be stopped once its thread runs. If the caller gives up (the client
        # hung up), the decode must keep its pool slot and its place in the admission count
        # until the thread is done, or hung-up clients could run any number of decodes at once.
        decoding = asyncio.ensure_future(self._decode_in_pool(data))
        decoding.add_done_callback(_retrieve_outcome)
        return await asyncio.shield(decoding)

    async def _decode_in_pool(self, data: bytes) -> PreparedImage:
        self._decoding += 1
        try:
            return await anyio.to_thread.run_sync(
                self._prepare_sync, data, limiter=self._decode_limiter
            )
        finally:
            self._decoding -= 1

    def _prepare_sync(self, data: bytes) -> PreparedImage:
        return prepare_image(data, max_pixels=self._max_pixels)

    async def classify(self, data: bytes, k: int) -> Classification:
        """Top-k classes for one encoded image."""
        started = time.perf_counter()
        prepared = await self.prepare(data)
        decode_ms = (time.perf_counter() - started) * 1000
        # The deadline counts the wait for a decoder too: under load that is most of the wait.
        result = await self.runner.submit(prepared.tensor, waiting_since=started)
        return Classification(
            predictions=top_k(result.probabilities, self.labels, k),
            inference_time_ms=result.model_ms,
            width=prepared.width,
            height=prepared.height,
            batch_size=result.batch_size,
            queue_ms=result.queue_ms,
            decode_ms=decode_ms,
        )

    async def classify_many(
        self, images: Sequence[bytes], k: int
    ) -> list[Classification | CrossPicturesError]:
        """One result per image, in order; a bad image gets its own error, not the others'."""

        async def one(data: bytes) -> Classification | CrossPicturesError:
            try:
                return await self.classify(data, k)
            except CrossPicturesError as exc:
                return exc

        return list(await asyncio.gather(*(one(data) for data in images)))

    async def probabilities(self, batch: FloatArray) -> tuple[FloatArray, float]:
        """Probabilities for already preprocessed tensors [N, 3, 224, 224] and the model ms."""
        if batch.ndim != 4 or batch.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise InvalidImage(
                f"tensor shape {list(batch.shape)} is not [N, 3, {INPUT_SIZE}, {INPUT_SIZE}]"
            )
        results = await asyncio.gather(*(self.runner.submit(row) for row in batch))
        stacked = np.stack([r.probabilities for r in results]).astype(np.float32, copy=False)
        return stacked, max((r.model_ms for r in results), default=0.0)


def _retrieve_outcome(task: asyncio.Future[PreparedImage]) -> None:
    # Nobody awaits an abandoned decode: take its error so asyncio does not log it as lost.
    if not task.cancelled():
        task.exception()


@dataclass(slots=True)
class ServiceState:
    """What the probes report: set by the app's lifespan and signal handling."""

    service: ClassificationService | None = None
    warmed_up: bool = False
    draining: bool = False
    # time.monotonic() by which the whole shutdown must be over (set by SIGTERM)
    shutdown_deadline: float | None = None
    in_flight: int = 0  # HTTP requests being handled, kept by the request middleware
    # Strong references to fire-and-forget tasks, so the loop does not lose them.
    background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def model_loaded(self) -> bool:
        """True once the model is loaded and the runner accepts work."""
        return self.service is not None

    def not_ready_reason(self) -> str | None:
        """Why /ready says no, or None when it says yes."""
        if self.draining:
            return "shutting down"
        if self.service is None:
            return "model not loaded"
        if not self.warmed_up:
            return "warming up"
        return None
