"""The classifier: owns the ONNX Runtime session. Softmax and top-k are pure functions."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from cross_pictures.errors import ModelLoadError

FloatArray = npt.NDArray[np.float32]
# The side of the square images preprocessing produces (preprocessing.INPUT_SIZE; inference
# does not import preprocessing, so the number is repeated and a test checks they agree).
INPUT_SIDE = 224

# onnxruntime's pybind errors derive from Exception directly, so they are named one by one.
ORT_LOAD_ERRORS: tuple[type[Exception], ...] = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    DecodeError,
)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One class and the model's confidence in it."""

    label: str
    confidence: float
    index: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What operators and the v2 protocol want to know about the loaded model."""

    path: str
    sha256: str
    input_name: str
    input_shape: tuple[int | str, ...]
    output_name: str
    num_classes: int
    max_batch_size: int  # 0 means "any"; the zoo model declares a fixed batch of 1
    ends_in_softmax: bool
    threads: int
    load_seconds: float


class Classifier(Protocol):
    """What the service needs from a model: probabilities for a batch of image tensors."""

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def max_batch_size(self) -> int:
        """Largest batch run() accepts; 0 means no limit."""
        ...

    @property
    def lanes(self) -> int:
        """How many narrow runs may go at once (one per core); 1 means runs are never narrow."""
        ...

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        """Class probabilities [N, len(labels)] for a batch [N, 3, 224, 224].

        Wide runs use every thread (best latency); a narrow run uses one thread, so `lanes` of
        them run side by side without the thread synchronisation a wide run pays whenever
        decoding takes a core from it (best throughput under load).
        """
        ...


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax, stable for large logits."""
    shifted: FloatArray = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def top_k(probabilities: FloatArray, labels: Sequence[str], k: int) -> list[Prediction]:
    """The k most probable classes of one row, most probable first."""
    k = min(k, probabilities.shape[-1])
    # argpartition is O(n); only the k winners need sorting.
    best = np.argpartition(-probabilities, k - 1)[:k]
    best = best[np.argsort(-probabilities[best], kind="stable")]
    return [Prediction(labels[i], float(probabilities[i]), int(i)) for i in best]


def load_labels(path: Path) -> list[str]:
    """Class names, one per non-empty line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"LABELS_PATH={path} cannot be read: {exc}") from exc
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise ModelLoadError(f"LABELS_PATH={path} is empty: it needs one class name per line")
    return labels


def _graph_ends_in_softmax(model_bytes: bytes, output_name: str) -> bool:
    """True if the node producing the output is a Softmax, so we must not apply another."""
    graph = onnx.load_from_string(model_bytes).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    return producers.get(output_name) == "Softmax"


def session_options(threads: int) -> ort.SessionOptions:
    """Options measured best for ResNet-50 on few cores (see README, design decisions)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT_PARALLEL halved throughput here; one sequential graph with NCHWc layouts is fastest.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers burn the CPU that decoding needs between model runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxClassifier:
    """An ImageNet classifier backed by one ONNX Runtime CPU session."""

    def __init__(
        self,
        session: ort.InferenceSession,
        labels: Sequence[str],
        *,
        ends_in_softmax: bool,
        info: ModelInfo | None = None,
        narrow_session: ort.InferenceSession | None = None,
        lanes: int = 1,
    ) -> None:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"the model has {len(inputs)} inputs; one image input is needed")
        shape = tuple(inputs[0].shape)
        if len(shape) != 4 or shape[1] != 3 or inputs[0].type != "tensor(float)":
            raise ModelLoadError(
                f"the model input {inputs[0].name!r} is {inputs[0].type} {list(shape)}; "
                "an NCHW float input [N, 3, H, W] is needed"
            )
        if any(isinstance(side, int) and side != INPUT_SIDE for side in shape[2:]):
            raise ModelLoadError(
                f"the model input {inputs[0].name!r} is {list(shape)}; images are prepared as "
                f"{INPUT_SIDE}x{INPUT_SIDE}, so the model must take [N, 3, {INPUT_SIDE}, "
                f"{INPUT_SIDE}]"
            )
        width = outputs[0].shape[-1]
        if isinstance(width, int) and width != len(labels):
            raise ModelLoadError(
                f"the model outputs {width} classes but LABELS_PATH has {len(labels)} labels: "
                "use the labels file that belongs to this model"
            )
        self._session = session
        # One intra-op thread, run from `lanes` threads at once (ONNX Runtime's Run is
        # thread-safe); without it every run is wide.
        self._narrow_session = narrow_session or session
        self._lanes = lanes if narrow_session is not None else 1
        self._labels = list(labels)
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        self._input_shape: tuple[int | str, ...] = tuple(
            d if isinstance(d, int) else str(d) for d in shape
        )
        # A model exported with a fixed batch dimension (the zoo's declares 1) takes only that.
        self._max_batch_size = shape[0] if isinstance(shape[0], int) else 0
        self._ends_in_softmax = ends_in_softmax
        self.info = info

    @classmethod
    def from_files(cls, model_path: Path, labels_path: Path, *, threads: int) -> OnnxClassifier:
        """Load the model and labels; ModelLoadError says what is wrong and how to fix it."""
        started = time.perf_counter()
        labels = load_labels(labels_path)
        try:
            model_bytes = model_path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(
                f"MODEL_PATH={model_path} cannot be read ({exc.strerror}): "
                "run `cross-pictures fetch-model`"
            ) from exc
        try:
            session = ort.InferenceSession(
                model_bytes, session_options(threads), providers=["CPUExecutionProvider"]
            )
            narrow = (
                ort.InferenceSession(
                    model_bytes, session_options(1), providers=["CPUExecutionProvider"]
                )
                if threads > 1
                else None
            )
            ends_in_softmax = _graph_ends_in_softmax(model_bytes, session.get_outputs()[0].name)
        except ORT_LOAD_ERRORS as exc:
            raise ModelLoadError(
                f"MODEL_PATH={model_path} is not a usable ONNX model ({exc}); "
                "rebuild it with `cross-pictures fetch-model`"
            ) from exc
        classifier = cls(
            session, labels, ends_in_softmax=ends_in_softmax, narrow_session=narrow, lanes=threads
        )
        classifier.info = ModelInfo(
            path=str(model_path),
            sha256=hashlib.sha256(model_bytes).hexdigest(),
            input_name=classifier._input_name,
            input_shape=classifier._input_shape,
            output_name=classifier._output_name,
            num_classes=len(labels),
            max_batch_size=classifier._max_batch_size,
            ends_in_softmax=ends_in_softmax,
            threads=threads,
            load_seconds=time.perf_counter() - started,
        )
        return classifier

    @property
    def labels(self) -> Sequence[str]:
        return self._labels

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def lanes(self) -> int:
        return self._lanes

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        """Class probabilities for a batch; softmax applied once, whatever the graph ends in."""
        if self._max_batch_size and len(batch) > self._max_batch_size:
            parts = [
                self.run(batch[i : i + self._max_batch_size], narrow=narrow)
                for i in range(0, len(batch), self._max_batch_size)
            ]
            return np.concatenate(parts)
        session = self._narrow_session if narrow else self._session
        (output,) = session.run([self._output_name], {self._input_name: batch})
        scores = np.asarray(output, dtype=np.float32).reshape(len(batch), -1)
        return scores if self._ends_in_softmax else softmax(scores)
