"""The model runner: batching, ordering, overload, deadlines and draining."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cross_pictures.batching import BatchStats, ModelRunner, RunResult
from cross_pictures.errors import DeadlineExceeded, ModelNotReady, Overloaded
from cross_pictures.inference import FloatArray
from tests.fakes import FakeClassifier


class GatedClassifier(FakeClassifier):
    """Blocks each run until the test opens the gate, so queues can be built up on purpose."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        self.running.set()
        assert self.gate.wait(10)
        return super().run(batch, narrow=narrow)


def tensor(seed: int) -> FloatArray:
    return np.random.default_rng(seed).normal(size=(3, 224, 224)).astype(np.float32)


def make_runner(classifier: FakeClassifier, **overrides: float) -> ModelRunner:
    options: dict[str, float] = {
        "max_batch_size": 8,
        "max_batch_delay_s": 0.0,
        "max_queue": 64,
        "request_timeout_s": 10.0,
    }
    options.update(overrides)
    runner = ModelRunner(classifier, **options)  # type: ignore[arg-type]
    runner.start()
    return runner


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_lone_request_runs_alone() -> None:
    fake = FakeClassifier()
    runner = make_runner(fake, max_batch_delay_s=5.0)

    async def main() -> None:
        result = await runner.submit(tensor(0))
        assert result.batch_size == 1
        assert result.probabilities.shape == (10,)

    asyncio.run(asyncio.wait_for(main(), 2.0))  # a 5 s batch delay would time this out
    runner.stop(5)
    assert fake.batch_sizes == [1]


def test_queued_requests_are_batched_and_answered_in_their_own_order() -> None:
    fake = GatedClassifier()
    runner = make_runner(fake)
    tensors = [tensor(i) for i in range(9)]
    expected = FakeClassifier().run(np.stack(tensors))

    async def main() -> None:
        first = asyncio.ensure_future(runner.submit(tensors[0]))
        await wait_until(fake.running.is_set)  # the model is busy with image 0
        rest = [asyncio.ensure_future(runner.submit(t)) for t in tensors[1:]]
        await wait_until(lambda: runner.queue_depth == 8)
        fake.gate.set()
        results = await asyncio.gather(first, *rest)
        for result, row in zip(results, expected, strict=True):
            np.testing.assert_allclose(result.probabilities, row, rtol=1e-6)
        assert [r.batch_size for r in results] == [1] + [8] * 8

    asyncio.run(main())
    runner.stop(5)
    assert fake.batch_sizes == [1, 8]


def test_full_queue_is_refused_at_once() -> None:
    fake = GatedClassifier()
    runner = make_runner(fake, max_queue=2)

    async def main() -> None:
        busy = asyncio.ensure_future(runner.submit(tensor(0)))
        await wait_until(fake.running.is_set)
        queued = [asyncio.ensure_future(runner.submit(tensor(i))) for i in (1, 2)]
        await wait_until(lambda: runner.queue_depth == 2)
        with pytest.raises(Overloaded, match="retry"):
            await runner.submit(tensor(3))
        fake.gate.set()
        await asyncio.gather(busy, *queued)

    asyncio.run(main())
    runner.stop(5)


def test_requests_past_their_deadline_never_reach_the_model() -> None:
    fake = GatedClassifier()
    stats: list[BatchStats] = []
    runner = ModelRunner(
        fake,
        max_batch_size=8,
        max_batch_delay_s=0,
        max_queue=8,
        request_timeout_s=0.05,
        on_batch=stats.append,
    )
    runner.start()

    async def main() -> None:
        busy = asyncio.ensure_future(runner.submit(tensor(0)))
        await wait_until(fake.running.is_set)
        late = asyncio.ensure_future(runner.submit(tensor(1)))
        await asyncio.sleep(0.2)  # longer than the 50 ms deadline
        fake.gate.set()
        await busy
        with pytest.raises(DeadlineExceeded, match="REQUEST_TIMEOUT_S"):
            await late

    asyncio.run(main())
    runner.stop(5)
    assert fake.batch_sizes == [1]  # only the first image ran
    assert [(s.size, s.expired) for s in stats] == [(1, 0), (0, 1)]  # and the late one counted


def test_the_deadline_counts_the_wait_before_the_queue_too() -> None:
    # An image that already spent its REQUEST_TIMEOUT_S waiting for a decoder is dropped even
    # though the model is idle.
    fake = FakeClassifier()
    runner = make_runner(fake, request_timeout_s=0.5)

    async def main() -> None:
        with pytest.raises(DeadlineExceeded, match=r"waited 1\.0 s"):
            await runner.submit(tensor(0), waiting_since=time.perf_counter() - 1.0)
        assert (await runner.submit(tensor(1), waiting_since=time.perf_counter())).batch_size == 1

    asyncio.run(main())
    runner.stop(5)
    assert fake.batch_sizes == [1]


def test_cancelled_requests_are_skipped() -> None:
    fake = GatedClassifier()
    runner = make_runner(fake)

    async def main() -> None:
        busy = asyncio.ensure_future(runner.submit(tensor(0)))
        await wait_until(fake.running.is_set)
        gone = asyncio.ensure_future(runner.submit(tensor(1)))
        kept = asyncio.ensure_future(runner.submit(tensor(2)))
        await wait_until(lambda: runner.queue_depth == 2)
        gone.cancel()
        fake.gate.set()
        await busy
        assert (await kept).batch_size == 1

    asyncio.run(main())
    runner.stop(5)
    assert fake.batch_sizes == [1, 1]


def test_stop_answers_everything_already_queued() -> None:
    fake = GatedClassifier()
    runner = make_runner(fake, max_batch_size=2)

    async def main() -> None:
        futures = [asyncio.ensure_future(runner.submit(tensor(i))) for i in range(5)]
        await wait_until(fake.running.is_set)
        stopper = threading.Thread(target=runner.stop, args=(10,))
        stopper.start()
        await wait_until(lambda: not runner.accepting)
        with pytest.raises(ModelNotReady):
            await runner.submit(tensor(9))  # new work is refused while draining
        fake.gate.set()
        results = await asyncio.gather(*futures)
        assert len(results) == 5
        stopper.join()

    asyncio.run(main())
    assert sum(fake.batch_sizes) == 5


def test_model_errors_go_to_the_callers_of_that_batch() -> None:
    class Broken(FakeClassifier):
        def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
            raise RuntimeError("boom")

    runner = make_runner(Broken())

    async def main() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await runner.submit(tensor(0))

    asyncio.run(main())
    runner.stop(5)


def test_batches_respect_a_fixed_batch_model() -> None:
    fake = GatedClassifier(max_batch=1)
    runner = make_runner(fake, max_batch_size=8)
    assert runner.max_batch_size == 1

    async def main() -> None:
        futures = [asyncio.ensure_future(runner.submit(tensor(i))) for i in range(3)]
        await wait_until(fake.running.is_set)
        fake.gate.set()
        await asyncio.gather(*futures)

    asyncio.run(main())
    runner.stop(5)
    assert fake.batch_sizes == [1, 1, 1]


def test_lone_requests_run_wide_with_every_thread() -> None:
    fake = FakeClassifier(lanes=2)
    runner = make_runner(fake)

    async def main() -> None:
        for i in range(3):  # one at a time: the queue is empty whenever a run starts
            await runner.submit(tensor(i))

    asyncio.run(main())
    runner.stop(5)
    assert fake.runs == [(1, False)] * 3


class LaneRecorder(FakeClassifier):
    """Records how many runs overlap, and whether a wide one ever overlaps another."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self.active: list[bool] = []  # narrow flags of the runs in progress
        self.most_at_once = 0
        self.wide_overlapped = False
        self.all_lanes_busy = threading.Event()

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        with self._lock:
            self.active.append(narrow)
            self.most_at_once = max(self.most_at_once, len(self.active))
            if len(self.active) > 1 and not all(self.active):
                self.wide_overlapped = True
            if len(self.active) == self.lanes:
                self.all_lanes_busy.set()
        try:
            assert self.gate.wait(10)
            if narrow and not self.all_lanes_busy.is_set():
                # The first narrow runs hold on until every lane has one: that they overlap
                # is what is being tested. A runner that never overlaps fails after 2 s.
                self.all_lanes_busy.wait(2)
            return super().run(batch, narrow=narrow)
        finally:
            with self._lock:
                self.active.remove(narrow)


def test_a_backlog_runs_narrow_on_every_lane_and_never_overlaps_a_wide_run() -> None:
    fake = LaneRecorder(lanes=2)
    runner = make_runner(fake, max_batch_size=4)

    async def main() -> None:
        first = asyncio.ensure_future(runner.submit(tensor(0)))  # alone: runs wide
        await wait_until(lambda: len(fake.active) == 1)
        rest = [asyncio.ensure_future(runner.submit(tensor(i))) for i in range(1, 17)]
        await asyncio.sleep(0.05)  # the wide run holds both cores: nothing else may start
        assert fake.active == [False]
        fake.gate.set()
        results = await asyncio.gather(first, *rest)
        assert [int(r.probabilities.argmax()) for r in results] == [
            int(fake.run(tensor(i)[np.newaxis])[0].argmax()) for i in range(17)
        ]

    asyncio.run(main())
    runner.stop(5)
    assert not fake.wide_overlapped
    assert fake.most_at_once == 2
    model_runs = fake.runs[:-17]  # the comparison above ran each image once more
    assert model_runs[0] == (1, False)
    assert sum(size for size, _ in model_runs) == 17
    assert all(
        narrow for _, narrow in model_runs[1:3]
    )  # the backlog: two batches of 4 side by side


class PickyClassifier(GatedClassifier):
    """Fails any run that contains an image whose every value is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[int] = []  # batch sizes of every run, failed or not

    def run(self, batch: FloatArray, *, narrow: bool = False) -> FloatArray:
        self.attempts.append(len(batch))
        if np.isnan(batch.reshape(len(batch), -1)).all(axis=1).any():
            raise RuntimeError("the model cannot run a NaN image")
        return super().run(batch, narrow=narrow)


def test_a_failing_run_only_fails_the_image_that_caused_it() -> None:
    fake = PickyClassifier()
    runner = make_runner(fake)
    tensors = [tensor(i) for i in range(5)]
    poison = np.full((3, 224, 224), np.nan, dtype=np.float32)

    async def main() -> list[object]:
        first = asyncio.ensure_future(runner.submit(tensors[0]))
        await wait_until(fake.running.is_set)  # the model is busy: the rest queue up together
        rest = [asyncio.ensure_future(runner.submit(t)) for t in (*tensors[1:3], poison)]
        rest += [asyncio.ensure_future(runner.submit(t)) for t in tensors[3:]]
        await wait_until(lambda: runner.queue_depth == 5)
        fake.gate.set()
        return list(await asyncio.gather(first, *rest, return_exceptions=True))

    results = asyncio.run(main())
    runner.stop(5)
    assert fake.attempts == [1, 5, 1, 1, 1, 1, 1]  # the batch, then alone
    assert isinstance(results[3], RuntimeError)
    expected = FakeClassifier().run(np.stack(tensors))
    answered = [r for i, r in enumerate(results) if i != 3]
    for want, got in zip(expected, answered, strict=True):
        assert isinstance(got, RunResult), got
        np.testing.assert_allclose(got.probabilities, want, rtol=1e-6)
