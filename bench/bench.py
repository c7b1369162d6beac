"""`make bench`: raw ONNX Runtime, this service and a naive server, fp32 and int8, in one run.

Run from the repository root as `python -m bench.bench` (bench/run.sh does, after installing
wrk). Prints markdown tables and the issue's targets, and writes bench/out/results.json,
results.md (ready to paste into bench/RESULTS.md) and throughput.png.

Environment (defaults in brackets; BENCH_QUICK=1 changes the defaults to a ~2-minute run):
  BENCH_DURATION_S [10; quick 3]      seconds of load per point
  BENCH_WARMUP_S [3; quick 1]         unrecorded load per server and image before measuring
  BENCH_CONCURRENCY [1,4,16,64; quick 1,16]
  BENCH_BATCH_SIZES [1,2,4,8,16]      raw ONNX Runtime batch sizes
  BENCH_RAW_S [3; quick 1]            seconds per raw batch size
  BENCH_PRECISIONS [fp32,int8]        BENCH_SERVERS [service,naive]   BENCH_IMAGES [500x375,12mp]
  BENCH_FLAT_REQUESTS [10000; quick 1000]  long-run requests for the memory check (0: skip)
  BENCH_FLAT_WARMUP [2000; quick 200]
  BENCH_PHOTO [../shared/photos/imagenet-dev/n02391049_zebra.JPEG]
  BENCH_OUT [bench/out]
The service reads its usual variables (MAX_BATCH_SIZE, NUM_THREADS, WORKERS, ...) from the
environment; HOST and PORT are chosen here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.report import (
    TARGET_CONCURRENCY,
    TARGET_IMAGE,
    Flatness,
    LoadPoint,
    RawPoint,
    Results,
    evaluate_targets,
    render_markdown,
    verdict,
    write_reports,
)

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = ROOT / "bench" / "infer.lua"
DEFAULT_PHOTO = ROOT.parent / "shared" / "photos" / "imagenet-dev" / "n02391049_zebra.JPEG"
SMALL_SIZE = (500, 375)
LARGE_SIZE = (4000, 3000)  # 12 MP, like a phone photo
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_INTERVAL_S = 0.5
WRK_TIMEOUT = "30s"  # wrk's default (2 s) would drop the slow tail from the latency figures
MIB = 1024 * 1024


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """What to measure and for how long."""

    quick: bool
    duration_s: float
    warmup_s: float
    concurrency: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    raw_s: float
    precisions: tuple[str, ...]
    servers: tuple[str, ...]
    images: tuple[str, ...]
    flat_requests: int
    flat_warmup: int
    photo: Path
    out_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Read BENCH_* variables; BENCH_QUICK=1 changes the defaults."""
        quick = env.get("BENCH_QUICK", "") not in ("", "0")

        def number(name: str, default: float, quick_default: float) -> float:
            return float(env.get(name) or (quick_default if quick else default))

        def items(name: str, default: str, quick_default: str | None = None) -> tuple[str, ...]:
            text = env.get(name) or (quick_default if quick and quick_default else default)
            return tuple(part.strip() for part in text.split(",") if part.strip())

        return cls(
            quick=quick,
            duration_s=number("BENCH_DURATION_S", 10, 3),
            warmup_s=number("BENCH_WARMUP_S", 3, 1),
            concurrency=tuple(int(c) for c in items("BENCH_CONCURRENCY", "1,4,16,64", "1,16")),
            batch_sizes=tuple(int(b) for b in items("BENCH_BATCH_SIZES", "1,2,4,8,16")),
            raw_s=number("BENCH_RAW_S", 3, 1),
            precisions=items("BENCH_PRECISIONS", "fp32,int8"),
            servers=items("BENCH_SERVERS", "service,naive"),
            images=items("BENCH_IMAGES", f"{TARGET_IMAGE},12mp"),
            flat_requests=int(number("BENCH_FLAT_REQUESTS", 10_000, 1_000)),
            flat_warmup=int(number("BENCH_FLAT_WARMUP", 2_000, 200)),
            photo=Path(env.get("BENCH_PHOTO") or DEFAULT_PHOTO),
            out_dir=Path(env.get("BENCH_OUT") or ROOT / "bench" / "out"),
        )


# -- processes: CPU time, resident memory ----------------------------------------------------


def _children(pid: int) -> list[int]:
    """Direct children of pid (scans /proc: this kernel may lack /proc/PID/task/*/children)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (uvicorn workers when WORKERS > 1)."""
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in _children(parent)]
        tree += frontier
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Sum of VmRSS of these processes."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all CPUs; idle, iowait and steal excluded)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of this benchmark process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """Samples a process tree's resident memory every RSS_INTERVAL_S on a background thread."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._pids = process_tree(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_bytes(self._pids))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pids = process_tree(self._pid)
        self.samples.append(rss_bytes(self._pids))

    def _loop(self) -> None:
        count = 0
        while not self._stop.wait(RSS_INTERVAL_S):
            count += 1
            if count % 10 == 0:  # workers may come and go; rescanning /proc is not free
                self._pids = process_tree(self._pid)
            self.samples.append(rss_bytes(self._pids))

    @property
    def start_mib(self) -> float:
        return self.samples[0] / MIB

    @property
    def end_mib(self) -> float:
        return self.samples[-1] / MIB

    @property
    def max_mib(self) -> float:
        return max(self.samples) / MIB


# -- images ----------------------------------------------------------------------------------


def prepare_images(photo: Path, work_dir: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """The test images: the dev photo at 500x375 (as is if it already is) and a 12 MP upscale."""
    from PIL import Image

    if not photo.is_file():
        raise SystemExit(
            f"bench: {photo} is missing: the dev photos live in ../shared/photos "
            "(set BENCH_PHOTO to any JPEG photo)"
        )
    paths: dict[str, Path] = {}
    with Image.open(photo) as original:
        original.load()
        rgb = original.convert("RGB")
        if TARGET_IMAGE in names:
            if original.format == "JPEG" and original.size == SMALL_SIZE:
                paths[TARGET_IMAGE] = photo  # the real file, read by wrk where it lies
            else:
                path = work_dir / "photo-500x375.jpg"
                rgb.resize(SMALL_SIZE, Image.Resampling.LANCZOS).save(path, "JPEG", quality=90)
                paths[TARGET_IMAGE] = path
        if "12mp" in names:
            path = work_dir / "photo-12mp.jpg"
            large = rgb.resize(LARGE_SIZE, Image.Resampling.BICUBIC)
            large.save(path, "JPEG", quality=90)
            paths["12mp"] = path
    return paths


def describe_images(paths: Mapping[str, Path]) -> dict[str, str]:
    """For the report: where each image came from and its size."""
    from PIL import Image

    described = {}
    for name, path in paths.items():
        with Image.open(path) as img:
            origin = path.name if name == TARGET_IMAGE else "upscaled dev photo, quality 90"
            described[name] = (
                f"{img.width}×{img.height} JPEG, {path.stat().st_size / 1024:.0f} KiB ({origin})"
            )
    return described


def load_tensor(path: Path) -> npt.NDArray[np.float32]:
    """The image through the service's own preprocessing, as raw ONNX Runtime input."""
    from cross_pictures.preprocessing import prepare_image

    return prepare_image(path.read_bytes(), max_pixels=50_000_000).tensor


# -- raw ONNX Runtime ------------------------------------------------------------------------


def measure_raw(
    model: Path,
    precision: str,
    threads: int,
    batch_sizes: tuple[int, ...],
    seconds: float,
    tensor: npt.NDArray[np.float32],
) -> list[RawPoint]:
    """images/s and per-run latency of one session with the service's options, per batch size."""
    import onnxruntime as ort

    from cross_pictures.inference import session_options

    session = ort.InferenceSession(
        str(model), session_options(threads), providers=["CPUExecutionProvider"]
    )
    model_input = session.get_inputs()[0]
    fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else 0
    points = []
    for batch_size in batch_sizes:
        if fixed_batch and batch_size != fixed_batch:
            continue
        batch = np.ascontiguousarray(np.repeat(tensor[np.newaxis], batch_size, axis=0))
        feed = {model_input.name: batch}
        for _ in range(3):
            session.run(None, feed)
        times: list[float] = []
        cpu_start = time.process_time()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(times) < 5:
            before = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - before)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_start
        images = batch_size * len(times)
        point = RawPoint(
            precision=precision,
            batch_size=batch_size,
            runs=len(times),
            images_per_s=images / elapsed,
            batch_p50_ms=statistics.median(times) * 1000,
            core_ms_per_image=cpu * 1000 / images,
        )
        log(
            f"raw {precision} batch {batch_size}: {point.images_per_s:.1f} img/s, "
            f"p50 {point.batch_p50_ms:.1f} ms per run, {point.core_ms_per_image:.1f} core-ms/img"
        )
        points.append(point)
    del session
    gc.collect()
    return points


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server process under test."""

    name: str
    url: str
    process: subprocess.Popen[bytes]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@contextlib.contextmanager
def running_server(
    kind: str, precision: str, model: Path, threads: int, log_dir: Path
) -> Iterator[RunningServer]:
    """Start `cross-pictures serve` or the naive server on a free port; wait until it is ready."""
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "PRECISION": precision}
    if kind == "service":
        script = Path(sys.executable).with_name("cross-pictures")
        fallback = [sys.executable, "-m", "cross_pictures.cli"]
        argv = [*([str(script)] if script.exists() else fallback), "serve"]
        ready_path = "/ready"
    else:
        env |= {"NAIVE_MODEL_PATH": str(model), "NUM_THREADS": str(threads)}
        app = "bench.naive_server:create_app"
        argv = [sys.executable, "-m", "uvicorn", "--factory", app, "--no-access-log"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        ready_path = "/health"
    log_path = log_dir / f"{kind}-{precision}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=log_file)
    server = RunningServer(f"{kind}", f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 180
        while _status(server.url + ready_path) != 200:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{kind} {precision} exited with {process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} {precision} not ready after 180 s; see {log_path}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- load generation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What wrk's done() reported, plus wrk's own CPU time."""

    report: dict[str, Any]
    cpu_s: float
    wall_s: float

    @property
    def errors(self) -> int:
        socket_errors: dict[str, int] = self.report["socket_errors"]
        return int(self.report["http_errors"]) + sum(socket_errors.values())

    @property
    def error_detail(self) -> dict[str, int]:
        detail = {f"http {k}": int(v) for k, v in self.report["statuses"].items()}
        detail |= {k: int(v) for k, v in self.report["socket_errors"].items() if v}
        return detail

    @property
    def duration_s(self) -> float:
        return float(self.report["duration_us"]) / 1e6


def run_wrk(
    url: str,
    image: Path,
    concurrency: int,
    duration_s: float,
    *,
    honour_retry_after: bool = False,
) -> WrkResult:
    """POST the image to url with wrk for duration_s seconds."""
    threads = min(concurrency, 2)
    argv = ["wrk", f"-c{concurrency}", f"-t{threads}", f"-d{max(1, round(duration_s))}s"]
    argv += [f"--timeout={WRK_TIMEOUT}", f"--script={LUA_SCRIPT}", url]
    argv += ["--", str(image)]
    started = time.perf_counter()
    env = {**os.environ, "WRK_HONOUR_RETRY_AFTER": "1" if honour_retry_after else "0"}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    # wait4 gives the child's own rusage: wrk's CPU cost, all its threads.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {process.returncode}):\n{output}")
    return WrkResult(
        json.loads(line.removeprefix("BENCH_JSON ")), usage.ru_utime + usage.ru_stime, wall
    )


def run_wrk_requests(url: str, image: Path, concurrency: int, requests: int) -> list[WrkResult]:
    """At least `requests` responses, in timed wrk rounds sized from the rate measured so far.

    wrk has no request count: a thread that stops early still waits out -d, so "N requests"
    is a sequence of timed runs.
    """
    rounds: list[WrkResult] = []
    done, rate = 0, 0.0
    while done < requests:
        seconds = 2 if rate <= 0 else min(60, max(1, math.ceil((requests - done) / rate)))
        result = run_wrk(url, image, concurrency, seconds)
        rounds.append(result)
        done += int(result.report["requests"])
        rate = done / sum(r.duration_s for r in rounds)
    return rounds


def measure_load(
    server: RunningServer,
    precision: str,
    image_name: str,
    image: Path,
    concurrency: int,
    duration_s: float,
) -> LoadPoint:
    """One wrk run, with the server's CPU time and memory and the rest of the machine's load."""
    pids = process_tree(server.process.pid)
    load1 = os.getloadavg()[0]
    server_cpu, busy, own = cpu_seconds(pids), machine_busy_seconds(), own_cpu_seconds()
    with RssSampler(server.process.pid) as rss:
        result = run_wrk(server.url + "/infer", image, concurrency, duration_s)
    server_cpu = cpu_seconds(process_tree(server.process.pid)) - server_cpu
    busy = machine_busy_seconds() - busy
    own = own_cpu_seconds() - own
    report = result.report
    latency = report["latency_us"]
    ok = max(0, int(report["requests"]) - result.errors)
    point = LoadPoint(
        server=server.name,
        precision=precision,
        image=image_name,
        concurrency=concurrency,
        duration_s=result.duration_s,
        requests=int(report["requests"]),
        errors=result.errors,
        error_detail=result.error_detail,
        images_per_s=ok / result.duration_s if result.duration_s else 0.0,
        p50_ms=latency["p50"] / 1000,
        p95_ms=latency["p95"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        rss_mib_start=rss.start_mib,
        rss_mib_max=rss.max_mib,
        rss_mib_end=rss.end_mib,
        server_cpu_s=server_cpu,
        wrk_cpu_s=result.cpu_s,
        other_cpu_s=max(0.0, busy - server_cpu - result.cpu_s - own),
        load1=load1,
    )
    log(
        f"{server.name} {precision} {image_name} c={concurrency}: "
        f"{point.images_per_s:.1f} img/s, p50 {point.p50_ms:.1f} ms, p99 {point.p99_ms:.1f} ms, "
        f"{point.errors} errors, {point.server_core_ms_per_request:.1f} server core-ms/req, "
        f"RSS max {point.rss_mib_max:.0f} MiB, wrk {result.cpu_s / result.duration_s:.1%} core, "
        f"other load {point.other_cpu_s / result.duration_s:.2f} cores"
    )
    return point


def measure_flatness(
    server: RunningServer, precision: str, image: Path, requests: int, warmup: int
) -> Flatness:
    """Warm up, then run `requests` requests at c=16 and compare RSS after warm-up with the end."""
    log(f"memory run: {warmup} warm-up requests, then {requests} ({precision}, c=16)")
    url = server.url + "/infer"
    warmed = run_wrk_requests(url, image, TARGET_CONCURRENCY, warmup)
    with RssSampler(server.process.pid) as rss:
        rounds = run_wrk_requests(url, image, TARGET_CONCURRENCY, requests)
    done = sum(int(r.report["requests"]) for r in rounds)
    errors = sum(r.errors for r in rounds)
    duration_s = sum(r.duration_s for r in rounds)
    flat = Flatness(
        precision=precision,
        image=TARGET_IMAGE,
        concurrency=TARGET_CONCURRENCY,
        warmup_requests=sum(int(r.report["requests"]) for r in warmed),
        requests=done,
        errors=errors,
        images_per_s=(done - errors) / duration_s if duration_s else 0.0,
        rss_mib_after_warmup=rss.start_mib,
        rss_mib_max=rss.max_mib,
        rss_mib_end=rss.end_mib,
    )
    log(
        f"memory run: {flat.requests} requests, RSS {flat.rss_mib_after_warmup:.1f} → "
        f"{flat.rss_mib_end:.1f} MiB ({flat.growth:+.1%}), max {flat.rss_mib_max:.1f} MiB"
    )
    return flat


# -- machine ---------------------------------------------------------------------------------


def describe_machine(threads: int) -> dict[str, Any]:
    """CPU model, usable CPUs, SIMD flags that matter for ONNX Runtime, memory, versions."""
    import onnxruntime as ort

    from cross_pictures.config import available_cpus

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or "?",
    )
    flags_line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    simd = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)
    lscpu = shutil.which("lscpu")
    threads_per_core = "?"
    if lscpu:
        text = subprocess.run([lscpu], capture_output=True, text=True, check=False).stdout
        for ln in text.splitlines():
            if ln.startswith("Thread(s) per core:"):
                threads_per_core = ln.split(":", 1)[1].strip()
            if ln.startswith("Model name:"):
                model = ln.split(":", 1)[1].strip()
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    return {
        "cpu_model": model,
        "cpus": available_cpus(),
        "online_cpus": os.cpu_count(),
        "threads_per_core": threads_per_core,
        "simd": simd,
        "memory_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "intra_op_threads": threads,
    }


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    """Measure everything the config asks for, print the report and write bench/out/."""
    cfg = Config.from_env(os.environ)
    from cross_pictures.config import Precision, Settings

    settings = Settings()
    threads = settings.threads
    models = {
        "fp32": settings.model_path,
        "int8": settings.int8_model_path,
    }
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = cfg.out_dir / "logs"
    log_dir.mkdir(exist_ok=True)

    results = Results(
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=os.environ.get("BENCH_COMMAND", "make bench"),
        quick=cfg.quick,
        load_before=os.getloadavg(),
    )
    results.machine = describe_machine(threads)
    precisions = []
    for precision in cfg.precisions:
        if precision not in models:
            raise SystemExit(f"bench: unknown precision {precision!r} in BENCH_PRECISIONS")
        if not models[precision].is_file():
            note = f"{precision} skipped: {models[precision]} does not exist"
            if precision == Precision.INT8:
                note += " (run `make quantize`)"
            results.notes.append(note)
            log(note)
            continue
        precisions.append(precision)
    if not precisions:
        raise SystemExit("bench: no model to benchmark (run `make install`)")

    with tempfile.TemporaryDirectory(prefix="cross-pictures-bench-") as tmp:
        images = prepare_images(cfg.photo, Path(tmp), cfg.images)
        tensor = load_tensor(images.get(TARGET_IMAGE) or next(iter(images.values())))
        results.config = {
            "threads": threads,
            "max_batch_size": settings.max_batch_size,
            "max_batch_delay_ms": settings.max_batch_delay_ms,
            "workers": settings.workers,
            "duration_s": cfg.duration_s,
            "warmup_s": cfg.warmup_s,
            "raw_s": cfg.raw_s,
            "concurrency": list(cfg.concurrency),
            "batch_sizes": list(cfg.batch_sizes),
            "images": describe_images(images),
        }
        for precision in precisions:
            log(f"raw ONNX Runtime, {precision}, {threads} threads")
            results.raw += measure_raw(
                models[precision], precision, threads, cfg.batch_sizes, cfg.raw_s, tensor
            )
            for kind in cfg.servers:
                log(f"starting {kind} ({precision})")
                with running_server(kind, precision, models[precision], threads, log_dir) as srv:
                    for image_name, image in images.items():
                        if cfg.warmup_s > 0:
                            run_wrk(srv.url + "/infer", image, 4, cfg.warmup_s)
                        for concurrency in cfg.concurrency:
                            time.sleep(0.5)  # let the previous run's stragglers drain
                            results.runs.append(
                                measure_load(
                                    srv, precision, image_name, image, concurrency, cfg.duration_s
                                )
                            )
        if cfg.flat_requests > 0 and "service" in cfg.servers:
            precision = "int8" if "int8" in precisions else precisions[0]
            if precision != "int8":
                results.notes.append(f"memory run made with {precision}: no int8 model")
            with running_server("service", precision, models[precision], threads, log_dir) as srv:
                small = images.get(TARGET_IMAGE) or next(iter(images.values()))
                results.flatness = measure_flatness(
                    srv, precision, small, cfg.flat_requests, cfg.flat_warmup
                )

    results.load_after = os.getloadavg()
    results.finished = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    json_path, md_path, png_path = write_reports(results, cfg.out_dir)
    print(render_markdown(results))
    print()
    for target in evaluate_targets(results):
        need = target.required
        print(f"{verdict(target.passed):4}  {target.name}: {target.measured} (need {need})")
    print()
    print(f"wrote {json_path}, {md_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
