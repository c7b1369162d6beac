"""The v2 protocol against a real server with the real model, driven by Triton's own client.

Nobody here wrote `tritonclient`: if it can talk to us, so can the tools built on it. Its
answers are checked against POST /infer on the same photos.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from cross_pictures.config import Settings
from cross_pictures.inference import load_labels
from cross_pictures.preprocessing import prepare_image
from tests.conftest import LABELS_PATH, require_photos
from tests.images import PHOTOS
from tests.server import Server

MODEL = "resnet50"
CONFIDENCE_TOLERANCE = 1e-4

Expected = list[tuple[str, float]]


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Three real photos from the shared dev set."""
    return [(PHOTOS / entry["file"]).read_bytes() for entry in require_photos()[:3]]


@pytest.fixture(scope="module")
def rest_answers(live_server: Server, photos: list[bytes]) -> list[Expected]:
    """What POST /infer says about each photo: the reference for every v2 answer."""
    answers = []
    for photo in photos:
        response = httpx.post(
            f"{live_server.url}/infer?top_k=3", files={"image": ("p.jpg", photo)}, timeout=60
        )
        assert response.status_code == 200, response.text
        answers.append([(p["label"], p["confidence"]) for p in response.json()["predictions"]])
    return answers


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return load_labels(LABELS_PATH)


@pytest.fixture
def client(live_server: Server) -> Iterator[Any]:
    url = live_server.url.removeprefix("http://")
    client = triton.InferenceServerClient(url=url, network_timeout=120.0)
    try:
        yield client
    finally:
        client.close()


def image_input(photos: list[bytes], *, binary: bool) -> Any:
    tensor = triton.InferInput("image", [len(photos)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
    else:
        # JSON cannot carry raw JPEG bytes (not UTF-8): base64 is what goes in the string.
        encoded = [base64.b64encode(p) for p in photos]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def assert_matches_rest(
    probabilities: npt.NDArray[np.float32], labels: list[str], expected: list[Expected]
) -> None:
    assert probabilities.shape == (len(expected), len(labels))
    for row, answer in zip(probabilities, expected, strict=True):
        best = np.argsort(-row)[: len(answer)]
        assert [labels[i] for i in best] == [label for label, _ in answer]
        for index, (_, confidence) in zip(best, answer, strict=True):
            assert float(row[index]) == pytest.approx(confidence, abs=CONFIDENCE_TOLERANCE)


def test_server_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "cross_pictures"
    assert {"classification", "binary_tensor_data"} <= set(metadata["extensions"])


def test_model_metadata_and_readiness(client: Any, labels: list[str]) -> None:
    for version in ("", "1"):
        metadata = client.get_model_metadata(MODEL, model_version=version)
        assert metadata["name"] == MODEL
        assert metadata["versions"] == ["1"]
        assert metadata["platform"] == "onnxruntime_onnx"
        inputs = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
        assert inputs == {"image": ("BYTES", [-1]), "data": ("FP32", [-1, 3, 224, 224])}
        (output,) = metadata["outputs"]
        assert (output["name"], output["datatype"]) == ("probabilities", "FP32")
        assert output["shape"] == [-1, len(labels)]
        assert client.is_model_ready(MODEL, model_version=version)
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(MODEL, model_version="2")
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("no-such-model")
    assert raised.value.status() == "404"
    assert "no-such-model" in raised.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_images(
    client: Any,
    photos: list[bytes],
    labels: list[str],
    rest_answers: list[Expected],
    binary: bool,
) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(
        MODEL, [image_input(photos, binary=binary)], outputs=[output], request_id="photos-1"
    )
    response = result.get_response()
    assert response["id"] == "photos-1"
    assert response["model_name"] == MODEL
    assert response["model_version"] == "1"
    assert_matches_rest(result.as_numpy("probabilities"), labels, rest_answers)


def test_infer_without_outputs_gets_all_in_binary(
    client: Any, photos: list[bytes], labels: list[str], rest_answers: list[Expected]
) -> None:
    # tritonclient then asks for binary_data_output at the request level.
    result = client.infer(MODEL, [image_input(photos[:1], binary=True)], model_version="1")
    assert "binary_data_size" in result.get_output("probabilities")["parameters"]
    assert_matches_rest(result.as_numpy("probabilities"), labels, rest_answers[:1])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_output(
    client: Any, photos: list[bytes], rest_answers: list[Expected], binary: bool
) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    result = client.infer(MODEL, [image_input(photos, binary=True)], outputs=[output])
    classes = result.as_numpy("probabilities")
    assert classes.shape == (len(photos), 3)
    for row, answer in zip(classes, rest_answers, strict=True):
        parsed = [(e.decode() if isinstance(e, bytes) else str(e)).split(":", 2) for e in row]
        assert [label for _, _, label in parsed] == [label for label, _ in answer]
        for (score, _, _), (_, confidence) in zip(parsed, answer, strict=True):
            assert float(score) == pytest.approx(confidence, abs=CONFIDENCE_TOLERANCE)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_fp32_tensors(
    client: Any,
    photos: list[bytes],
    labels: list[str],
    rest_answers: list[Expected],
    binary: bool,
) -> None:
    count = 3 if binary else 1  # 150,528 numbers per image in JSON: one is proof enough
    max_pixels = Settings(_env_file=None).max_image_pixels
    batch = np.stack([prepare_image(p, max_pixels=max_pixels).tensor for p in photos[:count]])
    tensor = triton.InferInput("data", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[output])
    assert_matches_rest(result.as_numpy("probabilities"), labels, rest_answers[:count])


def test_compressed_request(
    client: Any, photos: list[bytes], labels: list[str], rest_answers: list[Expected]
) -> None:
    result = client.infer(
        MODEL, [image_input(photos[:1], binary=True)], request_compression_algorithm="gzip"
    )
    assert_matches_rest(result.as_numpy("probabilities"), labels, rest_answers[:1])


def test_errors_reach_the_client(client: Any, photos: list[bytes]) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("no-such-model", [image_input(photos[:1], binary=True)])
    assert raised.value.status() == "404"

    not_an_image = triton.InferInput("image", [2], "BYTES")
    pair = np.array([photos[0], b"plain text, not a photo\n" * 4], dtype=np.object_)
    not_an_image.set_data_from_numpy(pair)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [not_an_image])
    assert raised.value.status() == "415"
    assert "element 1" in raised.value.message()
