"""Reads image parts out of a multipart body as it streams in, stopping at the size limit.

Starlette's `request.form()` spools every file to a temporary file (on disk past 1 MiB) before
the handler sees it, so an over-limit upload is read in full first. Parsing the stream here with
python-multipart (the parser Starlette itself uses) lets us refuse at the limit and keep images
in memory, where decoding wants them anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from cross_pictures.errors import Overloaded, UploadTimeout, UploadTooLarge

if TYPE_CHECKING:  # the TypedDict exists for type checkers only
    from python_multipart.multipart import MultipartCallbacks

T = TypeVar("T")

# Room for boundaries, part headers and small form fields around the image bytes.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class UploadSlots:
    """Bounds the request bodies being read at once, in number and in bytes, so a flood of big
    uploads cannot exhaust memory: past either limit a request is refused (503), before its
    body is read when it declares its length. Used from the event loop only, so no lock."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.busy = 0
        self.bytes = 0  # reserved by the bodies being read

    @contextmanager
    def take(self) -> Iterator[Reservation]:
        """Hold one slot while reading a body; Overloaded if none is free."""
        if self.busy >= self.limit:
            raise Overloaded(
                f"{self.busy} uploads are being received already "
                f"(MAX_CONCURRENT_UPLOADS={self.limit}); retry shortly"
            )
        self.busy += 1
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            self.busy -= 1
            self.bytes -= reservation.bytes


class Reservation:
    """The share of MAX_UPLOAD_MEMORY_BYTES one body being read holds."""

    def __init__(self, slots: UploadSlots) -> None:
        self._slots = slots
        self.bytes = 0

    def cover(self, size: int) -> None:
        """Grow the reservation to `size` bytes (what is declared or already received)."""
        extra = size - self.bytes
        if extra <= 0:
            return
        budget = self._slots.max_bytes
        if size > budget:
            raise UploadTooLarge(
                f"the request body is {size} bytes, more than MAX_UPLOAD_MEMORY_BYTES={budget} "
                "that all uploads being received may hold; send fewer or smaller images"
            )
        if self._slots.bytes + extra > budget:
            raise Overloaded(
                f"uploads being received already hold {self._slots.bytes} of "
                f"MAX_UPLOAD_MEMORY_BYTES={budget} bytes; retry shortly"
            )
        self.bytes = size
        self._slots.bytes += extra


class MalformedRequest(Exception):
    """The request is not what the route needs (mapped to 422, naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ClientGone(Exception):
    """The client disconnected before it got its answer."""


@dataclass(slots=True)
class _Part:
    name: str = ""
    data: bytearray = field(default_factory=bytearray)
    wanted: bool = False


class _ImagePartCollector:
    def __init__(self, field: str, max_part_bytes: int, max_parts: int) -> None:
        self.field = field
        self.max_part_bytes = max_part_bytes
        self.max_parts = max_parts
        self.parts: list[bytes] = []
        self.ended = False  # the closing boundary arrived
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_end": self._on_end,
        }

    def _on_end(self) -> None:
        self.ended = True

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._header_value))
            self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
            if self._part.name == self.field:
                if len(self.parts) >= self.max_parts:
                    raise UploadTooLarge(_too_many(self.field, self.max_parts))
                self._part.wanted = True
        self._header_name.clear()
        self._header_value.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._part.wanted:
            return  # other form fields are ignored (their size is bounded by the body limit)
        if len(self._part.data) + (end - start) > self.max_part_bytes:
            raise UploadTooLarge(
                f"the image is larger than MAX_UPLOAD_BYTES={self.max_part_bytes} bytes; "
                "send a smaller file (resizing to ~1000 px loses no accuracy)"
            )
        self._part.data += data[start:end]

    def _on_part_end(self) -> None:
        if self._part.wanted:
            self.parts.append(bytes(self._part.data))
        self._part = _Part()


def _too_many(field: str, max_parts: int) -> str:
    if max_parts == 1:
        return f"send one file in the '{field}' field; use POST /infer/batch for several"
    return f"at most {max_parts} files may be sent in the '{field}' field (MAX_BATCH_IMAGES)"


async def read_image_parts(
    request: Request,
    *,
    field: str,
    max_part_bytes: int,
    max_parts: int,
    slots: UploadSlots,
    timeout_s: float,
) -> list[bytes]:
    """The contents of every multipart part named `field`, each at most `max_part_bytes`."""
    async with receiving(slots, timeout_s) as reservation:
        return await _read_image_parts(
            request,
            field=field,
            max_part_bytes=max_part_bytes,
            max_parts=max_parts,
            reservation=reservation,
        )


def declared_length(request: Request) -> int | None:
    """The body length the client declared, when Content-Length is a plain number."""
    value = request.headers.get("content-length", "").strip()
    return int(value) if value.isdecimal() else None


@asynccontextmanager
async def receiving(slots: UploadSlots, timeout_s: float) -> AsyncIterator[Reservation]:
    """An upload slot and its memory reservation for the time a body takes to arrive, which is
    bounded: a client that trickles it in (slow loris) would otherwise hold both for ever."""
    try:
        with slots.take() as reservation:
            async with asyncio.timeout(timeout_s):
                yield reservation
    except TimeoutError:
        raise UploadTimeout(
            f"the upload did not arrive within UPLOAD_TIMEOUT_S={timeout_s:g} s; "
            "send it again over a faster connection, or send a smaller file"
        ) from None


async def _read_image_parts(
    request: Request, *, field: str, max_part_bytes: int, max_parts: int, reservation: Reservation
) -> list[bytes]:
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise MalformedRequest(
            field,
            f"send the image as multipart/form-data in a field named '{field}', "
            f"e.g. curl -F {field}=@photo.jpg",
        )
    body_limit = max_parts * max_part_bytes + MULTIPART_OVERHEAD_BYTES
    declared = declared_length(request)
    if declared is not None:
        if declared > body_limit:
            # Refuse before reading a byte of an upload we would throw away.
            raise UploadTooLarge(
                f"the request body is {declared} bytes, more than the "
                f"{max_part_bytes}-byte limit per image (MAX_UPLOAD_BYTES); send a smaller file"
            )
        reservation.cover(declared)  # refuse now rather than halfway through the body
    collector = _ImagePartCollector(field, max_part_bytes, max_parts)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:  # chunked bodies declare no length up front
                raise UploadTooLarge(
                    f"the request body is larger than {body_limit} bytes; "
                    f"each image may have at most MAX_UPLOAD_BYTES={max_part_bytes} bytes"
                )
            reservation.cover(received)
            parser.write(chunk)
        parser.finalize()
    except ClientDisconnect as exc:
        raise ClientGone from exc
    except MultipartParseError as exc:
        raise MalformedRequest(field, f"the multipart body is malformed: {exc}") from exc
    if not collector.ended:
        raise MalformedRequest(
            field,
            "the multipart body ended before its closing boundary: the upload was cut off "
            "(or the client sent no final boundary); send it again",
        )
    if not collector.parts:
        raise MalformedRequest(
            field, f"field '{field}' is required: attach the image with -F {field}=@photo.jpg"
        )
    return collector.parts


async def cancel_if_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first, so the model never runs
    for nobody (the model runner skips cancelled requests)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # The body is fully read by now, so the next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not watcher.cancelled():
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
