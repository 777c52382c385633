"""The batcher: closes batches at max size or the oldest request's delay, bounds its queue,
drops dead requests before the engine, and confines failures to their own batch.

The engine is the real ONNX Runtime session of the bundled model; the wrappers below only
record batch sizes, hold a batch, or inject a fault.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from conftest import BUNDLED_REPOSITORY
from ganserve.serve import repository
from ganserve.serve.batcher import Batcher
from ganserve.serve.config import BatchingConfig
from ganserve.serve.engine import Backend, OnnxEngine
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
    return OnnxEngine(version.onnx_path, version.metadata, backend=Backend.ONNXRUNTIME_CPU)


class RecordingEngine:
    """Delegates to the real engine; records batch sizes; can hold a batch or inject faults."""

    def __init__(self, engine: OnnxEngine) -> None:
        self.engine = engine
        self.metadata = engine.metadata
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_next = False
        self.nan_rows: set[int] = set()

    def run(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        self.batches.append(len(z))
        self.started.set()
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected engine fault")
        out = self.engine.run(z, labels)
        for row in self.nan_rows:
            out[row] = np.nan
        return out


def make_batcher(engine: RecordingEngine, **batching: int) -> Batcher:
    config = BatchingConfig(**batching)
    return Batcher(
        engine, config, ServerMetrics(max_batch_size=config.max_batch_size), model="digits"
    )


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_batcher_closes_batch_at_max_batch_size(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)

    async def scenario() -> list[bytes]:
        batcher = make_batcher(engine, max_batch_size=4, max_queue_delay_us=5_000_000)
        batcher.start()
        futures = [batcher.submit(seed, seed % 10, Encoding.PNG) for seed in range(8)]
        results = await asyncio.gather(*futures)
        await batcher.close(1)
        return results

    results = run(scenario())
    assert engine.batches == [4, 4]
    assert len(set(results)) == 8


def test_batcher_flushes_partial_batch_at_queue_delay(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=64, max_queue_delay_us=300_000)
        batcher.start()
        first = batcher.submit(1, 1, Encoding.PNG)
        await asyncio.sleep(0.02)  # well inside the delay: joins the same batch
        rest = [batcher.submit(s, 2, Encoding.PNG) for s in (2, 3)]
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
        first = batcher.submit(0, 0, Encoding.PNG)
        await asyncio.to_thread(engine.started.wait, 10)
        rest = [batcher.submit(s, s % 10, Encoding.PNG) for s in range(1, 11)]
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
        running = batcher.submit(0, 0, Encoding.PNG)
        await asyncio.to_thread(engine.started.wait, 10)
        queued = [batcher.submit(s, 0, Encoding.PNG) for s in (1, 2)]
        with pytest.raises(QueueFullError, match="queue is full"):
            batcher.submit(3, 0, Encoding.PNG)
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
        running = batcher.submit(0, 0, Encoding.PNG)
        await asyncio.to_thread(engine.started.wait, 10)
        expired = batcher.submit(1, 1, Encoding.PNG, deadline=time.monotonic() - 1)
        cancelled = batcher.submit(2, 2, Encoding.PNG)
        cancelled.cancel()
        alive = batcher.submit(3, 3, Encoding.PNG, deadline=time.monotonic() + 60)
        engine.gate.set()
        await asyncio.gather(running, alive)
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await expired
        assert batcher.queue_depth == 0
        await batcher.close(1)

    run(scenario())
    assert engine.batches == [1, 1]


def test_failing_batch_fails_its_own_requests_and_batcher_recovers(
    real_engine: OnnxEngine,
) -> None:
    engine = RecordingEngine(real_engine)
    engine.fail_next = True

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=4, max_queue_delay_us=1_000_000)
        batcher.start()
        doomed = [batcher.submit(s, 0, Encoding.PNG) for s in range(4)]
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, EngineError) for r in results)
        healthy = await batcher.submit(9, 9, Encoding.PNG)
        assert healthy.startswith(b"\x89PNG")
        await batcher.close(1)

    run(scenario())


def test_non_finite_images_fail_only_their_requests(real_engine: OnnxEngine) -> None:
    engine = RecordingEngine(real_engine)
    engine.nan_rows = {1}

    async def scenario() -> None:
        batcher = make_batcher(engine, max_batch_size=3, max_queue_delay_us=1_000_000)
        batcher.start()
        futures = [batcher.submit(s, 0, Encoding.PNG) for s in range(3)]
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
        futures = [batcher.submit(s, 0, Encoding.PNG) for s in range(5)]
        await batcher.close(10)
        assert all(f.done() and f.exception() is None for f in futures)
        with pytest.raises(ShuttingDownError):
            batcher.submit(9, 0, Encoding.PNG)

    run(scenario())
