"""`make bench` part two: what an operator sees — warm-up, memory, and a 10× overload.

Run from the repository root as `python -m bench.operations` (bench/run.sh does, after
bench.bench). Starts `cross-pictures serve` with PRECISION from the environment (default: the
service's default) and measures, with a real 500×375 JPEG:
  - first-request latency right after /ready turns 200, against the median of the next 50
    sequential requests (is the warm-up doing its job?);
  - resident memory at idle, and its maximum under load;
  - wrk at the benchmark's concurrency (16) and at 10× that (160) for BENCH_OVERLOAD_S seconds
    each: throughput, how many requests were refused with 503, and the p50/p99 latency of the
    requests that were accepted, read from the service's own per-request log lines (wrk's
    percentiles mix the instant 503s in). The 10× point runs twice: with clients that resend a
    refused request at once (every refusal still costs the server its HTTP work and the upload
    bytes) and with clients that wait the Retry-After the 503 asks for.
Writes bench/out/operations.json and operations.md and prints the markdown.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench import (
    DEFAULT_PHOTO,
    RssSampler,
    log,
    prepare_images,
    rss_bytes,
    run_wrk,
    running_server,
)
from bench.report import TARGET_CONCURRENCY, TARGET_IMAGE

OVERLOAD_FACTOR = 10
STEADY_REQUESTS = 50
MIB = 1024 * 1024


def post_image(url: str, body: bytes, boundary: str) -> float:
    """One sequential POST /infer; its wall time in ms (urllib: no extra dependency)."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /infer answered {response.status}")
    return (time.perf_counter() - started) * 1000


def multipart(image: bytes, boundary: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode()


def accepted_latencies(log_path: Path, offset: int) -> tuple[list[float], dict[int, int]]:
    """duration_ms of /infer requests answered 200 after `offset`, and counts by status."""
    durations: list[float] = []
    statuses: dict[int, int] = {}
    with log_path.open("rb") as log_file:
        log_file.seek(offset)
        for raw in log_file:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("path") != "/infer" or "status" not in line:
                continue
            status = int(line["status"])
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                durations.append(float(line["duration_ms"]))
    return durations, statuses


def load_point(
    url: str,
    image: Path,
    concurrency: int,
    seconds: float,
    log_path: Path,
    pid: int,
    *,
    honour_retry_after: bool = False,
) -> dict[str, Any]:
    offset = log_path.stat().st_size
    with RssSampler(pid) as rss:
        result = run_wrk(
            url + "/infer", image, concurrency, seconds, honour_retry_after=honour_retry_after
        )
    time.sleep(1.0)  # the last log lines are written after the responses
    durations, statuses = accepted_latencies(log_path, offset)
    accepted = np.array(durations) if durations else np.array([float("nan")])
    point = {
        "concurrency": concurrency,
        "seconds": result.duration_s,
        "answered_200": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "accepted_per_s": statuses.get(200, 0) / result.duration_s,
        "accepted_p50_ms": float(np.percentile(accepted, 50)),
        "accepted_p99_ms": float(np.percentile(accepted, 99)),
        "accepted_max_ms": float(accepted.max()),
        "rss_mib_max": rss.max_mib,
    }
    log(
        f"c={concurrency}: {point['accepted_per_s']:.1f} accepted/s, statuses {point['statuses']},"
        f" accepted p50 {point['accepted_p50_ms']:.0f} ms p99 {point['accepted_p99_ms']:.0f} ms"
    )
    return point


def main() -> int:
    out_dir = Path(os.environ.get("BENCH_OUT", "bench/out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = float(os.environ.get("BENCH_OVERLOAD_S", "15"))
    photo = Path(os.environ.get("BENCH_PHOTO", DEFAULT_PHOTO))
    from cross_pictures.config import Settings

    settings = Settings()
    precision = str(settings.precision.value)
    model = settings.active_model_path
    boundary = "cross-pictures-operations"
    results: dict[str, Any] = {"precision": precision, "max_queue": settings.max_queue}
    with tempfile.TemporaryDirectory(prefix="cross-pictures-ops-") as tmp:
        image = prepare_images(photo, Path(tmp), (TARGET_IMAGE,))[TARGET_IMAGE]
        body = multipart(image.read_bytes(), boundary)
        log_dir = out_dir / "logs" / "operations"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"service-{precision}.log"  # the name running_server gives it
        log_path.unlink(missing_ok=True)
        with running_server("service", precision, model, settings.threads, log_dir) as server:
            results["rss_idle_mib"] = rss_bytes([server.process.pid]) / MIB
            first = post_image(server.url + "/infer", body, boundary)
            steady = [
                post_image(server.url + "/infer", body, boundary) for _ in range(STEADY_REQUESTS)
            ]
            results["first_request_ms"] = first
            results["steady_median_ms"] = float(np.median(steady))
            results["steady_p90_ms"] = float(np.percentile(steady, 90))
            log(
                f"first request {first:.1f} ms, next {STEADY_REQUESTS}: median "
                f"{results['steady_median_ms']:.1f} ms; RSS idle {results['rss_idle_mib']:.0f} MiB"
            )
            pid = server.process.pid
            results["normal"] = load_point(
                server.url, image, TARGET_CONCURRENCY, seconds, log_path, pid
            )
            time.sleep(1.0)
            results["overload"] = load_point(
                server.url, image, OVERLOAD_FACTOR * TARGET_CONCURRENCY, seconds, log_path, pid
            )
            time.sleep(1.0)
            results["overload_polite"] = load_point(
                server.url,
                image,
                OVERLOAD_FACTOR * TARGET_CONCURRENCY,
                seconds,
                log_path,
                pid,
                honour_retry_after=True,
            )
    normal, overload = results["normal"], results["overload"]
    polite = results["overload_polite"]
    lines = [
        f"### Operations ({precision}, 500×375 JPEG, MAX_QUEUE={settings.max_queue})",
        "",
        f"- first request after /ready: {results['first_request_ms']:.1f} ms; median of the "
        f"next {STEADY_REQUESTS}: {results['steady_median_ms']:.1f} ms",
        f"- resident memory at idle: {results['rss_idle_mib']:.0f} MiB",
        "",
        "| load (wrk connections) | accepted/s | responses by status | accepted p50 ms "
        "| accepted p99 ms | RSS max MiB |",
        "|---|---|---|---|---|---|",
    ]
    rows = (
        ("16", normal),
        (f"160 ({OVERLOAD_FACTOR}×), clients retry a 503 at once", overload),
        (f"160 ({OVERLOAD_FACTOR}×), clients wait Retry-After", polite),
    )
    for name, point in rows:
        lines.append(
            f"| {name} | {point['accepted_per_s']:.1f} | {point['statuses']} | "
            f"{point['accepted_p50_ms']:.0f} | {point['accepted_p99_ms']:.0f} | "
            f"{point['rss_mib_max']:.0f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    (out_dir / "operations.md").write_text(report)
    (out_dir / "operations.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
