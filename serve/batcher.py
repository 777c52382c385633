"""Dynamic batching for one model version.

A batch closes when it holds ``max_batch_size`` requests, when its oldest request has waited
``max_queue_delay_us``, or when waiting longer would make a queued request miss its deadline,
whichever comes first. A batch is formed only when an engine instance
is free, so requests arriving while every instance is busy are batched together, and the next
batch is collected while the current ones run. With several instances, a free one starts a
batch while another batch runs only once the waiting images are worth ``parallel_batch_us``
of engine time (or half a max batch waits): otherwise the waiting requests join the batch that
starts when the running one ends, and a stuck batch holds them back for a few max batches'
engine time at most. The engine call (latents, inference, post-processing, encoding) runs in a
worker thread. Every request carries its own future, and the batcher completes or fails every
future it takes.

A call with many images (GenerateBatch, Interpolate) queues them as groups of at most
``max_batch_size``, one future per group, and a batch packs whole groups: the per-image
asyncio work (futures, callbacks, a gather) would otherwise cost more of the event loop than
the engine saves. Queue sizes and batch sizes count images.

An engine call still running after ``engine_timeout_s`` fails its batch with DEADLINE_EXCEEDED.
The instance stays out of the pool until its call returns (then it is closed) and, when the
batcher can spawn engines, a fresh instance takes its place at once: a hung engine costs one
batch, not the model. Engine calls run on daemon threads, so a call that never returns
cannot keep the process alive after the drain (a ThreadPoolExecutor's threads are joined at
interpreter exit).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ganserve.serve import imaging, latent
from ganserve.serve import inputs as model_inputs
from ganserve.serve.backends import Engine
from ganserve.serve.config import BatchingConfig
from ganserve.serve.errors import (
    DeadlineExceededError,
    EngineError,
    EngineTimeoutError,
    QueueFullError,
    ShuttingDownError,
)
from ganserve.serve.metrics import ServerMetrics

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class Work:
    """One image to make. ``latent`` overrides the seed's whole draw, z then the noise
    (latent_dim + noise_dim; interpolation frames). ``mix_seed``: style mixing from
    ``mix_layer`` on. Never changed once made; not frozen, because a frozen dataclass's
    ``__init__`` costs five times as much, once per image."""

    seed: int
    label: int | None
    encoding: imaging.Encoding
    truncation: float = 1.0
    latent: np.ndarray | None = None
    mix_seed: int | None = None
    mix_layer: int = 0


@dataclasses.dataclass(slots=True)
class _Request:
    """Images that queue and complete together: one Generate call, or a group of a
    multi-image call. ``single``: the future gets the one image's bytes, not a list."""

    works: Sequence[Work]
    future: asyncio.Future[bytes] | asyncio.Future[list[bytes]]
    enqueued: float  # time.monotonic()
    deadline: float | None  # time.monotonic(), from the client's deadline
    single: bool = False


# A request held back for a running batch to end waits at most this many max batches' engine
# time (as timed at load): under contention a batch takes 2-3x its time alone, so any running
# batch has ended by then unless its engine is stuck.
HOLD_MAX_BATCHES = 4
# gRPC cancels a handler at its deadline by its own clock, which can fire a little before the
# deadline computed here from time_remaining() (2 of 16 missed deadlines were counted as
# cancels): a call ended this close to its deadline is counted as having missed it.
DEADLINE_SLACK_S = 0.01
# A full queue of live calls is rescanned for finished ones at most this long after the last
# scan (`Batcher._drop_dead`): how long a cancelled call's slot may stay taken at worst.
SCAN_BACKOFF_MAX_S = 0.01
# Bounds of the wait a full queue asks refused callers for (gRPC's retry pushback), seconds.
RETRY_AFTER_S = (0.01, 5.0)


def missed_deadline(deadline: float | None, now: float) -> bool:
    """Whether a call that ended at ``now`` (cancelled by gRPC) ended at its deadline."""
    return deadline is not None and now >= deadline - DEADLINE_SLACK_S


def parallel_threshold(config: BatchingConfig, image_s: float | None) -> int:
    """Images that must wait before a batch starts beside a running one: as many as
    ``parallel_batch_us`` of engine time at ``image_s`` seconds each (rounded down, so an image
    slower than that is never held back), at most half a max batch; 1 (any) when the time per
    image is unknown or the setting is 0."""
    if not image_s or image_s <= 0 or not config.parallel_batch_us:
        return 1
    wanted = math.floor(config.parallel_batch_us / 1e6 / image_s)
    return max(1, min(wanted, config.max_batch_size // 2))


class EngineThreads(concurrent.futures.Executor):
    """A pool of up to ``workers`` daemon threads for `run_in_executor`, each started only when
    no thread is idle (as ThreadPoolExecutor does: with spare threads started up front, batches
    wandered over more threads and `GenerateBatch(64)` ran ~15 % slower).

    Unlike ThreadPoolExecutor, nothing joins these threads at interpreter exit: a hung engine
    call must not hold a drained server's process open until the pod is killed."""

    def __init__(self, workers: int, name: str) -> None:
        self._work: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable, tuple] | None]
        self._work = queue.SimpleQueue()
        self._workers, self._name = workers, name
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)  # released by a thread each time it waits for work
        self._lock = threading.Lock()
        self._shut = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        if kwargs:
            raise TypeError("EngineThreads.submit takes positional arguments only")
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new calls after shutdown")
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._work.put((future, fn, args))
            if not self._idle.acquire(timeout=0) and len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args = item
            if future.set_running_or_notify_cancel():  # else it was cancelled while queued
                try:
                    result = fn(*args)
                except BaseException as exc:  # handed to the caller, as ThreadPoolExecutor does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args  # drop the batch before waiting for the next
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; idle threads end, busy ones when their call returns."""
        with self._lock:
            self._shut = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def compute(
    engine: Engine, works: Sequence[Work], preferred: Sequence[int] = ()
) -> tuple[list[bytes | Exception], float, float]:
    """Worker thread: seeds -> model inputs -> engine -> uint8 -> encoded bytes, all that the
    engine timeout bounds. Returns one result per work (an EngineError for an image that came
    out non-finite), the seconds until encoding began, and the seconds encoding took.
    ``preferred``: ascending batch sizes the engine runs at (`run_at_sizes`)."""
    started = time.monotonic()
    m = engine.metadata
    n, d = len(works), m.latent_dim
    draws = np.empty((n, d + m.noise_dim), dtype=np.float32)  # (N, latent_dim + noise_dim)
    psi = np.empty(n, dtype=np.float32)
    mixing = m.style_layers and any(w.mix_seed is not None for w in works)
    mix = np.empty((n, d), dtype=np.float32) if mixing else None
    mix_layer = np.full(n, m.style_layers, dtype=np.int64) if mixing else None
    for i, work in enumerate(works):
        draws[i] = model_inputs.seed_vector(m, work.seed) if work.latent is None else work.latent
        psi[i] = work.truncation
        if mixing:
            if work.mix_seed is None:
                mix[i] = draws[i, :d]
            else:
                mix[i] = latent.seed_to_latent(work.mix_seed, d)
                mix_layer[i] = work.mix_layer
    labels = None
    if m.conditional:
        labels = np.fromiter((w.label for w in works), dtype=np.int64, count=n)
    feeds = model_inputs.assemble(
        m, draws, labels=labels, truncation=psi, mix=mix, mix_layer=mix_layer
    )
    images = run_at_sizes(engine, feeds, preferred)  # (N, C, H, W) float32 in [-1, 1]
    finite = np.isfinite(images).reshape(n, -1).all(axis=1)  # (N,)
    pixels = imaging.to_uint8(images)  # (N, H, W, C) uint8
    encoding_started = time.monotonic()
    results: list[bytes | Exception] = []
    for i, work in enumerate(works):
        if finite[i]:
            results.append(imaging.encode(pixels[i], work.encoding))
        else:
            LOGGER.error(
                "model %s v%s produced non-finite pixels for seed %d", m.name, m.version, work.seed
            )
            results.append(EngineError(f"model {m.name!r} produced an invalid image"))
    return results, encoding_started - started, time.monotonic() - encoding_started


def run_at_sizes(
    engine: Engine, feeds: dict[str, np.ndarray], preferred: Sequence[int]
) -> np.ndarray:
    """Run at the preferred batch sizes (ascending; empty: the batch's own size): pad up to
    the smallest that fits, split above the largest. Each sample's output is independent of
    its batch-mates, so padding rows (copies of the chunk's first row) change nothing and are
    cut off."""
    if not preferred:
        return engine.run(feeds)
    outputs, start, n = [], 0, len(feeds["z"])
    while start < n:
        remaining = n - start
        size = next((p for p in preferred if p >= remaining), preferred[-1])
        take = min(size, remaining)
        index = np.full(size, start)  # padding rows repeat the chunk's first row
        index[:take] = np.arange(start, start + take)
        out = engine.run({name: value[index] for name, value in feeds.items()})
        outputs.append(out[:take])
        start += take
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def batch_seconds(engine: Engine, config: BatchingConfig) -> float:
    """Seconds a full batch (``max_batch_size`` PNG images) takes on a warm, idle ``engine``,
    counted as the engine timeout counts it: latents, the engine and encoding (`compute`)."""
    m = engine.metadata
    works = [
        Work(seed, seed % m.num_classes if m.conditional else None, imaging.Encoding.PNG)
        for seed in range(config.max_batch_size)
    ]
    started = time.monotonic()
    compute(engine, works, sorted(set(config.preferred_batch_sizes)))
    return time.monotonic() - started


class Batcher:
    """Queues requests for one model version and runs them in batches on its engines."""

    def __init__(
        self,
        engines: Sequence[Engine],
        config: BatchingConfig,
        metrics: ServerMetrics,
        spawn: Callable[[], Engine] | None = None,
        image_s: float | None = None,
    ) -> None:
        """``spawn`` builds (and warms) one more engine instance, to replace a hung one.
        ``image_s``: the engine's seconds per image at the max batch (`backends.image_seconds`);
        None starts batches whenever an instance is free."""
        if not engines:
            raise ValueError("a batcher needs at least one engine")
        self._free = list(engines)
        # Seconds for the instances together to work through one queued image: a full queue's
        # refusals tell the caller when to come back (`_retry_after`).
        self._drain_s = (image_s or 0.0) / len(engines)
        self._spawn = spawn
        self._hung = 0  # instances whose call outlived the engine timeout and has not returned
        self._config = config
        self._metadata = m = engines[0].metadata
        self.model, self.version = m.name, m.version
        self._delay = config.max_queue_delay_us / 1e6
        self._preferred = sorted(set(config.preferred_batch_sizes))
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued = 0  # images in the queue
        # The earliest client deadline in the queue (may be of a request already taken: that
        # only closes a batch early). A batch closes in time for it: this long before it.
        self._earliest = math.inf
        self._lead_s = DEADLINE_SLACK_S + config.max_batch_size * (image_s or 0.0)
        self._arrived = asyncio.Event()  # set when the queue grows
        self._instances = asyncio.Semaphore(len(engines))
        self._busy = 0  # batches in the engines
        self.parallel_min = parallel_threshold(config, image_s)
        self._hold_s = HOLD_MAX_BATCHES * config.max_batch_size * (image_s or 0.0)
        # A thread to spare per instance: a hung call keeps its thread while its replacement
        # runs. Beyond that many hung calls, instances come back only when their calls return.
        self._spare_threads = len(engines)
        self._executor = EngineThreads(2 * len(engines), f"engine-{m.name}-{m.version}")
        # Replacements are built (and warmed, which runs the engine) on daemon threads of their
        # own, one per instance so that one hung build does not hold up the others: on
        # asyncio's default pool, a build hung on a wedged device kept the process alive after
        # a drain, since that pool's threads are joined at exit.
        self._spawner = EngineThreads(len(engines), f"engine-spawn-{m.name}-{m.version}")
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = True
        self._closed = False  # close() has ended: engines that come back are closed, not pooled
        self._drain_until = math.inf  # when close() stops waiting for queued work (`hurry`)
        self._progress_at = 0.0  # when a batch last started or ended (or was failed as hung)
        # A full queue is scanned for finished calls (`_drop_dead`); after a scan that freed
        # nothing, not again until 20 times its duration has passed.
        self._scan_after = 0.0
        # Metric children resolved once: labels() is a dict lookup under a lock.
        labels = (m.name, m.version)
        self._m_depth = metrics.queue_depth.labels(*labels)
        # What this batcher has added to the depth gauge. A version reloaded in place has two
        # batchers under one label pair (the old one draining), so each moves the gauge by
        # its own change and the gauge shows their sum; a set() would overwrite the other's.
        self._depth_reported = 0
        self._m_queue_time = metrics.queue_duration.labels(*labels)
        self._m_infer_time = metrics.inference_duration.labels(*labels)
        self._m_encode_time = metrics.encode_duration.labels(*labels)
        self._m_batch = metrics.batch_size.labels(*labels)
        self._m_failures = metrics.batch_failures.labels(*labels)
        self._m_timeouts = metrics.engine_timeouts.labels(*labels)
        self._m_dropped_deadline = metrics.dropped.labels(*labels, "deadline")
        self._m_dropped_cancelled = metrics.dropped.labels(*labels, "cancelled")

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    @property
    def queue_depth(self) -> int:
        """Images waiting."""
        return self._queued

    def _report_depth(self) -> None:
        change = self._queued - self._depth_reported
        if change:
            self._m_depth.inc(change)
            self._depth_reported = self._queued

    def submit(self, work: Work, deadline: float | None = None) -> asyncio.Future[bytes]:
        """Queue one request; the future resolves to the encoded image bytes.

        Raises QueueFullError at once when the queue is full, ShuttingDownError when draining.
        """
        self._admit(1)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._enqueue(_Request((work,), future, time.monotonic(), deadline, single=True))
        return future

    def submit_many(
        self, works: Sequence[Work], deadline: float | None = None
    ) -> list[asyncio.Future[list[bytes]]]:
        """Queue several images, all or none: refused together if they do not all fit. They
        queue in groups of at most max_batch_size; each future resolves to its group's images,
        in order (the groups' futures together give ``works``' images in order)."""
        self._admit(len(works))
        loop = asyncio.get_running_loop()
        now, size = time.monotonic(), self._config.max_batch_size
        futures: list[asyncio.Future[list[bytes]]] = []
        for start in range(0, len(works), size):
            futures.append(loop.create_future())
            self._enqueue(_Request(works[start : start + size], futures[-1], now, deadline))
        return futures

    def _admit(self, count: int) -> None:
        if not self._accepting:
            raise ShuttingDownError("server is draining; retry on another replica")
        limit = self._config.max_queue_size
        if self._queued + count > limit and time.monotonic() >= self._scan_after:
            self._drop_dead()
        if self._queued + count > limit:
            raise QueueFullError(
                f"model {self.model!r} queue is full ({self._queued} of {limit} images "
                f"waiting, {count} more asked); retry with backoff",
                self._retry_after(self._queued + count - limit),
            )

    def _retry_after(self, excess: int) -> float | None:
        """About when ``excess`` more images will have left the queue, spread over 1 to 2
        times that (callers refused together must not all come back together), within
        RETRY_AFTER_S; None when the engine's speed is unknown."""
        if not self._drain_s:
            return None
        low, high = RETRY_AFTER_S
        return min(high, max(low, excess * self._drain_s * random.uniform(1.0, 2.0)))

    def _drop_dead(self) -> None:
        """Free the slots of queued calls already over (cancelled, or failed by another of
        their groups), so that live calls are not refused for them. Only when the queue looks
        full: otherwise the next batch drops them (`_take`), at no cost per request. A scan
        costs the whole queue (0.4 ms at 4,096 images): under overload, one per refused call
        cost more than serving it, so after a scan that freed nothing the next waits 20 times
        as long as that one took, at most ``SCAN_BACKOFF_MAX_S`` (a scan stretched by the
        scheduler must not keep dead slots for long)."""
        started = time.monotonic()
        live = collections.deque(r for r in self._queue if not r.future.done())
        if len(live) == len(self._queue):
            took = time.monotonic() - started
            self._scan_after = started + min(20 * took, SCAN_BACKOFF_MAX_S)
            return
        for request in self._queue:
            if request.future.done():
                self._dropped(request, started).inc(len(request.works))
        self._queue = live
        self._queued = sum(len(r.works) for r in live)
        self._report_depth()

    def _dropped(self, request: _Request, now: float):
        """The dropped counter for a request whose handler is gone: by deadline or cancel."""
        if missed_deadline(request.deadline, now):
            return self._m_dropped_deadline
        return self._m_dropped_cancelled

    def _enqueue(self, request: _Request) -> None:
        self._queue.append(request)
        if request.deadline is not None and request.deadline < self._earliest:
            self._earliest = request.deadline
        self._queued += len(request.works)
        self._report_depth()
        self._arrived.set()

    async def _loop(self) -> None:
        while True:
            await self._instances.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._instances.release()
                raise
            if not batch:
                self._instances.release()
                continue
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Request]:
        """Wait for work, then close a batch at max size, the oldest request's delay, or in
        time for the earliest deadline waiting."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        if self._busy and self._queued < self.parallel_min:
            await self._hold_back()
            if not self._queue:  # close() emptied the queue meanwhile
                return []
        # No extra yield here: handlers that became ready together ran before this wake-up,
        # and under load the queue fills while the engines are busy.
        max_size = self._config.max_batch_size
        delay_ends = self._queue[0].enqueued + self._delay
        while self._queued < max_size and self._accepting:  # draining: nothing more will come
            # A request that arrived meanwhile may have the earliest deadline yet.
            remaining = min(delay_ends, self._earliest - self._lead_s) - time.monotonic()
            if remaining <= 0:
                break
            if not await self._arrived_within(remaining):
                break
        return self._take(max_size)

    async def _hold_back(self) -> None:
        """While another batch runs and fewer than ``parallel_min`` images wait, wait for that
        batch to end or for more images, but no longer than ``HOLD_MAX_BATCHES`` max batches
        take in the engine (a slow or hung batch on one instance must not stall the free one),
        and not past the time a batch must close for the earliest deadline waiting."""
        hold_until = self._queue[0].enqueued + self._hold_s
        while self._busy and self._queued < self.parallel_min and self._accepting:
            remaining = min(hold_until, self._earliest - self._lead_s) - time.monotonic()
            if remaining <= 0:
                return
            if not await self._arrived_within(remaining):  # arrivals and batches ending
                return

    async def _arrived_within(self, seconds: float) -> bool:
        """Wait for an arrival (or a batch's end) for at most ``seconds``. asyncio.timeout, not
        wait_for: on Python 3.11 wait_for returns normally when the wait finished in the same
        moment as a cancellation, and close() would then wait forever for this loop."""
        self._arrived.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._arrived.wait()
        except TimeoutError:
            return False
        return True

    def _take(self, max_size: int) -> list[_Request]:
        """Pop live requests up to max_size images, in order; drop cancelled and expired ones
        on the way. A group is never split, and none is larger than max_size."""
        batch: list[_Request] = []
        images, now = 0, time.monotonic()
        while self._queue and images + len(self._queue[0].works) <= max_size:
            request = self._queue.popleft()
            count = len(request.works)
            self._queued -= count
            if request.future.done():  # the handler is gone: gRPC cancels it at the deadline
                self._dropped(request, now).inc(count)
            elif request.deadline is not None and request.deadline <= now:
                self._m_dropped_deadline.inc(count)
                request.future.set_exception(
                    DeadlineExceededError("deadline passed while the request was queued")
                )
            else:
                batch.append(request)
                images += count
        self._report_depth()
        if self._earliest != math.inf:  # else nothing queued has a deadline: nothing to redo
            # Once per batch, over what still waits (at most a queue's worth of requests).
            self._earliest = min(
                (r.deadline for r in self._queue if r.deadline is not None), default=math.inf
            )
        return batch

    async def _execute(self, batch: list[_Request]) -> None:
        started = self._progress_at = time.monotonic()
        for request in batch:
            self._m_queue_time.observe(started - request.enqueued)
        self._m_batch.observe(sum(len(request.works) for request in batch))
        engine = self._free.pop()
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self._compute, engine, batch)
        hung = False
        try:
            # asyncio.wait neither cancels the call at the timeout nor mistakes an engine that
            # raises TimeoutError itself for a hung one.
            done, _ = await asyncio.wait((call,), timeout=self._config.engine_timeout_s)
            if not done:
                hung = True
                self._on_hang(engine, batch, call)
                return
            results = call.result()
        except Exception:
            LOGGER.exception(
                "batch of %d images for model %s v%s failed",
                sum(len(request.works) for request in batch),
                self.model,
                self.version,
            )
            self._m_failures.inc()
            error = EngineError(f"inference failed for model {self.model!r}; see the server log")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        else:
            start = 0
            for request in batch:
                mine = results[start : start + len(request.works)]
                start += len(request.works)
                if request.future.done():
                    continue
                failed = next((r for r in mine if isinstance(r, Exception)), None)
                if failed is not None:  # one bad image fails its whole call
                    request.future.set_exception(failed)
                else:
                    request.future.set_result(mine[0] if request.single else mine)
        finally:
            self._progress_at = time.monotonic()
            if not hung:  # a hung instance comes back (or is replaced) via _on_hang
                self._give_back(engine)
            self._busy -= 1
            self._arrived.set()  # requests held back for this batch to end may go now

    def _on_hang(
        self, engine: Engine, batch: list[_Request], call: asyncio.Future[list[bytes | Exception]]
    ) -> None:
        """Fail a batch whose engine call outlived the timeout, and keep the pool whole."""
        timeout = self._config.engine_timeout_s
        LOGGER.error(
            "engine of model %s v%s still running a batch of %d images after %.2fs; failing "
            "the batch and replacing the instance",
            self.model,
            self.version,
            sum(len(request.works) for request in batch),
            timeout,
        )
        self._m_failures.inc()
        self._m_timeouts.inc()
        error = EngineTimeoutError(
            f"model {self.model!r} did not finish the batch within the engine timeout "
            f"({timeout:g}s); retry"
        )
        for request in batch:
            if not request.future.done():
                request.future.set_exception(error)
        self._hung += 1
        replacement = self._replace()

        def settle(task: asyncio.Future) -> None:
            if not task.cancelled() and task.result():
                engine.close()  # its replacement took its place in the pool
            else:  # no replacement after all: the engine that came back serves again
                self._give_back(engine)

        def returned(_: asyncio.Future) -> None:  # the hung call came back at last
            self._hung -= 1
            LOGGER.warning("the hung engine of model %s v%s returned", self.model, self.version)
            if replacement is None:
                self._give_back(engine)
            elif replacement.done():
                settle(replacement)
            else:  # still being built: its outcome decides
                replacement.add_done_callback(settle)

        call.add_done_callback(returned)

    def _give_back(self, engine: Engine) -> None:
        """Return an engine to the pool; once close() has ended, close it instead."""
        if self._closed:
            engine.close()
        else:
            self._free.append(engine)
            self._instances.release()

    def _replace(self) -> asyncio.Task[bool] | None:
        """Start building a fresh engine instance in place of a hung one; None when none can be
        made (no spawn function, or every spare engine thread already holds a hung call)."""
        if self._spawn is None or self._closed or self._hung > self._spare_threads:
            return None
        task = asyncio.get_running_loop().create_task(self._add_instance())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _add_instance(self) -> bool:
        try:
            engine = await asyncio.get_running_loop().run_in_executor(self._spawner, self._spawn)
        except Exception:
            LOGGER.exception(
                "could not replace the hung engine of %s v%s", self.model, self.version
            )
            return False
        self._give_back(engine)
        LOGGER.info("replaced the hung engine of model %s v%s", self.model, self.version)
        return True

    def _compute(self, engine: Engine, batch: list[_Request]) -> list[bytes | Exception]:
        """Worker thread: the batch's images, one result per image (`compute`)."""
        works = [work for request in batch for work in request.works]
        results, infer_s, encode_s = compute(engine, works, self._preferred)
        self._m_infer_time.observe(infer_s)
        self._m_encode_time.observe(encode_s)
        return results

    async def close(self, grace_s: float, *, stall_s: float = math.inf) -> None:
        """Stop accepting, let queued and running batches finish within grace_s (math.inf: all
        of them; `hurry` can bring that forward meanwhile), fail the rest with
        ShuttingDownError. ``stall_s``: stop waiting sooner once no batch has started or ended
        for that long (no instance came back from a hung call, and no replacement was built in
        that time, say), so a drain without a time limit still ends."""
        self._accepting = False
        self._arrived.set()  # a batch waiting to fill closes now: nothing more will come
        self.hurry(grace_s)
        self._progress_at = time.monotonic()
        stalled = False
        while (self._queue or self._running) and time.monotonic() < self._drain_until:
            if time.monotonic() - self._progress_at > stall_s:
                stalled = True
                break
            await asyncio.sleep(0.01)
        if self._queue:
            if stalled:
                why = f"no batch started or ended for {stall_s:g} s"
                error = ShuttingDownError(
                    f"model {self.model!r} version {self.version} was retired by a reload and "
                    "its engines stopped answering; retry (the new version serves)"
                )
            else:
                why, error = "drain grace ran out", ShuttingDownError("server shut down")
            LOGGER.warning(
                "%s: failing %d queued images of model %s v%s",
                why,
                self._queued,
                self.model,
                self.version,
            )
            while self._queue:
                request = self._queue.popleft()
                if not request.future.done():
                    request.future.set_exception(error)
            self._queued = 0
            self._report_depth()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._running and not stalled:
            await asyncio.wait(
                self._running, timeout=max(0.0, self._drain_until - time.monotonic())
            )
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._spawner.shutdown(wait=False, cancel_futures=True)  # no build starts after close
        # From now on an engine that comes back (a late batch, a hung call, a replacement) is
        # closed by _give_back instead of pooled.
        self._closed = True
        for engine in self._free:
            engine.close()
        self._free.clear()

    def hurry(self, grace_s: float) -> None:
        """Bring a drain forward: a close() under way (or to come) waits for queued work at
        most ``grace_s`` from now, if that is sooner than it would have."""
        self._drain_until = min(self._drain_until, time.monotonic() + grace_s)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running
