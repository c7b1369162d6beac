"""The HTTP API through create_app with a fake classifier: shapes, limits and every error."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cross_pictures.app import create_app
from cross_pictures.config import Settings
from cross_pictures.inference import FloatArray
from tests.conftest import image_bytes
from tests.fakes import FakeClassifier


def test_health_reports_model_loaded(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_loaded": True}


def test_health_is_503_before_the_model_loads(settings: Settings) -> None:
    app = create_app(settings, load_classifier=lambda _: FakeClassifier())
    with TestClient(app) as client:  # lifespan ran: loaded
        assert client.get("/health").status_code == 200
    client = TestClient(app)  # no lifespan: nothing loaded
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "model_loaded": False}
    infer = client.post("/infer", files={"image": ("a.png", image_bytes())})
    assert infer.status_code == 503
    assert infer.headers["retry-after"] == "1"


def test_infer_returns_sorted_top_k(client: TestClient) -> None:
    response = client.post("/infer", files={"image": ("cat.png", image_bytes())})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions", "inference_time_ms"}
    confidences = [p["confidence"] for p in body["predictions"]]
    assert len(confidences) == 3
    assert confidences == sorted(confidences, reverse=True)
    assert all(0 <= c <= 1 for c in confidences)
    assert body["inference_time_ms"] >= 0


def test_different_images_get_their_own_answers(client: TestClient) -> None:
    answers = {
        color: client.post("/infer", files={"image": ("x.png", image_bytes(color=color))}).json()
        for color in ("red", "blue")
    }
    assert answers["red"]["predictions"] != answers["blue"]["predictions"]


@pytest.mark.parametrize("k", [1, 5, 10])
def test_top_k_query_overrides_default(client: TestClient, k: int) -> None:
    response = client.post(f"/infer?top_k={k}", files={"image": ("a.png", image_bytes())})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == k


@pytest.mark.parametrize("k", ["0", "-1", "abc", "11", "1001"])
def test_bad_top_k_is_422_naming_the_field(client: TestClient, k: str) -> None:
    response = client.post(f"/infer?top_k={k}", files={"image": ("a.png", image_bytes())})
    assert response.status_code == 422
    assert "top_k" in response.json()["detail"]


def test_missing_image_field_is_422_naming_it(client: TestClient) -> None:
    response = client.post("/infer", files={"photo": ("a.png", image_bytes())})
    assert response.status_code == 422
    assert "'image'" in response.json()["detail"]


def test_not_multipart_is_422_with_the_curl_hint(client: TestClient) -> None:
    response = client.post("/infer", content=image_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert "-F image=@" in response.json()["detail"]


def test_two_images_on_infer_is_422(client: TestClient) -> None:
    files = [("image", ("a.png", image_bytes())), ("image", ("b.png", image_bytes()))]
    response = client.post("/infer", files=files)
    assert response.status_code == 413 or response.status_code == 422
    assert "/infer/batch" in response.json()["detail"]


def test_empty_file_is_400(client: TestClient) -> None:
    response = client.post("/infer", files={"image": ("a.jpg", b"")})
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_truncated_jpeg_is_400(client: TestClient) -> None:
    data = image_bytes("JPEG", size=(300, 300), color="green")
    response = client.post("/infer", files={"image": ("a.jpg", data[: len(data) // 2])})
    assert response.status_code == 400


def test_pdf_named_jpg_is_415_naming_pdf(client: TestClient) -> None:
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"
    response = client.post("/infer", files={"image": ("photo.jpg", pdf, "image/jpeg")})
    assert response.status_code == 415
    assert "PDF" in response.json()["detail"]


def test_text_is_415(client: TestClient) -> None:
    response = client.post("/infer", files={"image": ("photo.jpg", b"hello, world\n" * 10)})
    assert response.status_code == 415


def test_upload_over_limit_is_413_without_reading_it_all(
    client: TestClient, settings: Settings
) -> None:
    big = b"\xff\xd8\xff" + b"\0" * (settings.max_upload_bytes + 10)
    response = client.post("/infer", files={"image": ("big.jpg", big)})
    assert response.status_code == 413
    assert "MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_chunked_upload_over_limit_is_413(client: TestClient, settings: Settings) -> None:
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body() -> object:
        yield head
        for _ in range(100):  # 100 × 64 KiB: far past the 200 kB limit
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/infer",
        content=body(),  # type: ignore[arg-type]
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413  # (TestClient buffers the body: see test_server.py)


def test_body_cut_off_before_its_closing_boundary_is_422(client: TestClient) -> None:
    boundary = "cut"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    closing = f"--{boundary}--\r\n".encode()

    def part(field: str) -> bytes:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"'
            "\r\nContent-Type: image/png\r\n\r\n"
        )
        return head.encode() + image_bytes() + b"\r\n"

    response = client.post("/infer", content=part("image")[:-20], headers=headers)
    assert response.status_code == 422
    assert "cut off" in response.json()["detail"]
    # In a batch, two whole images and a third cut short: the request itself is broken.
    cut_batch = part("images") * 2 + part("images")[:-20]
    response = client.post("/infer/batch", content=cut_batch, headers=headers)
    assert response.status_code == 422
    assert "cut off" in response.json()["detail"]
    whole = client.post("/infer", content=part("image") + closing, headers=headers)
    assert whole.status_code == 200


def test_too_many_pixels_is_413(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buffer, "PNG")  # 9 MP, tiny file, over 4 MP limit
    response = client.post("/infer", files={"image": ("bomb.png", buffer.getvalue())})
    assert response.status_code == 413
    assert "3000x3000" in response.json()["detail"]


def test_errors_never_500_on_garbage(client: TestClient) -> None:
    for blob in (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a" + b"\xff" * 20, b"\xff\xd8\xff"):
        response = client.post("/infer", files={"image": ("x", blob)})
        assert 400 <= response.status_code < 500, (blob, response.text)
    assert client.get("/health").status_code == 200


def test_batch_mixes_good_and_bad_images(client: TestClient) -> None:
    files = [
        ("images", ("a.png", image_bytes(color="red"))),
        ("images", ("b.jpg", b"not an image at all")),
        ("images", ("c.jpg", b"")),
        ("images", ("d.jpg", image_bytes("JPEG", color="blue"))),
    ]
    response = client.post("/infer/batch?top_k=2", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert len(results[0]["predictions"]) == 2
    assert results[0]["error"] is None
    assert results[1]["error"]["status"] == 415
    assert results[1]["predictions"] is None
    assert results[2]["error"]["status"] == 400
    assert len(results[3]["predictions"]) == 2
    single = client.post("/infer?top_k=2", files={"image": ("a.png", image_bytes(color="red"))})
    assert results[0]["predictions"] == single.json()["predictions"]


def test_batch_over_the_image_limit_is_413(client: TestClient, settings: Settings) -> None:
    files = [("images", (f"{i}.png", image_bytes())) for i in range(settings.max_batch_images + 1)]
    response = client.post("/infer/batch", files=files)
    assert response.status_code == 413
    assert "MAX_BATCH_IMAGES" in response.json()["detail"]


def test_batch_without_images_is_422(client: TestClient) -> None:
    response = client.post("/infer/batch", files={"image": ("a.png", image_bytes())})
    assert response.status_code == 422
    assert "'images'" in response.json()["detail"]


def test_openapi_documents_every_status_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    infer = spec["paths"]["/infer"]["post"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(infer["responses"])
    for status in ("400", "413", "415", "422", "503"):
        assert infer["responses"][status]["content"]["application/json"]["examples"]
    body = infer["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["image"]["format"] == "binary"
    assert "/infer/batch" in spec["paths"]


class HeldClassifier(FakeClassifier):
    """Once `hold` is set, each run waits until the test sets `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.release = threading.Event()

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        if self.hold.is_set():
            self.running.set()
            assert self.release.wait(30)
        return super().run(batch, narrow=narrow)


def test_event_loop_stays_responsive_during_slow_inference(settings: Settings) -> None:
    held = HeldClassifier()
    app = create_app(settings, load_classifier=lambda _: held)
    with TestClient(app) as client:
        held.hold.set()
        result: list[int] = []
        thread = threading.Thread(
            target=lambda: result.append(
                client.post("/infer", files={"image": ("a.png", image_bytes())}).status_code
            )
        )
        thread.start()
        assert held.running.wait(10)
        # The model is busy until released; health must answer meanwhile, not after it.
        assert client.get("/health").status_code == 200
        assert not result  # the inference is still held
        held.release.set()
        thread.join()
        assert result == [200]


class BrokenClassifier(FakeClassifier):
    """Loads and warms up, then fails every real run: a server bug, not a client error."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        if self.broken:
            raise RuntimeError("onnxruntime: something inside the model went wrong")
        return super().run(batch, narrow=narrow)


def test_a_server_bug_is_a_json_500_with_the_request_id(settings: Settings) -> None:
    broken = BrokenClassifier()
    app = create_app(settings, load_classifier=lambda _: broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        broken.broken = True
        files = {"image": ("a.png", image_bytes())}
        response = client.post("/infer", files=files, headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.json()["request_id"] == "bug-1"
    assert "bug" in response.json()["detail"]
    assert response.headers["x-request-id"] == "bug-1"


def test_missing_model_file_message_names_the_fix(tmp_path: Path, labels_file: Path) -> None:
    from cross_pictures.errors import ModelLoadError

    settings = Settings(
        _env_file=None,
        model_path=tmp_path / "nope.onnx",
        labels_path=labels_file,
    )
    with pytest.raises(ModelLoadError, match=r"MODEL_PATH=.*cross-pictures fetch-model"):
        create_app(settings)


def test_unknown_route_and_wrong_method_answer_like_every_other_error(client: TestClient) -> None:
    missing = client.get("/nope", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found", "request_id": "r-404"}
    wrong = client.get("/infer", headers={"X-Request-ID": "r-405"})
    assert wrong.status_code == 405
    assert wrong.json()["request_id"] == "r-405"
    assert wrong.headers["allow"] == "POST"
