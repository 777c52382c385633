"""Races in the batcher and in reloads, each found by a review and reproduced here with gated
fake engines: a hung engine whose replacement fails, engines that come back after close(), a
cancelled call holding queue slots, close() racing a batch's end, a reload retiring versions
before routing past them, and a drain that begins while a reload loads several versions."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
import time

import numpy as np
import pytest

from conftest import BUNDLED_REPOSITORY
from ganserve.serve import repository
from ganserve.serve.backends import Backend
from ganserve.serve.batcher import Batcher, EngineThreads, Work
from ganserve.serve.config import BatchingConfig, ModelConfig, ServerConfig
from ganserve.serve.errors import (
    EngineError,
    EngineTimeoutError,
    QueueFullError,
    ShuttingDownError,
)
from ganserve.serve.imaging import Encoding
from ganserve.serve.metrics import ServerMetrics
from ganserve.serve.models import ModelManager

META = repository.latest(BUNDLED_REPOSITORY, "digits").metadata
SRC = BUNDLED_REPOSITORY / "digits"


class FakeEngine:
    """Output depends only on each row's own inputs (batch invariant). Can be gated."""

    def __init__(self, name: str = "e", gated: bool = False, delay: float = 0.0) -> None:
        self.name = name
        self.metadata = META
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.delay = delay
        self.closed = 0
        self.batches: list[int] = []

    def run(self, feeds):
        self.batches.append(len(feeds["z"]))
        self.started.set()
        self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        z = feeds["z"]
        n = len(z)
        img = np.tanh(np.repeat(z[:, :1], 32 * 32, axis=1) + feeds["label"][:, None] * 0.01)
        return img.reshape(n, 1, 32, 32).astype(np.float32)

    def close(self) -> None:
        self.closed += 1

    def __repr__(self) -> str:
        return f"FakeEngine({self.name})"


def make(engines, spawn=None, image_s=None, **batching) -> Batcher:
    config = BatchingConfig(**batching)
    return Batcher(
        list(engines),
        config,
        ServerMetrics(max_batch_size=config.max_batch_size),
        spawn=spawn,
        image_s=image_s,
    )


def work(seed: int) -> Work:
    return Work(seed, seed % 10, Encoding.RAW_UINT8)


async def until(pred, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def test_a_hung_engine_serves_again_when_its_replacement_fails_later():
    hung = FakeEngine("original", gated=True)
    spawn_may_finish = threading.Event()
    spawn_calls = []

    def spawn():
        spawn_calls.append(1)
        spawn_may_finish.wait(10)
        raise RuntimeError("GPU out of memory while building the replacement")

    async def scenario():
        b = make([hung], spawn=spawn, engine_timeout_s=0.2, max_batch_size=4)
        b.start()
        with pytest.raises(EngineTimeoutError):
            await b.submit(work(1))
        # The hung call returns (engine healthy again) while the replacement is still building.
        hung.gate.set()
        await until(lambda: b._hung == 0, "hung call to return")
        spawn_may_finish.set()  # ...and then the replacement fails
        await until(lambda: not b._running, "replacement task to end")
        state = dict(
            free=list(b._free),
            permits=b._instances._value,
            closed=hung.closed,
            spawns=len(spawn_calls),
        )
        # A perfectly healthy engine existed; a new request should be served by it.
        fut = b.submit(work(2))
        done, _ = await asyncio.wait({fut}, timeout=2)
        outcome = "served" if done else "HANGS (no instance left)"
        if not done:
            fut.cancel()
        await b.close(0)
        return state, outcome

    state, outcome = asyncio.run(scenario())
    assert state["spawns"] == 1
    assert outcome == "served", (state, outcome)


def test_an_engine_whose_batch_outlives_close_is_closed_when_it_ends():
    e = FakeEngine("busy", gated=True)

    async def scenario():
        b = make([e], max_batch_size=4)
        b.start()
        fut = b.submit(work(1))
        assert await asyncio.to_thread(e.started.wait, 5)
        await b.close(0.1)  # retire/shutdown: grace runs out while the batch runs
        closed_at_close = e.closed
        e.gate.set()
        await fut  # the batch still completes...
        await asyncio.sleep(0.05)
        return closed_at_close, e.closed, list(b._free)

    at_close, after, free = asyncio.run(scenario())
    assert at_close == 0  # not while its batch still runs
    assert after == 1, f"engine never closed; it went back into a dead batcher's pool: {free}"


def test_a_hung_engine_returning_after_close_is_closed():
    e = FakeEngine("hung", gated=True)

    async def scenario():
        b = make([e], engine_timeout_s=0.1, max_batch_size=4)  # no spawn: no replacement
        b.start()
        fut = b.submit(work(1))
        await asyncio.gather(fut, return_exceptions=True)
        await b.close(0.05)
        e.gate.set()
        await until(lambda: b._hung == 0, "hung call returns")
        return e.closed, list(b._free)

    closed, free = asyncio.run(scenario())
    assert closed == 1, f"hung engine never closed after close(): {free}"


def test_a_replacement_finished_after_close_is_closed():
    hung = FakeEngine("hung", gated=True)
    built = []
    slow_build = threading.Event()

    def spawn():
        slow_build.wait(10)
        eng = FakeEngine("replacement")
        built.append(eng)
        return eng

    async def scenario():
        b = make([hung], spawn=spawn, engine_timeout_s=0.1, max_batch_size=4)
        b.start()
        await asyncio.gather(b.submit(work(1)), return_exceptions=True)
        await b.close(0.05)
        slow_build.set()
        await until(lambda: built, "replacement built")
        await asyncio.sleep(0.05)
        hung.gate.set()
        await until(lambda: b._hung == 0, "hung returns")
        return built[0].closed, hung.closed, list(b._free)

    repl_closed, hung_closed, free = asyncio.run(scenario())
    assert hung_closed == 1
    assert repl_closed == 1, f"replacement engine built after close() never closed: {free}"


async def generate_batch_like(b, works):
    """What GeneratorServicer._images does for a multi-image call."""
    groups = b.submit_many(works)
    try:
        return await asyncio.gather(*groups)
    finally:
        for g in groups:
            g.cancel()


async def _full_queue_of_a_cancelled_call(e: FakeEngine):
    """A batcher (queue of 8) whose engine holds one image, then a GenerateBatch-like call of
    8 images queued behind it and cancelled: the queue's slots are all held by a dead call.
    Returns the batcher and the held image's future."""
    b = make([e], max_batch_size=4, max_queue_size=8)
    b.start()
    blocker = b.submit(work(0))
    assert await asyncio.to_thread(e.started.wait, 5)
    call = asyncio.create_task(generate_batch_like(b, [work(s) for s in range(1, 9)]))
    await asyncio.sleep(0.01)
    call.cancel()  # client cancels (or its deadline passes: gRPC cancels the handler)
    await asyncio.gather(call, return_exceptions=True)
    return b, blocker


def test_a_cancelled_call_never_makes_a_live_one_be_refused():
    e = FakeEngine(gated=True)

    async def scenario():
        b, blocker = await _full_queue_of_a_cancelled_call(e)
        await asyncio.sleep(0.2)
        depth = b.queue_depth
        live = sum(not r.future.done() for r in b._queue)
        refused = None
        try:
            b.submit(work(99))
        except QueueFullError as exc:
            refused = str(exc)
        e.gate.set()
        await blocker
        return depth, live, refused

    depth, live, refused = asyncio.run(scenario())
    assert refused is None, f"refused with {live} live images queued (depth {depth}): {refused}"


def test_depth_is_exact_again_once_a_batch_forms():
    """What holds: the dead entries are dropped at the next _take and the depth returns to 0."""
    e = FakeEngine(gated=True)

    async def scenario():
        b, blocker = await _full_queue_of_a_cancelled_call(e)
        e.gate.set()
        await blocker
        await asyncio.sleep(0.05)
        depth = b.queue_depth
        ok = await b.submit(work(99))
        await b.close(1)
        return depth, e.batches, ok

    depth, batches, ok = asyncio.run(scenario())
    assert depth == 0 and batches == [1, 1] and ok


def _scenario(trigger):
    a, b_ = FakeEngine("a", gated=True), FakeEngine("b", gated=True)

    async def scenario():
        # instances=2 with a delay window: the free instance waits in _collect's wait_for
        b = make([a, b_], max_batch_size=2, max_queue_delay_us=5_000_000, parallel_batch_us=0)
        b.start()
        _first = b.submit_many([work(1), work(2)])  # full batch: starts at once on one instance
        await until(lambda: a.started.is_set() or b_.started.is_set(), "batch 1")
        _lone = b.submit(work(3))  # the loop now sits in wait_for(_arrived.wait(), ~5 s)
        await asyncio.sleep(0.05)
        closing = await trigger(b, a, b_)
        done, _ = await asyncio.wait({closing}, timeout=3)
        loop_alive = not b._loop_task.done()
        a.gate.set()
        b_.gate.set()
        if not done:  # our own clean-up, so the test process exits
            b._loop_task.cancel()
        return bool(done), loop_alive

    return asyncio.run(scenario())


def test_close_started_as_a_batch_ends_returns():
    """Natural batch end: the running batch's engine returns; close(0) is started from the
    batch task's done callback (i.e. right after the batch ended)."""

    async def trigger(b, a, b_):
        (task,) = b._running
        fut = asyncio.get_running_loop().create_future()
        task.add_done_callback(lambda _: fut.set_result(asyncio.ensure_future(b.close(0))))
        (a if a.started.is_set() else b_).gate.set()
        return await fut

    closed, loop_alive = _scenario(trigger)
    assert closed, "close() never returned: the batcher loop swallowed its cancellation"
    assert not loop_alive


def test_close_not_near_a_batch_end_is_fine():
    """Control: the same state, but close() well away from any batch end returns at once."""

    async def trigger(b, a, b_):
        return asyncio.ensure_future(b.close(0))

    closed, loop_alive = _scenario(trigger)
    assert closed and not loop_alive


async def two_changed_versions(tmp_path) -> ModelManager:
    """A started manager pinned to versions 1 and 2, whose files a deploy has just rewritten:
    the next reload loads both again."""
    repo = tmp_path / "models"
    for v in ("1", "2"):
        (repo / "digits" / v).mkdir(parents=True)
        for name in ("model.onnx", "metadata.json"):
            shutil.copy(SRC / v / name, repo / "digits" / v / name)
    config = ServerConfig(
        model_repository=repo,
        port=0,
        metrics_port=-1,
        warmup=False,
        intra_op_threads=1,
        models={"digits": ModelConfig(backend=Backend.ONNXRUNTIME_CPU, versions=(1, 2))},
    )
    manager = ModelManager(config, ServerMetrics(max_batch_size=64))
    await manager.start()
    for v in ("1", "2"):
        p = repo / "digits" / v / "metadata.json"
        os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    return manager


def test_a_reload_of_two_versions_refuses_no_request(tmp_path):
    async def scenario():
        manager = await two_changed_versions(tmp_path)
        outcomes = {"ok": 0, "refused": 0}
        stop = asyncio.Event()

        async def client():  # Generate calls for version 1 throughout the reload
            while not stop.is_set():
                served = manager.resolve("digits", "1")  # what the servicer does
                try:
                    await served.batcher.submit(work(7))
                    outcomes["ok"] += 1
                except ShuttingDownError:
                    outcomes["refused"] += 1
                await asyncio.sleep(0.002)

        load = manager._load

        def slow_load(name, version):  # a real model takes seconds to load and warm up
            if version == "2":
                time.sleep(0.5)
            return load(name, version)

        manager._load = slow_load
        task = asyncio.create_task(client())
        changes = await manager.reload()
        stop.set()
        await task
        await manager.close(1)
        return changes, outcomes

    changes, outcomes = asyncio.run(scenario())
    assert {(c.version, c.state.name) for c in changes} == {("1", "READY"), ("2", "READY")}
    assert outcomes["refused"] == 0, f"requests refused during the reload: {outcomes}"


def test_a_shutdown_cuts_short_the_drain_of_a_retired_version(tmp_path):
    """A retired version drains with no time limit (it finishes what it accepted); a
    shutdown must still end within its grace, failing what the retired version still holds."""

    async def scenario():
        manager = await two_changed_versions(tmp_path)
        old = manager.resolve("digits", "1").batcher
        gate = threading.Event()
        for engine in old._free:  # every instance holds its batch until the gate opens
            run = engine.run
            engine.run = lambda feeds, run=run: gate.wait(30) and run(feeds)
        size = old._config.max_batch_size
        futures = old.submit_many([work(s) for s in range(size * (len(old._free) + 1))])
        while old.queue_depth != size:  # the instances took a batch each; one group waits
            await asyncio.sleep(0.01)
        await manager.reload()  # retires the old version 1, its queue still full
        await asyncio.sleep(0.2)
        assert manager._retiring and not futures[-1].done()
        await asyncio.wait_for(manager.close(0.1), 10)
        try:  # failed by the shutdown, not left to wait for a drain that never ends
            with pytest.raises(ShuttingDownError):
                await asyncio.wait_for(futures[-1], 5)
        finally:
            gate.set()
        await asyncio.gather(*futures, return_exceptions=True)

    asyncio.run(scenario())


def test_a_drain_during_a_multi_version_reload_closes_what_it_loaded(tmp_path):
    async def scenario():
        manager = await two_changed_versions(tmp_path)
        loaded = []
        load, loop = manager._load, asyncio.get_running_loop()

        def load_and_drain(name, version):
            served = load(name, version)
            loaded.append(served)
            if version == "2":  # SIGTERM arrives while version 2 loads
                loop.call_soon_threadsafe(manager.stop_accepting_and_drain, 0)
            return served

        manager._load = load_and_drain
        changes = await manager.reload()
        await manager.close(0)
        await asyncio.sleep(0.1)
        new_v1 = loaded[0].batcher
        return changes, new_v1._loop_task.done(), new_v1._accepting

    changes, loop_done, accepting = asyncio.run(scenario())
    assert [c.message for c in changes] == ["the server is draining; nothing was reloaded"]
    assert loop_done and not accepting, "the v1 batcher loaded in this reload was never closed"


def test_engine_threads_return_results_and_errors_and_cancel_what_waits_at_shutdown() -> None:
    """The batcher's executor: daemon threads (a hung engine call cannot hold the process open
    at exit), results and exceptions handed back, queued calls cancelled by a shutdown."""
    pool = EngineThreads(1, "engine-test")
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    deadline = time.monotonic() + 10
    while not running.running():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.005)
    waiting = pool.submit(lambda: 1)
    pool.shutdown(wait=False, cancel_futures=True)
    assert waiting.cancelled() and not running.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: 1)
    gate.set()
    assert running.result(10) is True  # a busy thread finishes its call

    pool = EngineThreads(2, "engine-test")
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda x: 1 / x, 0).result(10)
    assert pool.submit(lambda x: x + 1, 1).result(10) == 2
    assert all(thread.daemon for thread in pool._threads) and 1 <= len(pool._threads) <= 2
    pool.shutdown()
    assert not any(thread.is_alive() for thread in pool._threads)


def test_an_engine_that_raises_timeout_error_itself_fails_its_batch_and_is_not_replaced():
    """A backend's own TimeoutError (a socket, a driver call) is a failed batch, INTERNAL,
    not a hang: the instance is not taken out of the pool nor replaced."""

    class TimingOut(FakeEngine):
        def run(self, feeds):
            raise TimeoutError("the device did not answer")

    engine, spawned = TimingOut(), []

    async def scenario():
        b = make([engine], spawn=lambda: spawned.append(1), engine_timeout_s=30, max_batch_size=4)
        b.start()
        with pytest.raises(EngineError, match="inference failed"):
            await b.submit(work(1))
        assert b._free == [engine] and not b._hung
        await b.close(1)

    asyncio.run(scenario())
    assert spawned == []


def test_requests_still_queued_when_the_drain_grace_runs_out_are_failed_not_lost():
    """close(grace) with the engine busy past the grace: the queued calls get a clear
    'server shut down' error, never an unresolved future that hangs until the deadline."""
    engine = FakeEngine(gated=True)

    async def scenario():
        b = make([engine], max_batch_size=1)
        b.start()
        running = b.submit(work(1))
        await until(engine.started.is_set, "the first batch to start")
        queued = [b.submit(work(seed)) for seed in (2, 3)]
        await b.close(0.05)
        for future in queued:
            assert future.done(), "a queued request was left unresolved"
            with pytest.raises(ShuttingDownError, match="server shut down"):
                future.result()
        engine.gate.set()
        await asyncio.wait_for(running, 10)  # the batch in the engine still completes

    asyncio.run(scenario())


@pytest.mark.parametrize("stall_s", [math.inf, 0.3], ids=["shutdown", "retired by a reload"])
def test_a_drain_runs_what_waits_at_once_instead_of_waiting_for_the_batch_to_fill(stall_s):
    """A queue delay longer than the drain grace (or than a retired version's stall bound)
    failed a queued call on an idle engine: the batch waited to fill though nothing more
    could come, and a reload reported a healthy engine as 'stopped answering'."""
    engine = FakeEngine()

    async def scenario():
        b = make([engine], max_batch_size=8, max_queue_delay_us=10_000_000)
        b.start()
        queued = b.submit(work(1))
        await asyncio.sleep(0.05)  # the loop waits for the batch to fill
        await b.close(0.2 if stall_s == math.inf else math.inf, stall_s=stall_s)
        return await asyncio.wait_for(queued, 1)

    assert asyncio.run(scenario())
    assert engine.batches == [1]


def test_a_full_queue_of_live_calls_is_not_rescanned_for_every_refused_call(monkeypatch):
    """Each refused call scanned the whole queue for finished calls: 0.4 ms apiece at the
    default 4,096 images, more than serving a call costs."""
    engine = FakeEngine(gated=True)
    scans = []

    async def scenario():
        b = make([engine], max_batch_size=1, max_queue_size=4096)
        b.start()
        first = b.submit(work(0))
        await until(engine.started.is_set, "the first batch to start")
        queued = [b.submit(work(seed)) for seed in range(1, 4097)]
        scan = b._drop_dead
        monkeypatch.setattr(b, "_drop_dead", lambda: (scans.append(1), scan())[1])
        refused = 0
        for seed in range(200):
            try:
                b.submit(work(5000 + seed))
            except QueueFullError:
                refused += 1
        queued[0].cancel()  # a slot frees: the next scan, when due, finds it
        await until(lambda: time.monotonic() >= b._scan_after, "the next scan to be due")
        b.submit(work(9999))  # not refused
        engine.gate.set()
        await first
        await b.close(0)
        return refused

    assert asyncio.run(scenario()) == 200
    assert 1 <= len(scans) < 50, f"{len(scans)} scans for 200 refused calls"
