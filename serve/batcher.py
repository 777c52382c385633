"""Dynamic batching for one model version.

A batch closes when it holds ``max_batch_size`` requests or when its oldest request has waited
``max_queue_delay_us``, whichever comes first. Batches are formed only when an engine instance
is free, so requests that arrive while the engine is busy are batched together. The engine call
(latents, inference, post-processing, encoding) runs in a worker thread. Every request carries
its own future, and the batcher completes or fails every future it takes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import time

import numpy as np

from ganserve.serve import imaging, latent
from ganserve.serve.config import BatchingConfig
from ganserve.serve.engine import OnnxEngine
from ganserve.serve.errors import (
    DeadlineExceededError,
    EngineError,
    QueueFullError,
    ShuttingDownError,
)
from ganserve.serve.metrics import ServerMetrics

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class _Request:
    seed: int
    label: int | None
    encoding: imaging.Encoding
    future: asyncio.Future[bytes]
    enqueued: float  # time.monotonic()
    deadline: float | None  # time.monotonic(), from the client's deadline


class Batcher:
    """Queues requests for one engine and runs them in batches."""

    def __init__(
        self,
        engine: OnnxEngine,
        config: BatchingConfig,
        metrics: ServerMetrics,
        *,
        model: str,
    ) -> None:
        self._engine = engine
        self._config = config
        self._metadata = engine.metadata
        self._model = model
        self._delay = config.max_queue_delay_us / 1e6
        self._queue: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()  # set when the queue grows
        self._instances = asyncio.Semaphore(config.instances)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.instances, thread_name_prefix=f"engine-{model}"
        )
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = True
        # Metric children resolved once: labels() is a dict lookup under a lock.
        self._m_depth = metrics.queue_depth.labels(model)
        self._m_queue_time = metrics.queue_duration.labels(model)
        self._m_infer_time = metrics.inference_duration.labels(model)
        self._m_batch = metrics.batch_size.labels(model)
        self._m_failures = metrics.batch_failures.labels(model)
        self._m_dropped_deadline = metrics.dropped.labels(model, "deadline")
        self._m_dropped_cancelled = metrics.dropped.labels(model, "cancelled")

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(
        self,
        seed: int,
        label: int | None,
        encoding: imaging.Encoding,
        deadline: float | None = None,
    ) -> asyncio.Future[bytes]:
        """Queue one request; the future resolves to the encoded image bytes.

        Raises QueueFullError at once when the queue is full, ShuttingDownError when draining.
        """
        if not self._accepting:
            raise ShuttingDownError("server is draining; retry on another replica")
        if len(self._queue) >= self._config.max_queue_size:
            raise QueueFullError(
                f"model {self._model!r} queue is full ({self._config.max_queue_size} requests "
                "waiting); retry with backoff"
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(seed, label, encoding, future, time.monotonic(), deadline))
        self._m_depth.set(len(self._queue))
        self._arrived.set()
        return future

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
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Request]:
        """Wait for work, then close a batch at max size or the oldest request's delay."""
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        # Let handlers that are ready in this loop iteration enqueue before closing.
        await asyncio.sleep(0)
        max_size = self._config.max_batch_size
        close_at = self._queue[0].enqueued + self._delay
        while len(self._queue) < max_size:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return self._take(max_size)

    def _take(self, max_size: int) -> list[_Request]:
        """Pop up to max_size live requests; drop cancelled and expired ones on the way."""
        batch: list[_Request] = []
        now = time.monotonic()
        while self._queue and len(batch) < max_size:
            request = self._queue.popleft()
            if request.future.done():  # the client cancelled; the handler is gone
                self._m_dropped_cancelled.inc()
            elif request.deadline is not None and request.deadline <= now:
                self._m_dropped_deadline.inc()
                request.future.set_exception(
                    DeadlineExceededError("deadline passed while the request was queued")
                )
            else:
                batch.append(request)
        self._m_depth.set(len(self._queue))
        return batch

    async def _execute(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        for request in batch:
            self._m_queue_time.observe(started - request.enqueued)
        self._m_batch.observe(len(batch))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._compute, batch)
        except Exception:
            LOGGER.exception("batch of %d for model %r failed", len(batch), self._model)
            self._m_failures.inc()
            error = EngineError(f"inference failed for model {self._model!r}; see the server log")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        else:
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)
        finally:
            self._m_infer_time.observe(time.monotonic() - started)
            self._instances.release()

    def _compute(self, batch: list[_Request]) -> list[bytes | Exception]:
        """Worker thread: seeds -> latents -> engine -> uint8 -> encoded bytes."""
        m = self._metadata
        z = latent.seeds_to_latents([r.seed for r in batch], m.latent_dim)  # (N, latent_dim)
        labels = None
        if m.conditional:
            labels = np.fromiter((r.label for r in batch), dtype=np.int64, count=len(batch))
        images = self._engine.run(z, labels)  # (N, C, H, W) float32 in [-1, 1]
        finite = np.isfinite(images).reshape(len(batch), -1).all(axis=1)  # (N,)
        pixels = imaging.to_uint8(images)  # (N, H, W, C) uint8
        results: list[bytes | Exception] = []
        for i, request in enumerate(batch):
            if not finite[i]:
                LOGGER.error(
                    "model %r produced non-finite pixels for seed %d", self._model, request.seed
                )
                results.append(EngineError(f"model {self._model!r} produced an invalid image"))
            else:
                results.append(imaging.encode(pixels[i], request.encoding))
        return results

    async def close(self, grace_s: float) -> None:
        """Stop accepting, let queued and running batches finish within grace_s, cancel the rest."""
        self._accepting = False
        deadline = time.monotonic() + grace_s
        while (self._queue or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._queue:
            LOGGER.warning("drain grace ran out: failing %d queued requests", len(self._queue))
            while self._queue:
                request = self._queue.popleft()
                if not request.future.done():
                    request.future.set_exception(ShuttingDownError("server shut down"))
            self._m_depth.set(0)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._running:
            await asyncio.wait(self._running, timeout=max(0.0, deadline - time.monotonic()))
        self._executor.shutdown(wait=False, cancel_futures=True)
