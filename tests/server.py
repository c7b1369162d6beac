"""A real uvicorn process for tests where sockets, signals and real clients matter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running server: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM, as Kubernetes and `docker stop` do."""
        self.process.send_signal(signal.SIGTERM)


@contextmanager
def running_server(
    log_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    command: list[str] | None = None,
    wait_for: str = "/ready",
    timeout_s: float = 120.0,
) -> Iterator[Server]:
    """Start `uvicorn cross_pictures.main:app` on a free port and wait until `wait_for` is 200."""
    port = free_port()
    argv = command or [
        sys.executable,
        "-m",
        "uvicorn",
        "cross_pictures.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    argv = [part.replace("{port}", str(port)) for part in argv]
    full_env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=log)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(server.url + wait_for, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout_s} s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
