"""A fake classifier for fast API tests: deterministic, no model file."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from cross_pictures.inference import FloatArray, softmax

FAKE_LABELS = [f"class {i}" for i in range(10)]


class FakeClassifier:
    """Scores each image by its mean colour, so different images get different answers."""

    def __init__(
        self,
        labels: Sequence[str] = FAKE_LABELS,
        *,
        delay_s: float = 0.0,
        max_batch: int = 0,
        lanes: int = 1,
    ) -> None:
        self._labels = list(labels)
        self._lanes = lanes
        self.runs: list[tuple[int, bool]] = []  # (batch size, narrow) of every run
        self.delay_s = delay_s
        self._max_batch = max_batch
        self.batch_sizes: list[int] = []
        self.running = threading.Event()

    @property
    def labels(self) -> Sequence[str]:
        return self._labels

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    @property
    def lanes(self) -> int:
        return self._lanes

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        self.batch_sizes.append(len(batch))
        self.runs.append((len(batch), narrow))
        self.running.set()
        if self.delay_s:
            time.sleep(self.delay_s)
        means = batch.reshape(len(batch), 3, -1).mean(axis=2)  # [N, 3]
        width = len(self._labels)
        logits = np.stack(
            [np.cos(np.arange(width) * (1 + m[0]) + m[1] * 3 + m[2]) * 4 for m in means]
        ).astype(np.float32)
        return softmax(logits)
