"""A real server process with the real model: SIGTERM draining and multi-worker metrics."""

from __future__ import annotations

import contextlib
import io
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import INT8_MODEL_PATH, require_model
from tests.images import PHOTOS
from tests.server import Server, running_server
from tests.test_operations import metric_value

SERVE = [sys.executable, "-m", "cross_pictures.cli", "serve"]


def photo_bytes(name: str = "n02391049_zebra.JPEG") -> bytes:
    path = PHOTOS / name
    if path.is_file():
        return path.read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (500, 375), "gray").save(buffer, "JPEG")
    return buffer.getvalue()


def multipart(data: bytes, boundary: str = "cpboundary") -> tuple[bytes, bytes, dict[str, str]]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data, tail, {"content-type": f"multipart/form-data; boundary={boundary}"}


def start_slow_uploads(
    server: Server, count: int, release: threading.Event
) -> tuple[list[threading.Thread], list[int]]:
    """`count` uploads of a real photo that send half their body, then wait for `release`.

    Returns the client threads and the list their statuses are appended to."""
    statuses: list[int] = []
    first, rest, headers = multipart(photo_bytes())

    def slow_upload() -> None:
        def body() -> Iterator[bytes]:
            yield first[: len(first) // 2]
            release.wait(20)
            yield first[len(first) // 2 :]
            yield rest

        response = httpx.post(server.url + "/infer", content=body(), headers=headers, timeout=60)
        statuses.append(response.status_code)

    uploads = [threading.Thread(target=slow_upload) for _ in range(count)]
    for thread in uploads:
        thread.start()
    return uploads, statuses


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_then_exits_zero(tmp_path: Path) -> None:
    require_model(INT8_MODEL_PATH)  # the default precision
    env = {"SHUTDOWN_TIMEOUT_S": "30", "LOG_FORMAT": "json", "WORKERS": "1"}
    with running_server(tmp_path / "server.log", env, command=SERVE) as server:
        photo = photo_bytes()
        # Uploads still arriving when SIGTERM comes were accepted, so they must be answered,
        # however long the client takes (within SHUTDOWN_TIMEOUT_S).
        release = threading.Event()
        uploads, statuses = start_slow_uploads(server, 6, release)
        with httpx.Client(base_url=server.url, timeout=10) as probe:
            in_flight = 0.0
            for _ in range(1500):  # all six uploads (and this scrape) are in flight
                text = probe.get("/metrics").text
                in_flight = metric_value(text, "cross_pictures_requests_in_flight")
                if in_flight >= 7:
                    break
                time.sleep(0.02)
            assert in_flight >= 7, "the six slow uploads never reached the server"
            server.terminate()
            for _ in range(500):  # the signal is handled on the event loop, moments later
                ready = probe.get("/ready")
                if ready.status_code == 503:
                    break
                time.sleep(0.01)
            assert ready.status_code == 503
            assert ready.json()["reason"] == "shutting down"
            refused = probe.post("/infer", files={"image": ("p.jpg", photo)})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert probe.get("/health").status_code == 200
        assert server.process.poll() is None  # still draining: the uploads are not done
        release.set()
        for thread in uploads:
            thread.join()
        assert statuses == [200] * 6, statuses
        assert server.process.wait(30) == 0
        assert "drained, shutting down" in server.log()


@pytest.mark.slow
def test_sigterm_drains_every_worker_when_there_are_several(tmp_path: Path) -> None:
    # uvicorn's supervisor passes SIGTERM to each worker; each drains its own requests.
    require_model(INT8_MODEL_PATH)
    env = {"WORKERS": "2", "NUM_THREADS": "1", "SHUTDOWN_TIMEOUT_S": "30", "LOG_FORMAT": "json"}
    with running_server(tmp_path / "server.log", env, command=SERVE) as server:
        for _ in range(3000):  # /ready answers once the first worker is up
            if server.log().count('"message": "ready"') >= 2:
                break
            time.sleep(0.02)
        release = threading.Event()
        uploads, statuses = start_slow_uploads(server, 6, release)
        in_flight = 0.0
        for _ in range(1500):  # summed over the workers (prometheus-client's livesum)
            text = httpx.get(server.url + "/metrics", timeout=10).text
            in_flight = metric_value(text, "cross_pictures_requests_in_flight")
            if in_flight >= 7:
                break
            time.sleep(0.02)
        assert in_flight >= 7
        server.terminate()
        for _ in range(500):  # both workers got the signal and are draining
            if server.log().count("SIGTERM received: draining") == 2:
                break
            time.sleep(0.01)
        assert server.log().count("SIGTERM received: draining") == 2
        assert server.process.poll() is None  # waiting for the uploads
        release.set()
        for thread in uploads:
            thread.join()
        assert statuses == [200] * 6, statuses
        assert server.process.wait(30) == 0
    assert server.log().count("drained, shutting down") == 2


@pytest.mark.slow
def test_shutdown_is_bounded_by_shutdown_timeout_even_if_a_client_never_finishes(
    tmp_path: Path,
) -> None:
    # An upload that stalls forever must not keep the pod alive past its grace period: the
    # drain gives up at SHUTDOWN_TIMEOUT_S, uvicorn and the model runner get only the rest.
    require_model(INT8_MODEL_PATH)
    env = {"SHUTDOWN_TIMEOUT_S": "2", "LOG_FORMAT": "json"}
    with running_server(tmp_path / "server.log", env, command=SERVE) as server:
        first, _, headers = multipart(photo_bytes())
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as stalled:
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            stalled.sendall(
                f"POST /infer HTTP/1.1\r\nHost: {host}\r\n{head}"
                f"Content-Length: {len(first) + 1000}\r\n\r\n".encode()
                + first[:1000]
            )
            with httpx.Client(base_url=server.url, timeout=10) as probe:
                in_flight = 0.0
                for _ in range(500):
                    in_flight = metric_value(
                        probe.get("/metrics").text, "cross_pictures_requests_in_flight"
                    )
                    if in_flight >= 2:  # the stalled upload and this scrape
                        break
                    time.sleep(0.02)
                assert in_flight >= 2
            server.terminate()
            # 2 s of drain + 2 s of uvicorn grace + the runner: well inside this hang guard.
            assert server.process.wait(30) == 0
    log = server.log()
    assert '"unfinished_requests": 1' in log


@pytest.mark.slow
def test_slow_loris_uploads_time_out_and_free_their_slots(tmp_path: Path) -> None:
    # Clients that send a few bytes and then stall would hold every upload slot for ever:
    # after UPLOAD_TIMEOUT_S they get 408 and their connections close.
    require_model(INT8_MODEL_PATH)
    env = {"UPLOAD_TIMEOUT_S": "1", "MAX_CONCURRENT_UPLOADS": "2", "LOG_FORMAT": "json"}
    with running_server(tmp_path / "server.log", env) as server:
        first, _, headers = multipart(photo_bytes())
        host, port = server.url.removeprefix("http://").split(":")
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        stalled = []
        for _ in range(2):  # every slot
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(
                f"POST /infer HTTP/1.1\r\nHost: {host}\r\n{head}"
                f"Content-Length: {len(first) + 1000}\r\n\r\n".encode()
                + first[:1000]
            )
            stalled.append(sock)
        try:
            for sock in stalled:
                response = b""
                while not _complete_http_response(response) and (data := sock.recv(65536)):
                    response += data
                assert response.startswith(b"HTTP/1.1 408"), response[:200]
                assert b"UPLOAD_TIMEOUT_S" in response
                assert sock.recv(1) == b""  # and the server closed the connection
        finally:
            for sock in stalled:
                sock.close()
        photo = photo_bytes()
        answer = httpx.post(server.url + "/infer", files={"image": ("p.jpg", photo)}, timeout=30)
        assert answer.status_code == 200  # the slots are free again
        text = httpx.get(server.url + "/metrics", timeout=10).text
        assert metric_value(text, "cross_pictures_rejected_total", reason="upload_timeout") == 2


@pytest.mark.slow
def test_metrics_add_up_across_two_workers(tmp_path: Path) -> None:
    require_model(INT8_MODEL_PATH)  # the default precision
    env = {"WORKERS": "2", "NUM_THREADS": "1", "MAX_BATCH_SIZE": "2", "LOG_FORMAT": "json"}
    with running_server(tmp_path / "server.log", env, command=SERVE) as server:
        # /ready answers once the first worker is up; wait for the second one too.
        for _ in range(3000):
            if server.log().count('"message": "ready"') >= 2:
                break
            time.sleep(0.02)
        assert server.log().count('"message": "ready"') == 2, server.log()
        photo = photo_bytes()
        # Fresh connections, so the kernel spreads them over both workers.
        for _ in range(12):
            response = httpx.post(
                server.url + "/infer", files={"image": ("p.jpg", photo)}, timeout=60
            )
            assert response.status_code == 200
        for _ in range(6):
            text = httpx.get(server.url + "/metrics", timeout=10).text
            total = metric_value(
                text, "cross_pictures_requests_total", route="/infer", method="POST", status="200"
            )
            assert total == 12  # whichever worker answers, it reports the whole server
        info = [line for line in text.splitlines() if line.startswith("cross_pictures_model_info")]
        assert info
        assert 'file="resnet50.int8.onnx"' in info[0]
        assert 'precision="int8"' in info[0]
        loaded = [line for line in server.log().splitlines() if '"model loaded"' in line]
        assert len({json.loads(line)["pid"] for line in loaded}) == 2


def test_bad_setting_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "cross_pictures.main:app", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "TOP_K": "zero", "HOME": str(tmp_path)},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "TOP_K='zero'" in result.stderr


def test_missing_model_stops_start_up_with_the_fix(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "cross_pictures.main:app", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "MODEL_PATH": str(tmp_path / "nope.onnx")},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "run `cross-pictures fetch-model`" in result.stderr


def _complete_http_response(response: bytes) -> bool:
    """True once `response` holds a whole HTTP/1.1 response with a Content-Length body."""
    head, found, body = response.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_oversized_streaming_upload_is_refused_before_it_ends(live_server: Server) -> None:
    # A chunked upload with no Content-Length: the server must answer 413 once the limit is
    # crossed, not after reading all of it (here 64 MiB against the 20 MiB default).
    host, port = live_server.url.removeprefix("http://").split(":")
    boundary = "cpboundary"
    head = (
        f"POST /infer HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    ).encode()
    chunk = b"\xff" * (1 << 20)
    sent_mib = 0
    response = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        try:
            while sent_mib < 64:
                sent_mib += 1
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: exactly what we want
        sock.settimeout(30)
        # The head and the body may arrive in separate segments: read to the end of the body.
        with contextlib.suppress(ConnectionResetError):
            while not _complete_http_response(response) and (data := sock.recv(65536)):
                response += data
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"MAX_UPLOAD_BYTES" in response
    assert sent_mib < 64


def test_client_that_hangs_up_mid_upload_is_logged_as_499(live_server: Server) -> None:
    # A client gone mid-upload costs nothing more and is neither a 4xx of ours nor a 5xx.
    host, port = live_server.url.removeprefix("http://").split(":")
    labels = {"route": "/infer", "method": "POST", "status": "499"}
    before = metric_value(
        httpx.get(live_server.url + "/metrics").text, "cross_pictures_requests_total", **labels
    )
    body, _, headers = multipart(b"\xff\xd8" + b"\0" * 50_000, boundary="gone")
    head = (
        f"POST /infer HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: {headers['content-type']}\r\nContent-Length: {len(body) + 10_000}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)  # 10 kB short of what it announced, then hang up
    hung_up = 0.0
    for _ in range(100):
        text = httpx.get(live_server.url + "/metrics").text
        hung_up = metric_value(text, "cross_pictures_requests_total", **labels) - before
        if hung_up:
            break
        time.sleep(0.05)
    assert hung_up == 1
    assert httpx.get(live_server.url + "/health").status_code == 200
