"""The Open Inference Protocol (v2) REST API through create_app with a fake classifier."""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from cross_pictures import __version__
from cross_pictures.api.v2 import V2Route, body_limit, classification_strings
from cross_pictures.app import create_app
from cross_pictures.config import Settings
from cross_pictures.inference import FloatArray
from cross_pictures.preprocessing import prepare_image
from tests.conftest import image_bytes
from tests.fakes import FAKE_LABELS, FakeClassifier

INFER = "/v2/models/resnet50/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
CLASSIFICATION = re.compile(r"^\d+\.\d{6}:\d+:class \d$")
RED, BLUE = image_bytes(color="red"), image_bytes("JPEG", color="blue")


class Response(Protocol):
    """What the tests read from a TestClient response (httpx or httpx2)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_input(*images: bytes, **extra: Any) -> dict[str, Any]:
    """A JSON `image` input, each element base64."""
    tensor = {"name": "image", "shape": [len(images)], "datatype": "BYTES"}
    return {**tensor, "data": [b64(i) for i in images], **extra}


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """Triton's BYTES wire form: 4-byte little-endian length, then the bytes, per element."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary_request(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A body of JSON header then binary data, and the header that says where they split."""
    head = json.dumps(header).encode()
    return head + blob, {HEADER_LENGTH: str(len(head)), "content-type": "application/octet-stream"}


def split_binary(response: Response) -> tuple[dict[str, Any], bytes]:
    size = int(response.headers[HEADER_LENGTH])
    header: dict[str, Any] = json.loads(response.content[:size])
    return header, response.content[size:]


def deserialize_bytes(blob: bytes) -> list[str]:
    strings, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack_from("<I", blob, offset)
        strings.append(blob[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    return strings


def rest_top(client: TestClient, image: bytes, k: int = 3) -> list[tuple[str, float]]:
    """What POST /infer says about the image."""
    response = client.post(f"/infer?top_k={k}", files={"image": ("x", image)})
    assert response.status_code == 200, response.text
    return [(p["label"], p["confidence"]) for p in response.json()["predictions"]]


def assert_error(response: Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


# --- health and metadata -------------------------------------------------------------------


def test_server_metadata_names_the_extensions(client: TestClient) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "cross_pictures"
    assert body["version"] == __version__
    assert {"classification", "binary_tensor_data"} <= set(body["extensions"])


def test_live_and_ready(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/resnet50", "/v2/models/resnet50/versions/1"])
def test_model_metadata(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {
        "name": "resnet50",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "data", "datatype": "FP32", "shape": [-1, 3, 224, 224]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(FAKE_LABELS)]}],
    }


@pytest.mark.parametrize(
    "path", ["/v2/models/resnet50/ready", "/v2/models/resnet50/versions/1/ready"]
)
def test_model_ready(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"name": "resnet50", "ready": True}


def test_model_name_comes_from_settings(settings: Settings) -> None:
    settings.model_name = "classifier"
    with TestClient(create_app(settings, load_classifier=lambda _: FakeClassifier())) as client:
        assert client.get("/v2/models/classifier").json()["name"] == "classifier"
        assert client.get("/v2/models/resnet50").status_code == 404
        response = client.post("/v2/models/classifier/infer", json={"inputs": [image_input(RED)]})
        assert response.json()["model_name"] == "classifier"


@pytest.mark.parametrize(
    ("method", "path", "fragment"),
    [
        ("GET", "/v2/models/resnet5", "'resnet5'"),
        ("GET", "/v2/models/resnet5/ready", "'resnet5'"),
        ("POST", "/v2/models/resnet5/infer", "'resnet5'"),
        ("GET", "/v2/models/resnet50/versions/2", "version '2'"),
        ("GET", "/v2/models/resnet50/versions/0/ready", "version '0'"),
        ("POST", "/v2/models/resnet50/versions/latest/infer", "version 'latest'"),
    ],
)
def test_unknown_model_or_version_is_404(
    client: TestClient, method: str, path: str, fragment: str
) -> None:
    body = {"inputs": [image_input(RED)]} if method == "POST" else None
    assert_error(client.request(method, path, json=body), 404, fragment)


def test_overload_is_503_in_the_protocol_shape_and_counted(settings: Settings) -> None:
    app = create_app(settings, load_classifier=lambda _: FakeClassifier())
    with TestClient(app) as client:
        app.state.upload_slots.busy = settings.max_concurrent_uploads  # every slot taken
        response = client.post(INFER, json={"inputs": [image_input(RED)]})
        app.state.upload_slots.busy = 0
        assert_error(response, 503, "MAX_CONCURRENT_UPLOADS")
        assert response.headers["retry-after"] == "1"
        text = client.get("/metrics").text
    assert 'cross_pictures_rejected_total{reason="overloaded"} 1.0' in text


def test_not_ready_is_503(settings: Settings) -> None:
    app = create_app(settings, load_classifier=lambda _: FakeClassifier())
    client = TestClient(app)  # no lifespan: the model never loads
    assert client.get("/v2/health/live").status_code == 200
    for response in (
        client.get("/v2/health/ready"),
        client.get("/v2/models/resnet50/ready"),
        client.get("/v2/models/resnet50"),
        client.post(INFER, json={"inputs": [image_input(RED)]}),
    ):
        assert_error(response, 503)
        assert response.headers["retry-after"] == "1"
    assert client.get("/v2/models/nope/ready").status_code == 404


# --- inference in JSON ---------------------------------------------------------------------


def test_infer_images_in_json(client: TestClient) -> None:
    response = client.post(INFER, json={"id": "req-7", "inputs": [image_input(RED, BLUE)]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "resnet50"
    assert body["model_version"] == "1"
    assert body["id"] == "req-7"
    (output,) = body["outputs"]
    assert output["name"] == "probabilities"
    assert output["datatype"] == "FP32"
    assert output["shape"] == [2, len(FAKE_LABELS)]
    rows = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    assert np.allclose(rows.sum(axis=1), 1, atol=1e-5)
    for row, image in zip(rows, (RED, BLUE), strict=True):
        label, confidence = rest_top(client, image)[0]
        assert FAKE_LABELS[int(row.argmax())] == label
        assert row.max() == pytest.approx(confidence, abs=1e-6)


def test_no_id_no_id_in_response(client: TestClient) -> None:
    response = client.post(INFER, json={"inputs": [image_input(RED)]})
    assert response.status_code == 200
    assert "id" not in response.json()


def test_versioned_infer_path(client: TestClient) -> None:
    response = client.post(
        "/v2/models/resnet50/versions/1/infer", json={"id": "v", "inputs": [image_input(RED)]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "v"


def test_base64_content_type_is_accepted(client: TestClient) -> None:
    tensor = image_input(RED, parameters={"content_type": "base64"})
    assert client.post(INFER, json={"inputs": [tensor]}).status_code == 200


def test_classification_output_in_json(client: TestClient) -> None:
    request = {
        "inputs": [image_input(RED, BLUE)],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [2, 3]
    assert all(CLASSIFICATION.match(s) for s in output["data"]), output["data"]
    for row, image in enumerate((RED, BLUE)):
        expected = rest_top(client, image)
        got = [s.split(":", 2) for s in output["data"][row * 3 : row * 3 + 3]]
        assert [label for _, _, label in got] == [label for label, _ in expected]
        assert [FAKE_LABELS[int(i)] for _, i, _ in got] == [label for label, _ in expected]
        for (score, _, _), (_, confidence) in zip(got, expected, strict=True):
            assert float(score) == pytest.approx(confidence, abs=1e-6)


def test_classification_count_is_capped_at_the_classes(client: TestClient) -> None:
    request = {
        "inputs": [image_input(RED)],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 50}}],
    }
    (output,) = client.post(INFER, json=request).json()["outputs"]
    assert output["shape"] == [1, len(FAKE_LABELS)]


def test_classification_strings_match_tritons_format() -> None:
    probabilities = np.array([[0.1, 0.754, 0.146]], dtype=np.float32)
    labels = ["tabby", "Egyptian cat", "lynx"]
    assert classification_strings(probabilities, labels, 2) == [
        "0.754000:1:Egyptian cat",
        "0.146000:2:lynx",
    ]


def prepared_batch(*images: bytes) -> npt.NDArray[np.float32]:
    return np.stack([prepare_image(i, max_pixels=4_000_000).tensor for i in images])


def test_fp32_data_in_json_matches_images(client: TestClient) -> None:
    batch = prepared_batch(RED, BLUE)
    tensor = {"name": "data", "shape": list(batch.shape), "datatype": "FP32"}
    flat = client.post(INFER, json={"inputs": [{**tensor, "data": batch.ravel().tolist()}]})
    nested = client.post(INFER, json={"inputs": [{**tensor, "data": batch.tolist()}]})
    from_images = client.post(INFER, json={"inputs": [image_input(RED, BLUE)]})
    assert flat.status_code == nested.status_code == 200, flat.text
    expected = from_images.json()["outputs"][0]["data"]
    assert flat.json()["outputs"][0]["data"] == pytest.approx(expected, abs=1e-6)
    assert nested.json()["outputs"][0]["data"] == pytest.approx(expected, abs=1e-6)


# --- binary tensor data --------------------------------------------------------------------


def test_binary_images_in_and_probabilities_out(client: TestClient) -> None:
    blob = serialize_bytes([RED, BLUE])
    header = {
        "id": "bin",
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    content, headers = binary_request(header, blob)
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    body, data = split_binary(response)
    assert body["id"] == "bin"
    (output,) = body["outputs"]
    assert output["datatype"] == "FP32"
    assert output["shape"] == [2, len(FAKE_LABELS)]
    assert output["parameters"] == {"binary_data_size": len(data)}
    assert "data" not in output
    rows = np.frombuffer(data, dtype="<f4").reshape(output["shape"])
    in_json = client.post(INFER, json={"inputs": [image_input(RED, BLUE)]}).json()
    assert rows.ravel().tolist() == pytest.approx(in_json["outputs"][0]["data"], abs=1e-7)


def test_binary_classification_output(client: TestClient) -> None:
    request = {
        "inputs": [image_input(RED)],
        "outputs": [
            {"name": "probabilities", "parameters": {"classification": 2, "binary_data": True}}
        ],
    }
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    body, data = split_binary(response)
    (output,) = body["outputs"]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [1, 2]
    strings = deserialize_bytes(data)
    assert len(strings) == 2
    assert all(CLASSIFICATION.match(s) for s in strings)
    assert strings[0].split(":", 2)[2] == rest_top(client, RED)[0][0]


def test_binary_data_output_applies_to_every_output(client: TestClient) -> None:
    request = {"parameters": {"binary_data_output": True}, "inputs": [image_input(RED)]}
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    body, data = split_binary(response)
    assert body["outputs"][0]["parameters"]["binary_data_size"] == 4 * len(FAKE_LABELS)
    assert len(data) == 4 * len(FAKE_LABELS)
    # ...unless the output says otherwise.
    request["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": False}}]
    response = client.post(INFER, json=request)
    assert HEADER_LENGTH not in response.headers
    assert len(response.json()["outputs"][0]["data"]) == len(FAKE_LABELS)


def test_binary_fp32_data(client: TestClient) -> None:
    batch = prepared_batch(BLUE)
    blob = batch.astype("<f4").tobytes()
    tensor = {"name": "data", "shape": list(batch.shape), "datatype": "FP32"}
    header = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]}
    content, headers = binary_request(header, blob)
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    expected = client.post(INFER, json={"inputs": [image_input(BLUE)]}).json()
    assert response.json()["outputs"][0]["data"] == pytest.approx(
        expected["outputs"][0]["data"], abs=1e-6
    )


def test_binary_sizes_as_a_list_like_openvino(client: TestClient) -> None:
    sizes = [len(RED), len(BLUE)]
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": sizes},
            }
        ]
    }
    content, headers = binary_request(header, RED + BLUE)
    response = client.post(INFER, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [2, len(FAKE_LABELS)]


def test_gzip_request_body(client: TestClient) -> None:
    blob = serialize_bytes([RED])
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    content, headers = binary_request(header, blob)
    headers["content-encoding"] = "gzip"
    response = client.post(INFER, content=gzip.compress(content), headers=headers)
    assert response.status_code == 200, response.text


def test_images_are_decoded_together_and_batched(client: TestClient, fake: FakeClassifier) -> None:
    before = len(fake.batch_sizes)
    response = client.post(INFER, json={"inputs": [image_input(RED, BLUE, RED)]})
    assert response.status_code == 200
    assert sum(fake.batch_sizes[before:]) == 3


# --- errors --------------------------------------------------------------------------------


def image_tensor(**changes: Any) -> dict[str, Any]:
    return {**image_input(RED), **changes}


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("not json", b"{", "invalid inference request"),
    ("no inputs", {"inputs": []}, "inputs"),
    ("inputs not a list", {"inputs": {"name": "image"}}, "inputs"),
    ("shape not ints", {"inputs": [image_tensor(shape=["1"])]}, "shape"),
    ("two inputs", {"inputs": [image_tensor(), image_tensor()]}, "exactly one input"),
    ("unknown input", {"inputs": [image_tensor(name="pixels")]}, "unknown input 'pixels'"),
    ("image not BYTES", {"inputs": [image_tensor(datatype="FP32")]}, "BYTES"),
    ("image shape 2-D", {"inputs": [image_tensor(shape=[1, 1])]}, "shape [N]"),
    ("count mismatch", {"inputs": [image_tensor(shape=[2])]}, "shape [2]"),
    ("empty batch", {"inputs": [image_tensor(shape=[0], data=[])]}, "no elements"),
    ("no data", {"inputs": [image_tensor(data=None)]}, "has no data"),
    ("not base64", {"inputs": [image_tensor(data=["%%%"])]}, "element 0 is not valid base64"),
    ("number element", {"inputs": [image_tensor(data=[5])]}, "element 0 is int"),
    (
        "raw text content",
        {"inputs": [image_tensor(parameters={"content_type": "str"})]},
        "base64",
    ),
    (
        "data wrong shape",
        {"inputs": [{"name": "data", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0]}]},
        "[N,3,224,224]",
    ),
    (
        "data too few numbers",
        {"inputs": [{"name": "data", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0]}]},
        "but 1 numbers",
    ),
    (
        "data not numbers",
        {
            "inputs": [
                {"name": "data", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": ["x"]}
            ]
        },
        "must be numbers",
    ),
    (
        "data not FP32",
        {"inputs": [{"name": "data", "shape": [1, 3, 224, 224], "datatype": "INT8", "data": []}]},
        "FP32",
    ),
    (
        "unknown output",
        {"inputs": [image_tensor()], "outputs": [{"name": "logits"}]},
        "unknown output 'logits'",
    ),
    (
        "output twice",
        {"inputs": [image_tensor()], "outputs": [{"name": "probabilities"}] * 2},
        "twice",
    ),
    (
        "classification zero",
        {
            "inputs": [image_tensor()],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}],
        },
        "classification",
    ),
    (
        "classification not int",
        {
            "inputs": [image_tensor()],
            "outputs": [{"name": "probabilities", "parameters": {"classification": "3"}}],
        },
        "classification",
    ),
]


@pytest.mark.parametrize(
    ("body", "fragment"), [(b, f) for _, b, f in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS]
)
def test_bad_request_is_400_with_error(client: TestClient, body: Any, fragment: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(INFER, content=content, headers={"content-type": "application/json"})
    assert_error(response, 400, fragment)


def test_nan_in_data_is_400(client: TestClient) -> None:
    batch = np.zeros((1, 3, 224, 224), dtype=np.float32)
    batch[0, 1, 2, 3] = np.nan
    blob = batch.tobytes()
    tensor = {"name": "data", "shape": [1, 3, 224, 224], "datatype": "FP32"}
    content, headers = binary_request(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]}, blob
    )
    assert_error(client.post(INFER, content=content, headers=headers), 400, "NaN")


def binary_image_header(size: int | list[int], count: int = 1) -> dict[str, Any]:
    parameters = {"binary_data_size": size}
    return {
        "inputs": [
            {"name": "image", "shape": [count], "datatype": "BYTES", "parameters": parameters}
        ]
    }


@pytest.mark.parametrize(
    ("header", "blob", "length", "fragment"),
    [
        (binary_image_header(10), b"\0" * 9, None, "binary_data_size 10"),
        (binary_image_header(4), b"\x10\0\0\0", None, "declares 16 bytes"),
        (binary_image_header(3), b"\x10\0\0", None, "4-byte length prefix"),
        (binary_image_header([3, 3], 2), b"\0" * 5, None, "binary_data_size [3, 3]"),
        ({"inputs": [image_input(RED)]}, b"junk", None, "no parameters.binary_data_size"),
        (binary_image_header(4), b"\0\0\0\0", "99999", HEADER_LENGTH),
        (binary_image_header(4), b"\0\0\0\0", "-1", HEADER_LENGTH),
        (
            {"inputs": [{**image_input(RED), "parameters": {"binary_data_size": 4 + len(RED)}}]},
            serialize_bytes([RED]),
            None,
            "both JSON 'data' and binary_data_size",
        ),
    ],
)
def test_bad_binary_request_is_400(
    client: TestClient, header: dict[str, Any], blob: bytes, length: str | None, fragment: str
) -> None:
    content, headers = binary_request(header, blob)
    if length is not None:
        headers[HEADER_LENGTH] = length
    assert_error(client.post(INFER, content=content, headers=headers), 400, fragment)


@pytest.mark.parametrize(
    ("element", "status", "fragment"),
    [
        (b"", 400, "empty"),
        (b"hello, world\n" * 10, 415, ""),
        (image_bytes("JPEG", size=(300, 300))[:200], 400, ""),
    ],
)
def test_bad_image_fails_the_request_naming_the_element(
    client: TestClient, element: bytes, status: int, fragment: str
) -> None:
    blob = serialize_bytes([RED, element])
    content, headers = binary_request(binary_image_header(len(blob), count=2), blob)
    response = client.post(INFER, content=content, headers=headers)
    assert_error(response, status, "'image' element 1", fragment)


def test_too_many_images_is_413(client: TestClient, settings: Settings) -> None:
    images = [RED] * (settings.max_batch_images + 1)
    response = client.post(INFER, json={"inputs": [image_input(*images)]})
    assert_error(response, 413, "MAX_BATCH_IMAGES")


def test_element_over_max_upload_bytes_is_413(client: TestClient, settings: Settings) -> None:
    big = b"\xff\xd8\xff" + b"\0" * settings.max_upload_bytes
    blob = serialize_bytes([RED, big])
    content, headers = binary_request(binary_image_header(len(blob), count=2), blob)
    response = client.post(INFER, content=content, headers=headers)
    assert_error(response, 413, "element 1", "MAX_UPLOAD_BYTES")
    response = client.post(INFER, json={"inputs": [image_input(big)]})
    assert_error(response, 413, "element 0", "MAX_UPLOAD_BYTES")


def test_body_over_the_limit_is_413_before_reading_it(settings: Settings) -> None:
    settings.max_batch_images = 1
    limit = body_limit(settings)
    with TestClient(create_app(settings, load_classifier=lambda _: FakeClassifier())) as client:
        response = client.post(INFER, content=b"{" + b" " * limit)
        assert_error(response, 413, str(limit))


def test_chunked_body_over_the_limit_is_413(settings: Settings) -> None:
    settings.max_batch_images = 1
    chunks = body_limit(settings) // 65536 + 20

    def body() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        yield b'{"inputs": ['
        for _ in range(chunks):
            yield b" " * 65536

    with TestClient(create_app(settings, load_classifier=lambda _: FakeClassifier())) as client:
        response = client.post(INFER, content=body())
        assert "content-length" not in response.request.headers
        assert_error(response, 413)


def test_gzip_bomb_is_413(client: TestClient, settings: Settings) -> None:
    bomb = gzip.compress(b" " * (body_limit(settings) + 1))
    response = client.post(INFER, content=bomb, headers={"content-encoding": "gzip"})
    assert_error(response, 413)


def test_unknown_content_encoding_is_400(client: TestClient) -> None:
    response = client.post(INFER, content=b"{}", headers={"content-encoding": "br"})
    assert_error(response, 400, "Content-Encoding")


def test_fastapi_validation_on_v2_routes_is_400_with_error() -> None:
    router = APIRouter(route_class=V2Route)

    @router.get("/v2/things/{count}")
    async def things(count: int) -> dict[str, int]:
        return {"count": count}

    app = FastAPI()
    app.include_router(router)
    client = TestClient(app)
    assert client.get("/v2/things/3").json() == {"count": 3}
    assert_error(client.get("/v2/things/three"), 400, "count")


def test_other_routes_keep_detail_errors(client: TestClient) -> None:
    response = client.post("/infer", content=b"x", headers={"content-type": "image/png"})
    assert "detail" in response.json()


def test_openapi_documents_the_v2_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert {"200", "400", "404", "413", "503"} <= set(infer["responses"])
    schema = infer["requestBody"]["content"]["application/json"]["schema"]
    assert "inputs" in schema["properties"]
    assert "$defs" not in json.dumps(infer)  # inlined: nothing points outside the document
    assert "/v2/models/{model_name}/versions/{model_version}/ready" in spec["paths"]


def test_gzip_body_that_inflates_past_the_upload_memory_budget_is_413(
    settings: Settings,
) -> None:
    # Small on the wire, under the body limit once inflated, but over what uploads may hold.
    settings.max_upload_memory_bytes = 1_000_000
    assert settings.max_upload_memory_bytes < body_limit(settings)
    padding = b" " * (settings.max_upload_memory_bytes + 1)
    body = gzip.compress(json.dumps({"inputs": [image_input(RED)]}).encode() + padding)
    assert len(body) < 10_000
    with TestClient(create_app(settings, load_classifier=lambda _: FakeClassifier())) as client:
        response = client.post(INFER, content=body, headers={"content-encoding": "gzip"})
    assert_error(response, 413, "MAX_UPLOAD_MEMORY_BYTES")


def test_truncated_gzip_body_is_400(client: TestClient) -> None:
    body = gzip.compress(json.dumps({"inputs": [image_input(RED)]}).encode())
    response = client.post(INFER, content=body[:-12], headers={"content-encoding": "gzip"})
    assert_error(response, 400, "truncated")


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9", "-1", "1e3"])
def test_header_length_that_is_not_a_plain_number_is_400(client: TestClient, value: str) -> None:
    response = client.post(
        INFER,
        content=json.dumps({"inputs": [image_input(RED)]}).encode(),
        headers={b"Inference-Header-Content-Length": value.encode("latin-1")},
    )
    assert_error(response, 400, "Inference-Header-Content-Length")


def test_fp32_numbers_beyond_float_range_are_400(client: TestClient) -> None:
    shape = [1, 3, 224, 224]
    data: list[Any] = [0] * (3 * 224 * 224)
    data[0] = 10**400  # a JSON integer no float holds
    body = json.dumps(
        {"inputs": [{"name": "data", "shape": shape, "datatype": "FP32", "data": data}]}
    )
    response = client.post(INFER, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "must be numbers")


class Overflowing(FakeClassifier):
    """Like the real model fed 3e38s: its arithmetic overflows and it answers NaN."""

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        if np.abs(batch).max() > 1e30:
            return np.full((len(batch), len(self.labels)), np.nan, dtype=np.float32)
        return super().run(batch, narrow=narrow)


def test_fp32_input_that_overflows_the_model_is_400_not_nan(settings: Settings) -> None:
    batch = np.full((1, 3, 224, 224), 3e38, dtype=np.float32)  # finite, absurd for an image
    tensor = {"name": "data", "shape": [1, 3, 224, 224], "datatype": "FP32"}
    with TestClient(create_app(settings, load_classifier=lambda _: Overflowing())) as client:
        body = {"inputs": [{**tensor, "data": batch.ravel().tolist()}]}
        response = client.post(INFER, json=body)
    assert_error(response, 400, "NaN or infinity", "[-3, 3]")


def test_request_id_is_bounded(client: TestClient) -> None:
    response = client.post(INFER, json={"id": "x" * 257, "inputs": [image_input(RED)]})
    assert_error(response, 400, "id")


def test_unknown_v2_path_answers_in_the_protocol_shape(client: TestClient) -> None:
    assert_error(client.get("/v2/models/resnet50/stats"), 404)
    assert_error(client.get(INFER), 405)
