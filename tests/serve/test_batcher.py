"""The batcher: closes batches at max size or the oldest request's delay, bounds its queue,
drops dead requests before the engine, and confines failures to their own batch.

The engine is the real ONNX Runtime session of the bundled model; the wrappers below only
record batch sizes, hold a batch, or inject a fault.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time

import numpy as np
import pytest

from conftest import BUNDLED_REPOSITORY
from ganserve.serve import latent, repository
from ganserve.serve.backends import EngineOptions
from ganserve.serve.backends.cpu import OnnxCpuEngine as OnnxEngine
from ganserve.serve.batcher import Batcher, Work, parallel_threshold
from ganserve.serve.config import BatchingConfig
from ganserve.serve.errors import (
    DeadlineExceededError,
    EngineError,
    QueueFullError,
    ShuttingDownError,
)
from ganserve.serve.imaging import Encoding
from ganserve.serve.metrics import ServerMetrics


@pytest.fixture(scope="module")
def real_engine() -> OnnxEngine:
    version = repository.latest(BUNDLED_REPOSITORY, "digits")
    return OnnxEngine(version.path, version.metadata, EngineOptions())


class RecordingEngine:
    """Delegates to the real engine; records batch sizes; can hold a batch or inject faults."""

    def __init__(self, engine: OnnxEngine) -> None:
        self.engine = engine
        self.metadata = engine.metadata
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.inside = 0  # batches inside run() right now
        self.fail_next = False
        self.nan_rows: set[int] = set()

    def close(self) -> None:
        pass

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.batches.append(len(feeds["z"]))
        self.inside += 1
        try:
            self.started.set()
            self.gate.wait(10)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("injected engine fault")
            out = self.engine.run(feeds)
        finally:
            self.inside -= 1
        for row in self.nan_rows:
            out[row] = np.nan
        return out


def make_batcher(
    *engines: RecordingEngine, image_s: float | None = None, **batching: object
) -> Batcher:
    config = BatchingConfig(**batching)
    metrics = ServerMetrics(max_batch_size=config.max_batch_size)
    return Batcher(list(engines), config, metrics, image_s=image_s)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_batcher_closes_batch_at_max_batch_size(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)

    async def scenario() -> list[bytes]:
        batcher = make_batcher(engine, max_batch_size=4, max_queue_delay_us=5_000_000)
        batcher.start()
        futures = [batcher.submit(Work(seed, seed % 10, Encoding.PNG)) for seed in range(8)]
        results = await asyncio.gather(*futures)
        await batcher.close(1)
        return results

    results = run(scenario())
    assert engine.batches == [4, 4]
    assert len(set(results)) == 8


def test_two_batchers_of_one_version_add_up_in_the_depth_gauge(real_engine: OnnxEngine) -> None:
    """A version reloaded in place drains its old batcher while the new one serves, under one
    label pair: the gauge shows both queues, and the old one's drain does not zero the new
    one's."""
    old_engine, new_engine = RecordingEngine(real_engine), RecordingEngine(real_engine)
    old_engine.gate.clear()
    new_engine.gate.clear()
    config = BatchingConfig(max_batch_size=1)
    metrics = ServerMetrics(max_batch_size=1)
    meta = real_engine.metadata
    labels = {"model": meta.name, "version": str(meta.version)}

    def depth() -> float | None:
        return metrics.registry.get_sample_value("ganserve_queue_depth", labels)

    async def scenario() -> list[float | None]:
        seen = []
        old = Batcher([old_engine], config, metrics)
        new = Batcher([new_engine], config, metrics)
        old.start()
        new.start()
        old_futures = [old.submit(Work(s, 0, Encoding.RAW_UINT8)) for s in range(4)]
        new_futures = [new.submit(Work(s, 0, Encoding.RAW_UINT8)) for s in range(10, 13)]
        assert await asyncio.to_thread(old_engine.started.wait, 10)
        assert await asyncio.to_thread(new_engine.started.wait, 10)
        seen.append(depth())  # 3 + 2 wait: one of each runs
        old_engine.gate.set()
        await asyncio.gather(*old_futures)
        await old.close(1)
        seen.append(depth())  # the old queue is gone, the new one still waits
        new_engine.gate.set()
        await asyncio.gather(*new_futures)
        await new.close(1)
        seen.append(depth())
        return seen

    assert run(scenario()) == [5, 2, 0]


def test_batcher_flushes_partial_batch_at_queue_delay(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=64, max_queue_delay_us=300_000)
        batcher.start()
        first = batcher.submit(Work(1, 1, Encoding.PNG))
        await asyncio.sleep(0.02)  # well inside the delay: joins the same batch
        rest = [batcher.submit(Work(s, 2, Encoding.PNG)) for s in (2, 3)]
        await asyncio.gather(first, *rest)
        await batcher.close(1)

    run(scenario())
    assert engine.batches == [3]


def test_requests_queued_while_engine_busy_form_the_next_batch(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)
    engine.gate.clear()

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=64, max_queue_delay_us=0)
        batcher.start()
        first = batcher.submit(Work(0, 0, Encoding.PNG))
        assert await asyncio.to_thread(engine.started.wait, 10)
        rest = [batcher.submit(Work(s, s % 10, Encoding.PNG)) for s in range(1, 11)]
        engine.gate.set()
        await asyncio.gather(first, *rest)
        await batcher.close(1)

    run(scenario())
    assert engine.batches == [1, 10]


def test_full_queue_is_refused_at_once(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)
    engine.gate.clear()

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=1, max_queue_size=2)
        batcher.start()
        running = batcher.submit(Work(0, 0, Encoding.PNG))
        assert await asyncio.to_thread(engine.started.wait, 10)
        queued = [batcher.submit(Work(s, 0, Encoding.PNG)) for s in (1, 2)]
        with pytest.raises(QueueFullError, match="queue is full"):
            batcher.submit(Work(3, 0, Encoding.PNG))
        engine.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close(1)

    run(scenario())


def test_expired_and_cancelled_requests_never_reach_the_engine(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)
    engine.gate.clear()

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=8)
        batcher.start()
        running = batcher.submit(Work(0, 0, Encoding.PNG))
        assert await asyncio.to_thread(engine.started.wait, 10)
        expired = batcher.submit(Work(1, 1, Encoding.PNG), deadline=time.monotonic() - 1)
        cancelled = batcher.submit(Work(2, 2, Encoding.PNG))
        cancelled.cancel()
        alive = batcher.submit(Work(3, 3, Encoding.PNG), deadline=time.monotonic() + 60)
        engine.gate.set()
        await asyncio.gather(running, alive)
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await expired
        assert batcher.queue_depth == 0
        await batcher.close(1)

    run(scenario())
    assert engine.batches == [1, 1]


def test_batcher_closes_a_batch_in_time_for_a_queued_deadline(real_engine: OnnxEngine) -> None:
    """A queue delay longer than a call's deadline used to hold the call until the deadline had
    passed, and it failed unserved; the batch now closes in time for it. The second call,
    arriving while the first waits, has the earlier deadline: the batch closes for it too."""
    engine = RecordingEngine(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=8, max_queue_delay_us=10_000_000)
        batcher.start()
        patient = batcher.submit(Work(0, 0, Encoding.PNG), deadline=time.monotonic() + 60)
        await asyncio.sleep(0.05)
        hurried = batcher.submit(Work(1, 1, Encoding.PNG), deadline=time.monotonic() + 2)
        await asyncio.gather(patient, hurried)
        late = batcher.submit(Work(2, 2, Encoding.PNG))  # no deadline: waits out the delay
        await asyncio.sleep(0.2)
        assert not late.done()
        await batcher.close(0)

    run(scenario())
    assert engine.batches == [2]


def test_failing_batch_fails_its_own_requests_and_batcher_recovers(
    real_engine: OnnxEngine,
) -> None:
    engine = RecordingEngine(real_engine)
    engine.fail_next = True

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=4, max_queue_delay_us=1_000_000)
        batcher.start()
        doomed = [batcher.submit(Work(s, 0, Encoding.PNG)) for s in range(4)]
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, EngineError) for r in results)
        healthy = await batcher.submit(Work(9, 9, Encoding.PNG))
        assert healthy.startswith(b"\x89PNG")
        await batcher.close(1)

    run(scenario())


def test_non_finite_images_fail_only_their_requests(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)
    engine.nan_rows = {1}

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=3, max_queue_delay_us=1_000_000)
        batcher.start()
        futures = [batcher.submit(Work(s, 0, Encoding.PNG)) for s in range(3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(results[1], EngineError)
        assert isinstance(results[0], bytes) and isinstance(results[2], bytes)
        await batcher.close(1)

    run(scenario())


def test_close_finishes_queued_work_then_refuses_new(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=2)
        batcher.start()
        futures = [batcher.submit(Work(s, 0, Encoding.PNG)) for s in range(5)]
        await batcher.close(10)
        assert all(f.done() and f.exception() is None for f in futures)
        with pytest.raises(ShuttingDownError):
            batcher.submit(Work(9, 0, Encoding.PNG))

    run(scenario())


def test_preferred_sizes_pad_and_split_without_changing_images(real_engine: OnnxEngine) -> None:
    plain, padded = RecordingEngine(real_engine), RecordingEngine(real_engine)

    async def images(engine: RecordingEngine, **batching: object) -> list[bytes]:
        batcher = make_batcher(engine, max_batch_size=64, max_queue_delay_us=1_000_000, **batching)
        batcher.start()
        works = [Work(s, s % 10, Encoding.RAW_UINT8) for s in range(11)]
        (out,) = await asyncio.gather(*batcher.submit_many(works))
        await batcher.close(1)
        return out

    want = run(images(plain))
    got = run(images(padded, preferred_batch_sizes=(4, 8)))
    assert plain.batches == [11]
    assert padded.batches == [8, 4]  # 11 = 8 + 3, the 3 padded up to 4
    assert got == want


def test_instances_run_batches_concurrently(real_engine: OnnxEngine) -> None:
    first, second = gated_pair(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(first, second, max_batch_size=2)
        batcher.start()
        futures = batcher.submit_many([Work(s, 1, Encoding.PNG) for s in range(4)])
        # Both instances hold a batch at the same time, before either is released. (A gate
        # that times out lets its batch end; the next one then runs alone, never beside it.)
        await until(lambda: first.inside == 1 and second.inside == 1, "a batch in each instance")
        assert not first.gate.is_set() and not second.gate.is_set()
        first.gate.set()
        second.gate.set()
        await asyncio.gather(*futures)
        await batcher.close(1)

    run(scenario())
    assert sorted(first.batches + second.batches) == [2, 2]


@pytest.mark.parametrize(
    ("image_s", "parallel_batch_us", "expected"),
    [
        (1e-4, 2000, 20),  # a light model: 20 images make 2 ms of engine time
        (1e-6, 2000, 32),  # never more than half a max batch
        (1.5e-3, 2000, 1),  # an image slower than the budget is never held back
        (1e-4, 0, 1),  # 0: whenever an instance is free
        (None, 2000, 1),  # not timed (no warm-up): whenever an instance is free
    ],
)
def test_parallel_threshold_counts_images_worth_the_budget(
    image_s: float | None, parallel_batch_us: int, expected: int
) -> None:
    config = BatchingConfig(max_batch_size=64, instances=2, parallel_batch_us=parallel_batch_us)
    assert parallel_threshold(config, image_s) == expected


def gated_pair(real_engine: OnnxEngine) -> tuple[RecordingEngine, RecordingEngine]:
    """Two instances whose batches wait for their gate."""
    pair = RecordingEngine(real_engine), RecordingEngine(real_engine)
    for engine in pair:
        engine.gate.clear()
    return pair


async def until(predicate, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(("waiting", "expected"), [(3, [1, 3]), (4, [1, 4])])
def test_a_free_instance_waits_for_enough_images_while_another_batch_runs(
    real_engine: OnnxEngine, waiting: int, expected: list[int]
) -> None:
    """Threshold 4 (1 s at 0.25 s an image): 3 waiting images stay queued while the first
    batch runs, then go together when it ends, with no further arrival; 4 start at once."""
    first, second = engines = gated_pair(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(
            *engines, max_batch_size=64, instances=2, parallel_batch_us=1_000_000, image_s=0.25
        )
        assert batcher.parallel_min == 4
        batcher.start()
        lone = batcher.submit(Work(0, 0, Encoding.RAW_UINT8))
        await until(lambda: any(e.started.is_set() for e in engines), "the first batch")
        running = next(e for e in engines if e.started.is_set())
        idle = second if running is first else first
        rest = [batcher.submit(Work(s, s % 10, Encoding.RAW_UINT8)) for s in range(1, waiting + 1)]
        if waiting < batcher.parallel_min:
            for _ in range(20):  # the loop gets every chance to start the idle instance
                await asyncio.sleep(0)
            assert not idle.started.is_set() and batcher.queue_depth == waiting
        else:
            await until(idle.started.is_set, "a batch on the idle instance")
            idle.gate.set()
            await asyncio.gather(*rest)
        running.gate.set()
        idle.gate.set()
        await asyncio.gather(lone, *rest)
        await batcher.close(1)

    run(scenario())
    assert first.batches + second.batches == expected or second.batches + first.batches == expected


@pytest.mark.parametrize(
    ("budget_us", "image_s", "threshold", "due_in_s"),
    [
        # 4 max batches' engine time: 4 x 8 x 10 ms.
        pytest.param(30_000, 0.01, 3, None, id="no-longer-than-the-budget"),
        # The hold is 8 s; a call due in 2.3 s waited it out and failed unserved. The batch
        # closes a max batch's engine time (2 s) plus slack before the deadline.
        pytest.param(1_000_000, 0.25, 4, 2.3, id="not-past-its-deadline"),
    ],
)
def test_a_request_held_back_behind_a_stuck_batch_runs_on_the_free_instance(
    real_engine: OnnxEngine,
    budget_us: int,
    image_s: float,
    threshold: int,
    due_in_s: float | None,
) -> None:
    """One instance holds a batch that does not end; a lone request behind it still runs on
    the free instance, once it has waited its budget or in time for its deadline."""
    first, second = gated_pair(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(
            first,
            second,
            max_batch_size=8,
            instances=2,
            parallel_batch_us=budget_us,
            image_s=image_s,
        )
        assert batcher.parallel_min == threshold
        batcher.start()
        stuck = batcher.submit(Work(0, 0, Encoding.RAW_UINT8))
        await until(lambda: first.started.is_set() or second.started.is_set(), "a batch")
        running = first if first.started.is_set() else second
        idle = second if running is first else first
        idle.gate.set()
        deadline = None if due_in_s is None else time.monotonic() + due_in_s
        await asyncio.wait_for(batcher.submit(Work(1, 1, Encoding.RAW_UINT8), deadline), 5)
        assert not running.gate.is_set()  # served beside the running batch, not after it
        running.gate.set()
        await stuck
        await batcher.close(1)

    run(scenario())
    assert sorted(first.batches + second.batches) == [1, 1]


def test_a_drain_without_end_is_cut_short_by_hurry(real_engine: OnnxEngine) -> None:
    """A retired version drains with no grace limit; a shutdown then brings the end forward:
    what still waits fails with ShuttingDownError, and close() returns."""
    engine = RecordingEngine(real_engine)
    engine.gate.clear()

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=1, max_queue_delay_us=0)
        batcher.start()
        running = batcher.submit(Work(0, 0, Encoding.RAW_UINT8))
        assert await asyncio.to_thread(engine.started.wait, 10)
        queued = batcher.submit(Work(1, 1, Encoding.RAW_UINT8))
        closing = asyncio.ensure_future(batcher.close(math.inf))
        await asyncio.sleep(0.3)
        assert not closing.done() and not queued.done()
        batcher.hurry(0)
        with pytest.raises(ShuttingDownError, match="server shut down"):
            await queued
        engine.gate.set()
        await asyncio.wait_for(closing, 10)
        await running  # the batch in the engine still ends well

    run(scenario())


def test_a_drain_without_end_stops_when_no_instance_comes_back(real_engine: OnnxEngine) -> None:
    """A retired version whose one instance hangs, with nothing to replace it: the queued call
    could never run, and close(math.inf) never returned (the version's engines and gauges
    stayed for good). Once no batch has started or ended for ``stall_s``, it gives up."""
    engine = RecordingEngine(real_engine)
    engine.gate.clear()

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=1, max_queue_delay_us=0, engine_timeout_s=0.2)
        batcher.start()
        hung = batcher.submit(Work(0, 0, Encoding.RAW_UINT8))
        assert await asyncio.to_thread(engine.started.wait, 10)
        queued = batcher.submit(Work(1, 1, Encoding.RAW_UINT8))
        try:
            await asyncio.wait_for(batcher.close(math.inf, stall_s=0.5), 10)
            with pytest.raises(DeadlineExceededError, match="engine timeout"):
                await hung
            with pytest.raises(ShuttingDownError, match="retired by a reload and its engines"):
                await queued
        finally:
            engine.gate.set()

    run(scenario())


@pytest.mark.parametrize(
    ("fault", "logged"),
    [
        ("hang", "still running a batch of 4 images after 0.10s"),
        ("raise", "batch of 4 images for model digits v"),
    ],
)
def test_a_failed_batch_is_logged_with_its_image_count(
    real_engine: OnnxEngine, caplog: pytest.LogCaptureFixture, fault: str, logged: str
) -> None:
    """The log counted the batch's requests: one GenerateBatch call of 4 images (one group)
    was "a batch of 1"."""
    engine = RecordingEngine(real_engine)
    if fault == "hang":
        engine.gate.clear()
    else:
        engine.fail_next = True

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=4, engine_timeout_s=0.1)
        batcher.start()
        (group,) = batcher.submit_many([Work(s, s, Encoding.RAW_UINT8) for s in range(4)])
        with pytest.raises((DeadlineExceededError, EngineError)):
            await group
        engine.gate.set()
        await batcher.close(1)

    with caplog.at_level(logging.ERROR, logger="ganserve.serve.batcher"):
        run(scenario())
    assert logged in caplog.text


def test_with_parallel_batches_off_a_free_instance_takes_any_request(
    real_engine: OnnxEngine,
) -> None:
    first, second = gated_pair(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(
            first, second, max_batch_size=64, instances=2, parallel_batch_us=0, image_s=5e-4
        )
        batcher.start()
        futures = [batcher.submit(Work(0, 0, Encoding.RAW_UINT8))]
        await until(lambda: first.started.is_set() or second.started.is_set(), "a batch")
        futures.append(batcher.submit(Work(1, 1, Encoding.RAW_UINT8)))
        await until(lambda: first.started.is_set() and second.started.is_set(), "both instances")
        first.gate.set()
        second.gate.set()
        await asyncio.gather(*futures)
        await batcher.close(1)

    run(scenario())
    assert sorted(first.batches + second.batches) == [1, 1]


def test_truncation_scales_the_latent(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)

    async def scenario() -> list[bytes]:
        batcher = make_batcher(engine, max_batch_size=8)
        batcher.start()
        works = [
            Work(1, 3, Encoding.RAW_UINT8, 0.0),
            Work(2, 3, Encoding.RAW_UINT8, 0.0),
            Work(1, 3, Encoding.RAW_UINT8, 0.5),
            Work(1, 3, Encoding.RAW_UINT8),
            Work(99, 3, Encoding.RAW_UINT8, 1.0, latent.seed_to_latent(1, 64)),
        ]
        (out,) = await asyncio.gather(*batcher.submit_many(works))
        await batcher.close(1)
        return out

    zero_a, zero_b, half, full, explicit = run(scenario())
    assert zero_a == zero_b  # psi = 0: every seed maps to the mean latent
    assert half not in (zero_a, full)
    assert explicit == full  # an explicit latent overrides the seed


def test_submit_many_is_all_or_nothing(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)
    engine.gate.clear()

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=1, max_queue_size=3)
        batcher.start()
        running = batcher.submit(Work(0, 0, Encoding.PNG))
        assert await asyncio.to_thread(engine.started.wait, 10)
        with pytest.raises(QueueFullError, match="4 more asked"):
            batcher.submit_many([Work(s, 0, Encoding.PNG) for s in range(4)])
        assert batcher.queue_depth == 0
        engine.gate.set()
        await running
        await batcher.close(1)

    run(scenario())


def test_a_many_image_call_queues_in_whole_groups_packed_with_other_calls(
    real_engine: OnnxEngine,
) -> None:
    engine = RecordingEngine(real_engine)
    engine.gate.clear()

    async def scenario() -> tuple[list[list[bytes]], bytes, bytes]:
        batcher = make_batcher(engine, max_batch_size=4, max_queue_delay_us=1_000_000)
        batcher.start()
        blocker = batcher.submit(Work(100, 0, Encoding.RAW_UINT8))
        assert await asyncio.to_thread(engine.started.wait, 10)
        first = batcher.submit(Work(101, 1, Encoding.RAW_UINT8))
        groups = batcher.submit_many([Work(s, s % 10, Encoding.RAW_UINT8) for s in range(6)])
        last = batcher.submit(Work(102, 2, Encoding.RAW_UINT8))
        assert len(groups) == 2 and batcher.queue_depth == 8  # images, not requests
        engine.gate.set()
        await blocker
        out = await asyncio.gather(*groups)
        one, two = await first, await last
        await batcher.close(1)
        return out, one, two

    out, one, two = run(scenario())
    # [blocker], then [first] + the first group of 4 would be 5 > 4: groups are never split.
    assert engine.batches == [1, 1, 4, 3]  # blocker | first | group of 4 | group of 2 + last
    alone = run(images_alone(real_engine, [Work(s, s % 10, Encoding.RAW_UINT8) for s in range(6)]))
    assert [image for group in out for image in group] == alone  # in order, batch-invariant
    assert isinstance(one, bytes) and isinstance(two, bytes)


async def images_alone(engine: OnnxEngine, works: list[Work]) -> list[bytes]:
    batcher = make_batcher(RecordingEngine(engine), max_batch_size=64)
    batcher.start()
    out = [await batcher.submit(work) for work in works]
    await batcher.close(1)
    return out
