"""Benchmark results: the records, the issue's targets, and the markdown / JSON / PNG reports."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The targets of issue 3, checked against figures from the same run.
CEILING_RATIO = {"fp32": 0.85, "int8": 0.72}  # service img/s at c=16, 500x375 / raw best batch
NAIVE_RATIO = {"fp32": 1.2, "int8": 2.5}  # service / naive img/s at c=16, 500x375
LATENCY_SLACK_MS = 4.0  # c=1 p50 may exceed raw batch-1 latency by this much
RSS_GROWTH = 0.10  # resident memory after warm-up vs at the end of the long run
TARGET_IMAGE = "500x375"
TARGET_CONCURRENCY = 16
FLAT_REQUESTS_TARGET = 10_000


@dataclass(frozen=True, slots=True)
class RawPoint:
    """Raw ONNX Runtime at one batch size: the ceiling the servers are measured against."""

    precision: str
    batch_size: int
    runs: int
    images_per_s: float
    batch_p50_ms: float  # one session.run of the whole batch
    core_ms_per_image: float  # process CPU time (all ORT threads) per image


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """One wrk run against one server."""

    server: str  # "service" or "naive"
    precision: str
    image: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int  # HTTP status >= 400 plus socket errors and timeouts
    error_detail: dict[str, int]
    images_per_s: float  # successful responses per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rss_mib_start: float
    rss_mib_max: float
    rss_mib_end: float
    server_cpu_s: float
    wrk_cpu_s: float
    other_cpu_s: float  # busy CPU time on the machine that was neither server, wrk nor bench
    load1: float  # 1-minute load average when the run started

    @property
    def server_core_ms_per_request(self) -> float:
        """Server CPU time per answered request (model, decode, HTTP, everything)."""
        return self.server_cpu_s * 1000 / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Flatness:
    """The long run: resident memory after warm-up against the end of ≥10,000 requests."""

    precision: str
    image: str
    concurrency: int
    warmup_requests: int
    requests: int
    errors: int
    images_per_s: float
    rss_mib_after_warmup: float
    rss_mib_max: float
    rss_mib_end: float

    @property
    def growth(self) -> float:
        """Relative change of RSS from after warm-up to the end."""
        return self.rss_mib_end / self.rss_mib_after_warmup - 1 if self.rss_mib_after_warmup else 0


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue with the numbers it was judged on; passed None = not measured."""

    name: str
    measured: str
    required: str
    passed: bool | None


@dataclass(slots=True)
class Results:
    """Everything one `make bench` run measured."""

    started: str
    finished: str = ""
    command: str = "make bench"
    quick: bool = False
    machine: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    raw: list[RawPoint] = field(default_factory=list)
    runs: list[LoadPoint] = field(default_factory=list)
    flatness: Flatness | None = None
    notes: list[str] = field(default_factory=list)

    def best_raw(self, precision: str) -> RawPoint | None:
        """The ceiling: the batch size with the most images/s."""
        points = [p for p in self.raw if p.precision == precision]
        return max(points, key=lambda p: p.images_per_s, default=None)

    def raw_at(self, precision: str, batch_size: int) -> RawPoint | None:
        """The raw measurement at one batch size, if made."""
        return next(
            (p for p in self.raw if p.precision == precision and p.batch_size == batch_size), None
        )

    def run(self, server: str, precision: str, image: str, concurrency: int) -> LoadPoint | None:
        """The wrk run with these parameters, if made."""
        return next(
            (
                r
                for r in self.runs
                if (r.server, r.precision, r.image, r.concurrency)
                == (server, precision, image, concurrency)
            ),
            None,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, derived figures and target verdicts included."""
        data = asdict(self)
        for run, record in zip(self.runs, data["runs"], strict=True):
            record["server_core_ms_per_request"] = round(run.server_core_ms_per_request, 2)
        if self.flatness is not None:
            data["flatness"]["growth"] = round(self.flatness.growth, 4)
        data["targets"] = [asdict(t) for t in evaluate_targets(self)]
        return data


def evaluate_targets(results: Results) -> list[Target]:
    """The issue's targets, each with the figures it was judged on."""
    targets: list[Target] = []
    for precision in ("fp32", "int8"):
        best = results.best_raw(precision)
        batch1 = results.raw_at(precision, 1)
        ours = results.run("service", precision, TARGET_IMAGE, TARGET_CONCURRENCY)
        naive = results.run("naive", precision, TARGET_IMAGE, TARGET_CONCURRENCY)
        single = results.run("service", precision, TARGET_IMAGE, 1)

        ratio = CEILING_RATIO[precision]
        name = f"{precision}: /infer c={TARGET_CONCURRENCY} {TARGET_IMAGE} vs raw ceiling"
        if best is not None and ours is not None:
            achieved = ours.images_per_s / best.images_per_s
            targets.append(
                Target(
                    name,
                    f"{ours.images_per_s:.1f} / {best.images_per_s:.1f} img/s "
                    f"(batch {best.batch_size}) = {achieved:.2f}×",
                    f"≥ {ratio:.2f}×",
                    achieved >= ratio and ours.errors == 0,
                )
            )
        else:
            targets.append(Target(name, "not measured", f"≥ {ratio:.2f}×", None))

        name = f"{precision}: /infer c=1 p50 vs raw batch-1 latency"
        if batch1 is not None and single is not None:
            limit = batch1.batch_p50_ms + LATENCY_SLACK_MS
            targets.append(
                Target(
                    name,
                    f"p50 {single.p50_ms:.1f} ms (raw {batch1.batch_p50_ms:.1f} ms "
                    f"+ {single.p50_ms - batch1.batch_p50_ms:.1f} ms)",
                    f"≤ {limit:.1f} ms (raw + {LATENCY_SLACK_MS:g})",
                    single.p50_ms <= limit and single.errors == 0,
                )
            )
        else:
            targets.append(Target(name, "not measured", f"≤ raw + {LATENCY_SLACK_MS:g} ms", None))

        ratio = NAIVE_RATIO[precision]
        name = f"{precision}: /infer c={TARGET_CONCURRENCY} {TARGET_IMAGE} vs naive server"
        if ours is not None and naive is not None and naive.images_per_s > 0:
            achieved = ours.images_per_s / naive.images_per_s
            targets.append(
                Target(
                    name,
                    f"{ours.images_per_s:.1f} / {naive.images_per_s:.1f} img/s = {achieved:.2f}×",
                    f"≥ {ratio:.1f}×",
                    achieved >= ratio and ours.errors == 0,
                )
            )
        else:
            targets.append(Target(name, "not measured", f"≥ {ratio:.1f}×", None))

    flat = results.flatness
    name = "resident memory flat over the long run"
    required = f"within {RSS_GROWTH:.0%} over ≥ {FLAT_REQUESTS_TARGET:,} requests"
    if flat is not None:
        enough = flat.requests >= FLAT_REQUESTS_TARGET
        targets.append(
            Target(
                name,
                f"{flat.rss_mib_after_warmup:.0f} → {flat.rss_mib_end:.0f} MiB "
                f"({flat.growth:+.1%}, max {flat.rss_mib_max:.0f}) over {flat.requests:,} "
                f"requests ({flat.precision}, c={flat.concurrency}, {flat.errors} errors)",
                required,
                # Too short a run cannot pass (quick mode): it proves nothing about 10k requests.
                (abs(flat.growth) <= RSS_GROWTH and flat.errors == 0) if enough else None,
            )
        )
    else:
        targets.append(Target(name, "not measured", required, None))
    return targets


def verdict(passed: bool | None) -> str:
    """PASS, FAIL or n/a."""
    return "n/a" if passed is None else "PASS" if passed else "FAIL"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: Results) -> str:
    """The RESULTS.md section for this run: machine, command, tables, targets, CPU costs."""
    machine = results.machine
    cfg = results.config
    out: list[str] = [f"## Run of {results.started}" + (" (quick mode)" if results.quick else "")]
    out.append("")
    out.append(
        f"- **Machine**: {machine.get('cpu_model', '?')}, {machine.get('cpus', '?')} CPUs "
        f"usable ({machine.get('threads_per_core', '?')} thread(s) per core), "
        f"flags: {machine.get('simd', '?')}; {machine.get('memory_gib', '?')} GiB RAM; "
        f"Linux {machine.get('kernel', '?')}; Python {machine.get('python', '?')}, "
        f"ONNX Runtime {machine.get('onnxruntime', '?')}"
    )
    out.append(f"- **Command**: `{results.command}`, {results.started} → {results.finished}")
    before = ", ".join(f"{v:.2f}" for v in results.load_before)
    after = ", ".join(f"{v:.2f}" for v in results.load_after)
    out.append(f"- **Load average** (1, 5, 15 min): before {before}; after {after}")
    out.append(
        f"- **Settings**: {cfg.get('threads')} intra-op threads (both servers and raw), "
        f"service MAX_BATCH_SIZE={cfg.get('max_batch_size')}, "
        f"MAX_BATCH_DELAY_MS={cfg.get('max_batch_delay_ms')}, WORKERS={cfg.get('workers')}; "
        f"wrk {cfg.get('duration_s')} s per point (+{cfg.get('warmup_s')} s warm-up per server "
        f"and image), raw {cfg.get('raw_s')} s per batch size"
    )
    images = cfg.get("images", {})
    if images:
        described = "; ".join(f"{name}: {desc}" for name, desc in images.items())
        out.append(f"- **Images**: {described}")
    for note in results.notes:
        out.append(f"- {note}")
    out.append("")

    out.append("### Raw ONNX Runtime (the ceiling)")
    out.append("")
    rows = []
    for point in results.raw:
        best = results.best_raw(point.precision)
        mark = " **best**" if best is point else ""
        rows.append(
            [
                point.precision,
                f"{point.batch_size}{mark}",
                f"{point.images_per_s:.1f}",
                f"{point.batch_p50_ms:.1f}",
                f"{point.core_ms_per_image:.1f}",
            ]
        )
    out.append(_table(["precision", "batch", "img/s", "p50 ms per run", "core-ms per image"], rows))
    out.append("")

    out.append("### `/infer` under load (wrk)")
    out.append("")
    rows = []
    for run in results.runs:
        rows.append(
            [
                run.server,
                run.precision,
                run.image,
                str(run.concurrency),
                f"{run.images_per_s:.1f}",
                f"{run.p50_ms:.1f}",
                f"{run.p95_ms:.1f}",
                f"{run.p99_ms:.1f}",
                str(run.errors),
                f"{run.rss_mib_start:.0f} / {run.rss_mib_max:.0f} / {run.rss_mib_end:.0f}",
                f"{run.server_core_ms_per_request:.1f}",
                f"{run.wrk_cpu_s / run.duration_s:.1%}" if run.duration_s else "?",
                f"{run.other_cpu_s / run.duration_s:.2f}" if run.duration_s else "?",
            ]
        )
    out.append(
        _table(
            [
                "server",
                "precision",
                "image",
                "c",
                "img/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "RSS MiB start/max/end",
                "server core-ms/req",
                "wrk CPU (of 1 core)",
                "other load (cores)",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        "*server core-ms/req*: CPU time of the server process(es) per answered request, "
        "everything included; compare with the raw core-ms per image above. *other load*: busy "
        "CPU on the machine that was neither the server, wrk nor the benchmark script, in cores "
        "(0 on a quiet machine; anything above ~0.1 means the figures are noisy)."
    )
    out.append("")

    if results.flatness is not None:
        flat = results.flatness
        out.append("### Memory over a long run")
        out.append("")
        out.append(
            f"Service, {flat.precision}, {flat.image}, c={flat.concurrency}: "
            f"{flat.warmup_requests:,} warm-up requests, then {flat.requests:,} requests "
            f"({flat.images_per_s:.1f} img/s, {flat.errors} errors). RSS after warm-up "
            f"{flat.rss_mib_after_warmup:.1f} MiB, at the end {flat.rss_mib_end:.1f} MiB "
            f"({flat.growth:+.1%}), max {flat.rss_mib_max:.1f} MiB."
        )
        out.append("")

    out.append("### Targets (issue 3)")
    out.append("")
    rows = [
        [t.name, t.measured, t.required, f"**{verdict(t.passed)}**"]
        for t in evaluate_targets(results)
    ]
    out.append(_table(["target", "measured", "required", "verdict"], rows))
    out.append("")

    if results.runs:
        wrk = [r.wrk_cpu_s / r.duration_s for r in results.runs if r.duration_s]
        cpus = max(1, int(machine.get("cpus", 1)))
        out.append("### Cost of the load generator")
        out.append("")
        out.append(
            f"wrk (compiled, LuaJIT script) used {min(wrk):.1%}–{max(wrk):.1%} of one core "
            f"(mean {sum(wrk) / len(wrk):.1%}), i.e. at most {max(wrk) / cpus:.1%} of the "
            f"machine's {cpus} CPUs, measured from its rusage; that CPU is not available to "
            "the server, so the server figures are slightly pessimistic."
        )
        out.append("")
    return "\n".join(out)


def render_chart(results: Results, path: Path) -> None:
    """images/s by concurrency: service vs naive, fp32 / int8, raw ceilings as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = sorted({r.image for r in results.runs}, key=lambda name: name != TARGET_IMAGE)
    if not images:
        return
    colors = {"fp32": "tab:blue", "int8": "tab:orange"}
    fig, axes = plt.subplots(1, len(images), figsize=(6.5 * len(images), 4.8), squeeze=False)
    for ax, image in zip(axes[0], images, strict=True):
        for precision in ("fp32", "int8"):
            color = colors[precision]
            for server, style, marker in (("service", "-", "o"), ("naive", "--", "x")):
                runs = sorted(
                    (
                        r
                        for r in results.runs
                        if (r.server, r.precision, r.image) == (server, precision, image)
                    ),
                    key=lambda r: r.concurrency,
                )
                if runs:
                    ax.plot(
                        [r.concurrency for r in runs],
                        [r.images_per_s for r in runs],
                        linestyle=style,
                        marker=marker,
                        color=color,
                        label=f"{server} {precision}",
                    )
            best = results.best_raw(precision)
            if best is not None:
                ax.axhline(
                    best.images_per_s,
                    linestyle=":",
                    color=color,
                    label=f"raw ORT {precision} (batch {best.batch_size})",
                )
        concurrencies = sorted({r.concurrency for r in results.runs})
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_ylabel("images/s")
        ax.set_ylim(bottom=0)
        ax.set_title(f"POST /infer, {image} JPEG")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    load = results.load_before[0]
    fig.suptitle(f"cross_pictures vs naive server, {results.started} (load avg {load:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(results: Results, out_dir: Path) -> tuple[Path, Path, Path]:
    """Write results.json, results.md and throughput.png into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    png_path = out_dir / "throughput.png"
    json_path.write_text(json.dumps(results.to_json(), indent=2) + "\n")
    md_path.write_text(render_markdown(results) + "\n")
    render_chart(results, png_path)
    return json_path, md_path, png_path
