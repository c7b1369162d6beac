"""The real model on real photos: goldens, accuracy, draft decoding and concurrent answers."""

from __future__ import annotations

import io
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cross_pictures import cli
from cross_pictures.inference import OnnxClassifier, top_k
from cross_pictures.preprocessing import prepare_image
from tests.conftest import INT8_MODEL_PATH, LABELS_PATH, ROOT, require_model, require_photos
from tests.images import PHOTOS
from tests.server import Server, running_server
from tests.test_operations import metric_value

MAX_PIXELS = 50_000_000


@pytest.fixture(scope="module")
def classifier() -> OnnxClassifier:
    return OnnxClassifier.from_files(require_model(), LABELS_PATH, threads=2)


@pytest.fixture(scope="module")
def goldens() -> list[dict[str, Any]]:
    return require_photos()


def classify(classifier: OnnxClassifier, data: bytes, k: int = 3) -> list[tuple[str, float]]:
    tensor = prepare_image(data, max_pixels=MAX_PIXELS).tensor
    (probabilities,) = classifier.run(tensor[np.newaxis])
    return [(p.label, p.confidence) for p in top_k(probabilities, classifier.labels, k)]


def test_golden_top3_and_accuracy_on_the_dev_photos(
    classifier: OnnxClassifier, goldens: list[dict[str, Any]]
) -> None:
    # Batched like the service runs them; each row must still match its golden.
    tensors = [
        prepare_image((PHOTOS / g["file"]).read_bytes(), max_pixels=MAX_PIXELS).tensor
        for g in goldens
    ]
    correct = 0
    for start in range(0, len(goldens), 8):
        probabilities = classifier.run(np.stack(tensors[start : start + 8]))
        for golden, row in zip(goldens[start : start + 8], probabilities, strict=True):
            best = top_k(row, classifier.labels, 3)
            assert best[0].label == golden["top3"][0][0], golden["file"]
            # Every golden class's probability, wherever it ranks ("crane" is two classes).
            probability: dict[str, float] = {}
            for index, label in enumerate(classifier.labels):
                probability[label] = max(probability.get(label, 0.0), float(row[index]))
            for label, confidence in golden["top3"]:
                assert probability[label] == pytest.approx(confidence, abs=0.005), (
                    golden["file"],
                    label,
                )
            correct += best[0].label == golden["class_label"]
    assert correct == 92


def test_draft_decoding_of_big_jpegs_changes_no_top1(
    classifier: OnnxClassifier, goldens: list[dict[str, Any]]
) -> None:
    # Phone-sized versions of the dev photos take the draft (DCT-scaled) path; the goldens
    # were computed without it, so compare its top-1 with a plain decode of the same file.
    changed = []
    for golden in goldens[::5]:
        photo = Image.open(PHOTOS / golden["file"]).convert("RGB")
        scale = 1100 / min(photo.size)  # shorter side >= 1024: draft engages
        big = photo.resize((round(photo.width * scale), round(photo.height * scale)))
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=92)
        data = buffer.getvalue()
        drafted = prepare_image(data, max_pixels=MAX_PIXELS, draft=True).tensor
        plain = prepare_image(data, max_pixels=MAX_PIXELS, draft=False).tensor
        assert not np.array_equal(drafted, plain)  # the draft path really ran
        a, b = classifier.run(np.stack([drafted, plain]))
        if int(a.argmax()) != int(b.argmax()):
            changed.append(golden["file"])
    assert changed == []


def test_concurrent_requests_each_get_their_own_answer(
    live_server: Server, goldens: list[dict[str, Any]]
) -> None:
    # Many distinct photos, shuffled, with bad uploads mixed in, fired concurrently: each
    # answer must be the one its own image gets alone, and bad ones never spoil a batch.
    photos = [(g["file"], (PHOTOS / g["file"]).read_bytes()) for g in goldens[:40]]
    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        sequential = {
            name: client.post("/infer", files={"image": (name, data)}).json()["predictions"]
            for name, data in photos[:40]
        }
    bad = [(f"bad{i}", b"%PDF-1.4 not an image" if i % 2 else b"") for i in range(8)]
    work = photos + bad
    random.Random(7).shuffle(work)

    def post(item: tuple[str, bytes]) -> tuple[str, int, Any]:
        name, data = item
        response = httpx.post(
            live_server.url + "/infer", files={"image": (name, data)}, timeout=120
        )
        return name, response.status_code, response.json()

    batched_before = batched_images(live_server)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(post, work))
    # Only the photos reached the model: a request that fails decoding never enters a batch.
    assert batched_images(live_server) - batched_before == len(photos)
    for name, status, body in results:
        if name.startswith("bad"):
            assert status in (400, 415), body
            continue
        assert status == 200, body
        got = [(p["label"], p["confidence"]) for p in body["predictions"]]
        want = [(p["label"], p["confidence"]) for p in sequential[name]]
        assert [label for label, _ in got] == [label for label, _ in want], name
        for (_, c1), (_, c2) in zip(got, want, strict=True):
            assert c1 == pytest.approx(c2, abs=1e-4), name


def batched_images(server: Server) -> float:
    """Images the server's model has run so far (the batch-size histogram's sum)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return metric_value(text, "cross_pictures_batch_size_sum")


def test_default_int8_service_on_the_dev_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, goldens: list[dict[str, Any]]
) -> None:
    """What `make run` serves: a real uvicorn with default settings, so the int8 model."""
    require_model(INT8_MODEL_PATH)
    for name in ("PRECISION", "MODEL_PATH", "INT8_MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    with running_server(tmp_path / "server.log", {"LOG_LEVEL": "warning"}) as server:
        info = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'precision="int8"' in info
        correct = 0
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for golden in goldens:
                data = (PHOTOS / golden["file"]).read_bytes()
                response = client.post("/infer", files={"image": (golden["file"], data)})
                assert response.status_code == 200, response.text
                correct += response.json()["predictions"][0]["label"] == golden["class_label"]
    assert correct >= 88, correct  # measured 90/100 (fp32: 92/100)


def test_batch_endpoint_on_the_real_model(
    live_server: Server, goldens: list[dict[str, Any]]
) -> None:
    chosen = goldens[:3]
    files = [("images", (g["file"], (PHOTOS / g["file"]).read_bytes())) for g in chosen]
    files.insert(1, ("images", ("notes.jpg", b"just some text, not a photo")))
    response = httpx.post(live_server.url + "/infer/batch", files=files, timeout=120)
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[1]["error"]["status"] == 415
    for golden, result in zip(chosen, [results[0], *results[2:]], strict=True):
        assert result["predictions"][0]["label"] == golden["top3"][0][0]


def test_predict_command_classifies_files_and_reports_bad_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_model(INT8_MODEL_PATH)
    for name in ("PRECISION", "MODEL_PATH", "INT8_MODEL_PATH", "TOP_K", "top_k", "TOP_k"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)  # the default model paths are relative to the checkout
    zebra = PHOTOS / "n02391049_zebra.JPEG"
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    assert cli.main(["predict", "--json", "--top-k", "2", str(zebra), str(notes)]) == 1
    results = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in results[0]["predictions"]] == ["zebra", "skunk"]
    assert results[1]["error"].startswith("Text files are not supported")
    with pytest.raises(SystemExit) as refused:
        cli.main(["predict", "--top-k", "0", str(zebra)])
    assert refused.value.code == 2
    assert "at least 1" in capsys.readouterr().err
