"""`gan-bench soak` and `gan-bench overload`: the load runs behind docs/reliability.md.

soak: a fixed number of `Generate` calls at fixed concurrency against a real server process.
Every call must end OK or with a documented status (RESOURCE_EXHAUSTED, UNAVAILABLE); none may
run into its deadline (a hang); the server's resident memory after the run must stay within
a budget of its resident memory after the warm-up calls.

overload: first the server's capacity at a concurrency its queue holds, then arrivals at a
multiple of that capacity (open loop, as from many independent clients). Excess calls must be
shed with RESOURCE_EXHAUSTED, fast; the queue depth seen on /metrics must never pass the queue
size; goodput is reported against the capacity.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import pathlib
import threading
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np

from ganserve.bench import targets
from ganserve.bench.load import server_figures_between
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc

# Statuses the API documents for load: shed (queue full) and draining. Anything else fails.
DOCUMENTED = frozenset({"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})


@dataclasses.dataclass
class Outcome:
    """The calls of one run: status counts and latencies (seconds) by status."""

    seconds: float = 0.0
    latency: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )

    @property
    def codes(self) -> dict[str, int]:
        return {code: len(values) for code, values in sorted(self.latency.items())}

    @property
    def calls(self) -> int:
        return sum(len(values) for values in self.latency.values())

    def rate(self, code: str = "OK") -> float:
        return len(self.latency.get(code, ())) / self.seconds if self.seconds else 0.0

    def ms(self, code: str, q: float) -> float:
        values = self.latency.get(code)
        return float(np.percentile(values, q) * 1e3) if values else float("nan")


async def _timed(call: Callable[[int], Awaitable[object]], i: int, outcome: Outcome) -> None:
    """Make call(i); file its latency under its status."""
    started = time.perf_counter()
    try:
        await call(i)
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    outcome.latency[code].append(time.perf_counter() - started)


async def drive(
    call: Callable[[int], Awaitable[object]], *, calls: int, concurrency: int, first: int = 0
) -> Outcome:
    """Make ``calls`` calls, ``concurrency`` at a time; call(i) gets a distinct i per call."""
    outcome = Outcome()
    indices = iter(range(first, first + calls))

    async def worker() -> None:
        for i in indices:
            await _timed(call, i, outcome)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    outcome.seconds = time.perf_counter() - started
    return outcome


async def drive_rate(
    call: Callable[[int], Awaitable[object]], *, calls: int, rate: float, first: int = 0
) -> Outcome:
    """Start ``calls`` calls at a constant ``rate`` per second, whatever the answers (open
    loop: an overloaded server does not slow the arrivals down, as with real clients)."""
    outcome = Outcome()
    tasks = []
    started = time.perf_counter()
    for n in range(calls):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(call, first + n, outcome)))
    await asyncio.gather(*tasks)
    outcome.seconds = time.perf_counter() - started
    return outcome


def generate_call(
    ch: grpc.aio.Channel, *, num_classes: int, timeout: float
) -> Callable[[int], Awaitable[object]]:
    """Unary Generate, RAW encoding, a new seed per call (a cache could not help)."""
    stub = generator_pb2_grpc.GeneratorStub(ch)

    def call(i: int) -> Awaitable[object]:
        label = i % num_classes if num_classes else None
        request = pb.GenerateRequest(
            seed=i, class_label=label, encoding=pb.IMAGE_ENCODING_RAW_UINT8
        )
        return stub.Generate(request, timeout=timeout)

    return call


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _model_info(ch: grpc.aio.Channel) -> pb.ModelInfo:
    """The default model's info: the model the calls of a run get."""
    return await generator_pb2_grpc.GeneratorStub(ch).GetModelInfo(pb.GetModelInfoRequest())


async def soak(
    target: str,
    pid: int,
    *,
    calls: int,
    concurrency: int,
    warmup_calls: int,
    timeout: float = 30.0,
    rss_budget_mb: float = 50.0,
) -> dict[str, object]:
    """The soak run's figures and verdict (see the module docstring)."""
    async with targets.channel(target) as ch:
        info = await _model_info(ch)
        call = generate_call(ch, num_classes=info.num_classes, timeout=timeout)
        warm = await drive(call, calls=warmup_calls, concurrency=concurrency)
        rss_warm = rss_mb(pid)
        run = await drive(call, calls=calls, concurrency=concurrency, first=warmup_calls)
        rss_after = rss_mb(pid)
    undocumented = {c: n for c, n in run.codes.items() if c not in DOCUMENTED}
    growth = rss_after - rss_warm
    return {
        "calls": run.calls,
        "concurrency": concurrency,
        "seconds": round(run.seconds, 2),
        "requests_per_s": round(run.rate(), 1),
        "codes": run.codes,
        "warmup_codes": warm.codes,
        "latency_ms": {q: round(run.ms("OK", q), 2) for q in (50, 99, 100)},
        "rss_after_warmup_mb": round(rss_warm, 1),
        "rss_after_run_mb": round(rss_after, 1),
        "rss_growth_mb": round(growth, 1),
        "rss_budget_mb": rss_budget_mb,
        "undocumented_codes": undocumented,
        "passed": soak_passed(
            undocumented, ended=run.calls, calls=calls, growth_mb=growth, budget_mb=rss_budget_mb
        ),
    }


def soak_passed(
    undocumented: dict[str, int], *, ended: int, calls: int, growth_mb: float, budget_mb: float
) -> bool:
    """The soak verdict: every call ended (none hanging), each with a documented status, and
    the server's memory grew by no more than the budget."""
    return not undocumented and ended == calls and growth_mb <= budget_mb


class QueueSampler:
    """Polls the server's /metrics in a thread and keeps the largest queue depth seen. A
    scrape that fails ends the sampling and is kept in ``error``: a verdict on the queue must
    not rest on samples that were never taken."""

    def __init__(self, metrics_url: str, *, model: str, every_s: float = 0.02) -> None:
        self._scrape = targets.ganserve_scraper(metrics_url, model=model)
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="queue-sampler")
        self.max_depth = 0.0
        self.samples = 0
        self.error: str | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                depth = self._scrape()["queue_depth"]
            except RuntimeError as exc:  # the scraper's one-line error
                self.error = str(exc)
                return
            self.max_depth = max(self.max_depth, depth)
            self.samples += 1
            self._stop.wait(self._every)

    def __enter__(self) -> QueueSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


async def overload(
    target: str,
    metrics_url: str,
    *,
    queue_size: int,
    calls: int,
    factor: float,
    timeout: float = 30.0,
) -> dict[str, object]:
    """Capacity at half the queue size in flight, then arrivals at ``factor`` times that
    capacity (see the module docstring)."""
    async with targets.channel(target) as ch:
        info = await _model_info(ch)
        scrape = targets.ganserve_scraper(metrics_url, model=info.name)
        call = generate_call(ch, num_classes=info.num_classes, timeout=timeout)
        await drive(call, calls=max(200, calls // 10), concurrency=queue_size // 2)  # warm-up
        capacity = await drive(call, calls=calls, concurrency=queue_size // 2, first=10**6)
        before = scrape()
        offered = factor * capacity.rate()
        with QueueSampler(metrics_url, model=info.name) as sampler:
            over = await drive_rate(call, calls=calls, rate=offered, first=10**7)
        after = scrape()
    # Prometheus' increase() rule, so a server restarted mid-run does not give a negative mean.
    figures, reset_notes = server_figures_between(before, after)
    undocumented = {c: n for c, n in over.codes.items() if c not in DOCUMENTED}
    return {
        "queue_size": queue_size,
        "calls": over.calls,
        "capacity_requests_per_s": round(capacity.rate(), 1),
        "offered_requests_per_s": round(offered, 1),
        "goodput_requests_per_s": round(over.rate(), 1),
        "goodput_ratio": round(over.rate() / capacity.rate(), 3) if capacity.rate() else None,
        "codes": over.codes,
        "ok_latency_ms": {q: round(over.ms("OK", q), 2) for q in (50, 99)},
        "shed_latency_ms": {q: round(over.ms("RESOURCE_EXHAUSTED", q), 2) for q in (50, 99)},
        "max_queue_depth_seen": max(sampler.max_depth, 0.0),
        "queue_samples": sampler.samples,
        "queue_sampling_error": sampler.error,
        "mean_batch_size": round(figures.get("mean_batch", 0.0), 2),
        "counter_notes": reset_notes,
        "undocumented_codes": undocumented,
        "passed": overload_passed(
            undocumented,
            queue_size=queue_size,
            max_depth=sampler.max_depth,
            samples=sampler.samples,
            sampling_error=sampler.error,
        ),
    }


def overload_passed(
    undocumented: dict[str, int],
    *,
    queue_size: int,
    max_depth: float,
    samples: int,
    sampling_error: str | None,
) -> bool:
    """The overload verdict: every call ended with a documented status, and the queue depth
    was sampled (at least once, no scrape failed) and never passed the queue size."""
    return not undocumented and sampling_error is None and samples > 0 and max_depth <= queue_size
