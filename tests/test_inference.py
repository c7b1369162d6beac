"""Post-processing and model loading, with tiny ONNX graphs made by onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from cross_pictures.app import create_app
from cross_pictures.config import Settings
from cross_pictures.errors import ModelLoadError
from cross_pictures.inference import INPUT_SIDE, FloatArray, OnnxClassifier, softmax, top_k
from cross_pictures.preprocessing import INPUT_SIZE
from tests.fakes import FakeClassifier


def tiny_model(
    path: Path,
    *,
    classes: int | str = 4,
    batch: int | str = "N",
    end_in_softmax: bool = False,
    side: int | str = "S",
) -> Path:
    """[B,3,S,S] -> global average pool -> linear -> [B, classes] (optionally softmaxed).

    The weights always have 4 columns; `classes` is only what the graph *declares*."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits" if end_in_softmax else "scores"]),
    ]
    if end_in_softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, side, side])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def labels(path: Path, count: int) -> Path:
    path.write_text("\n".join(f"label {i}" for i in range(count)) + "\n")
    return path


def test_softmax_rows_sum_to_one_and_survive_huge_logits() -> None:
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0], [0, 0, 0]], dtype=np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probabilities[0], [0.5, 0.5, 0.0], atol=1e-6)
    assert np.isfinite(probabilities).all()


def test_top_k_is_sorted_and_labelled() -> None:
    probabilities = np.array([0.1, 0.4, 0.05, 0.3, 0.15], dtype=np.float32)
    names = ["a", "b", "c", "d", "e"]
    best = top_k(probabilities, names, 3)
    assert [(p.label, p.index) for p in best] == [("b", 1), ("d", 3), ("e", 4)]
    assert best[0].confidence == pytest.approx(0.4)
    assert len(top_k(probabilities, names, 99)) == 5


@pytest.mark.parametrize("end_in_softmax", [False, True])
def test_softmax_is_applied_exactly_once(tmp_path: Path, end_in_softmax: bool) -> None:
    model = tiny_model(tmp_path / "m.onnx", end_in_softmax=end_in_softmax)
    classifier = OnnxClassifier.from_files(model, labels(tmp_path / "l.txt", 4), threads=1)
    batch = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    probabilities = classifier.run(batch)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Reference: the logits computed by hand, softmaxed once.
    graph = onnx.load(model).graph
    weight = numpy_helper.to_array(graph.initializer[0])
    expected = softmax((batch.mean(axis=(2, 3)) @ weight).astype(np.float32))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    assert classifier.info is not None
    assert classifier.info.ends_in_softmax is end_in_softmax


def test_fixed_batch_of_one_model_takes_larger_batches(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx", batch=1)
    classifier = OnnxClassifier.from_files(model, labels(tmp_path / "l.txt", 4), threads=1)
    assert classifier.max_batch_size == 1
    batch = np.random.default_rng(2).normal(size=(3, 3, 8, 8)).astype(np.float32)
    together = classifier.run(batch)
    one_by_one = np.concatenate([classifier.run(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, one_by_one)


def test_label_count_must_match_the_output_width(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx", classes=4)
    with pytest.raises(ModelLoadError, match="outputs 4 classes but LABELS_PATH has 5"):
        OnnxClassifier.from_files(model, labels(tmp_path / "l.txt", 5), threads=1)


def test_not_an_onnx_file_is_a_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match="not a usable ONNX model"):
        OnnxClassifier.from_files(model, labels(tmp_path / "l.txt", 4), threads=1)


def test_empty_labels_file_is_a_clear_error(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx")
    (tmp_path / "l.txt").write_text("\n\n")
    with pytest.raises(ModelLoadError, match=r"LABELS_PATH=.* is empty"):
        OnnxClassifier.from_files(model, tmp_path / "l.txt", threads=1)


def test_model_for_another_image_size_is_a_clear_error(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m.onnx", side=299)
    with pytest.raises(ModelLoadError, match=r"must take \[N, 3, 224, 224\]"):
        OnnxClassifier.from_files(model, labels(tmp_path / "l.txt", 4), threads=1)


class UndeclaredWidth(FakeClassifier):
    """A model whose graph leaves the output width symbolic: it really gives one extra score."""

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        scores = super().run(batch, narrow=narrow)
        return np.concatenate([scores, scores[:, :1]], axis=1)


def test_output_width_is_checked_against_the_labels_at_warm_up(settings: Settings) -> None:
    app = create_app(settings, load_classifier=lambda _: UndeclaredWidth())
    with (
        pytest.raises(ModelLoadError, match=r"shape \[1, 11\], not \[1, 10\]"),
        TestClient(app),
    ):
        pass


def test_inference_and_preprocessing_agree_on_the_image_size() -> None:
    assert INPUT_SIDE == INPUT_SIZE
