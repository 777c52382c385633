"""Asyncio load generation with perf_analyzer-style measurement windows.

Two load modes: fixed concurrency (N calls always outstanding) and fixed request rate
(constant or Poisson arrivals, capped in-flight). At a fixed rate, latency runs from the call's
start, as perf_analyzer times it, and the point also reports how late the client started calls
after their scheduled arrivals (p99 send lag): open-loop figures are only as good as the
client's timing, so it is shown, not assumed. After a warm-up, windows are measured until
the last `stable_windows` agree within `tolerance` in throughput and p99 latency (max / min, as
perf_analyzer judges), or `max_windows` pass (the point is then reported unstable). Figures come
from the stable windows together. Calls that got no reply in all of those windows (a hung
server) are counted as `NO_REPLY` errors, so a point with nothing back never shows no errors.
A fixed-rate point at which the calls sent fell under `KEEP_UP` of the rate offered, or whose
send lag p99 passed its p99 latency, measured something other than the offered load (as
perf_analyzer warns, "not able to keep up"): it is marked not stable, with a note saying why.

Call numbers (which the targets turn into seeds) never repeat within a process and start at a
random place in each, so a server's response cache cannot answer a later point, or a later
run, from an earlier one's calls.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import math
import random
import resource
import time
from collections.abc import Awaitable, Callable

import numpy as np

# call(i) -> images returned; raises grpc.aio.AioRpcError (or anything) on failure.
Call = Callable[[int], Awaitable[int]]
# scrape() -> server-side counters, e.g. {"batch_sum": .., "batch_count": .., ...}
Scrape = Callable[[], dict[str, float]]
# Below 2**41 for any run: times a batch's items (at most 2**16) the seeds stay in uint64.
CALL_NUMBERS = itertools.count(random.SystemRandom().randrange(1 << 40))
# The error code of calls still unanswered when a point ends, after its measured windows.
NO_REPLY = "NO_REPLY"
# The error code of arrivals the client dropped (max_in_flight calls already in flight).
CLIENT_SATURATED = "CLIENT_SATURATED"
# A fixed-rate point whose calls sent fall under this share of the rate offered fell behind.
KEEP_UP = 0.90


@dataclasses.dataclass(frozen=True, kw_only=True)
class Windows:
    """How a point is measured.

    Args:
        warmup_s: Load before measuring (connections, server warm-up, JIT of nothing).
        window_s: Length of one measurement window.
        stable_windows: How many last windows must agree.
        max_windows: Give up on stability after this many windows.
        tolerance: Largest ``max / min - 1`` of throughput and of p99 across the stable
            windows (perf_analyzer's ``--stability-percentage`` / 100).
    """

    warmup_s: float = 1.0
    window_s: float = 2.0
    stable_windows: int = 3
    max_windows: int = 8
    tolerance: float = 0.10

    def __post_init__(self) -> None:
        # Each would make a point that never ends, divides by zero, or is judged on nothing.
        for name in ("warmup_s", "window_s", "tolerance"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (value == 0 and name == "window_s"):
                raise ValueError(
                    f"Windows.{name} is {value}: give a finite number >= 0"
                    + (" (and > 0)" if name == "window_s" else "")
                )
        if self.stable_windows < 1:
            raise ValueError(f"Windows.stable_windows is {self.stable_windows}: give 1 or more")
        if self.max_windows < self.stable_windows:
            raise ValueError(
                f"Windows.max_windows is {self.max_windows}: give at least stable_windows "
                f"({self.stable_windows})"
            )


@dataclasses.dataclass
class Point:
    """One measured load point."""

    label: str
    mode: str  # "concurrency" or "rate"
    load: float  # concurrency, or requests/s offered
    requests_per_s: float
    images_per_s: float
    latency_ms: dict[str, float]  # p50 p90 p95 p99 max
    errors: dict[str, int]
    stable: bool
    windows: int
    client_cpu: float  # cores used by this client process, 1.0 = one core busy
    server: dict[str, float] = dataclasses.field(default_factory=dict)
    error_details: dict[str, str] = dataclasses.field(default_factory=dict)  # first per code
    # Fixed rate only: p99 of how late the client started calls after their scheduled arrivals.
    send_lag_ms: float | None = None
    # What a reader must know to trust the figures: a client that fell behind, a counter reset.
    notes: list[str] = dataclasses.field(default_factory=list)

    def row(self) -> dict[str, object]:
        """The point as one flat row: the table's and the CSV's columns."""
        return {
            "label": self.label,
            "mode": self.mode,
            "load": self.load,
            "requests_per_s": round(self.requests_per_s, 1),
            "images_per_s": round(self.images_per_s, 1),
            **{f"{k}_ms": round(v, 3) for k, v in self.latency_ms.items()},
            "errors": sum(self.errors.values()),
            "error_codes": ";".join(f"{k}={v}" for k, v in sorted(self.errors.items())),
            "stable": self.stable,
            "windows": self.windows,
            "client_cpu": round(self.client_cpu, 2),
            **({} if self.send_lag_ms is None else {"send_lag_p99_ms": round(self.send_lag_ms, 3)}),
            **{f"server_{k}": round(v, 3) for k, v in self.server.items()},
            "notes": "; ".join(self.notes),
        }

    def record(self) -> dict[str, object]:
        """The point for JSON: ``row()`` with the errors as an object by status code, the first
        call's details of each, and the notes as a list."""
        record = self.row()
        del record["error_codes"]
        record["errors"] = dict(sorted(self.errors.items()))
        record["error_details"] = {c: self.error_details.get(c, "") for c in sorted(self.errors)}
        record["notes"] = list(self.notes)
        return record


class _Recorder:
    """Completed calls as parallel lists, appended by the workers (one event loop: no lock)."""

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.images: list[int] = []
        self.codes: list[str] = []
        self.lag: list[float] = []  # fixed rate: call start - scheduled arrival
        self.first_errors: dict[str, str] = {}  # status code -> the first such call's details
        self.waiting: dict[int, float] = {}  # call number -> start, for calls not yet answered

    def __len__(self) -> int:
        return len(self.latency)

    def add(self, latency: float, images: int, code: str, lag: float = 0.0) -> None:
        self.latency.append(latency)
        self.images.append(images)
        self.codes.append(code)
        self.lag.append(lag)


async def _timed(call: Call, i: int, recorder: _Recorder, scheduled: float | None = None) -> None:
    """Run call(i) and record it, with how late it started after ``scheduled`` (fixed rate)."""
    started = recorder.waiting[i] = time.perf_counter()
    try:
        images = await call(i)
        code = "OK"
    except Exception as exc:  # the status is data here, not a failure of the benchmark
        images = 0
        code = (
            exc.code().name if hasattr(exc, "code") and callable(exc.code) else type(exc).__name__
        )
        if code not in recorder.first_errors:
            details = exc.details() if hasattr(exc, "details") and callable(exc.details) else None
            recorder.first_errors[code] = str(details if details is not None else exc)
    lag = 0.0 if scheduled is None else started - scheduled
    del recorder.waiting[i]
    recorder.add(time.perf_counter() - started, images, code, lag)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def agree(values: list[float], tolerance: float) -> bool:
    """Whether windows agree as perf_analyzer judges stability: ``max / min <= 1 + tolerance``.

    perf_analyzer's rule (``--stability-percentage``, 10 by default), applied to throughput and
    to p99 alike. A window with no successful call (throughput 0, p99 infinite) never agrees.
    """
    low, high = min(values), max(values)
    return low > 0 and math.isfinite(high) and high <= low * (1 + tolerance)


async def measure(
    call: Call,
    *,
    label: str,
    concurrency: int | None = None,
    rate: float | None = None,
    poisson: bool = False,
    max_in_flight: int = 1024,
    windows: Windows = Windows(),
    scrape: Scrape | None = None,
    seed: int = 0,
) -> Point:
    """Drive ``call`` at fixed concurrency or rate and measure it (see the module docstring)."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency and rate")
    recorder = _Recorder()
    stop = asyncio.Event()
    counter = CALL_NUMBERS
    tasks: set[asyncio.Task[None]] = set()

    async def worker() -> None:
        while not stop.is_set():
            await _timed(call, next(counter), recorder)

    async def arrivals() -> None:
        rng = random.Random(seed)
        next_at = time.perf_counter()
        while not stop.is_set():
            next_at += rng.expovariate(rate) if poisson else 1.0 / rate
            # Yields even when late, so the calls already started, and the windows, run too.
            await asyncio.sleep(max(next_at - time.perf_counter(), 0.0))
            if len(tasks) >= max_in_flight:
                recorder.add(0.0, 0, CLIENT_SATURATED)  # offered load the client dropped
                continue
            task = asyncio.create_task(_timed(call, next(counter), recorder, next_at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    drivers = (
        [asyncio.create_task(worker()) for _ in range(concurrency or 0)]
        if concurrency
        else [asyncio.create_task(arrivals())]
    )
    try:
        return await _windows(recorder, windows, scrape, label, concurrency, rate)
    finally:
        stop.set()
        for driver in drivers:
            driver.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        if tasks:
            await asyncio.wait(tasks, timeout=10)


async def _windows(
    recorder: _Recorder,
    windows: Windows,
    scrape: Scrape | None,
    label: str,
    concurrency: int | None,
    rate: float | None,
) -> Point:
    """Warm up, then measure windows until the last ones agree; the point they make."""
    await asyncio.sleep(windows.warmup_s)

    marks: list[int] = [len(recorder)]
    stamps: list[float] = [time.perf_counter()]
    cpu: list[float] = [_cpu_seconds()]
    np.percentile([0.0], 99)  # numpy's first percentile imports lazily: not inside a window
    # The scrape is a blocking HTTP call: off the event loop, or calls in flight would wait.
    server: list[dict[str, float]] = [await asyncio.to_thread(scrape) if scrape else {}]
    throughput: list[float] = []
    p99: list[float] = []
    stable = False
    while len(throughput) < windows.max_windows:
        await asyncio.sleep(windows.window_s)
        marks.append(len(recorder))
        stamps.append(time.perf_counter())
        cpu.append(_cpu_seconds())
        server.append(await asyncio.to_thread(scrape) if scrape else {})
        # The same calls the point reports: OK ones only (errors and drops are counted apart).
        window = zip(
            recorder.latency[marks[-2] : marks[-1]],
            recorder.codes[marks[-2] : marks[-1]],
            strict=True,
        )
        lat = [latency for latency, code in window if code == "OK"]
        throughput.append(len(lat) / (stamps[-1] - stamps[-2]))
        p99.append(float(np.percentile(lat, 99)) if lat else math.inf)
        k = windows.stable_windows
        if (
            len(throughput) >= k
            and agree(throughput[-k:], windows.tolerance)
            and agree(p99[-k:], windows.tolerance)
        ):
            stable = True
            break

    k = min(windows.stable_windows, len(throughput))
    first, last = marks[-k - 1], marks[-1]
    elapsed = stamps[-1] - stamps[-k - 1]
    codes = collections.Counter(recorder.codes[first:last])
    # Calls with no reply since before these windows began (a hung server, say): counted, or
    # a point in which nothing came back would show no errors at all.
    if unanswered := sum(start < stamps[-k - 1] for start in recorder.waiting.values()):
        codes[NO_REPLY] = unanswered
        recorder.first_errors.setdefault(
            NO_REPLY, f"no reply in the {elapsed:.1f} s measured (calls still waiting at the end)"
        )
    ok_latency = [
        lat
        for lat, c in zip(recorder.latency[first:last], recorder.codes[first:last], strict=True)
        if c == "OK"
    ]
    pct = np.percentile(ok_latency, [50, 90, 95, 99]) * 1e3 if ok_latency else [math.nan] * 4
    server_figures, notes = server_figures_between(server[-k - 1], server[-1])
    lags = [
        lag
        for lag, c in zip(recorder.lag[first:last], recorder.codes[first:last], strict=True)
        if c != CLIENT_SATURATED
    ]
    send_lag = float(np.percentile(lags, 99)) * 1e3 if rate is not None and lags else None
    if rate is not None:
        # Calls sent, whatever their answer: a server that refuses calls fast is still sent the
        # offered load; arrivals dropped by the client (CLIENT_SATURATED) were not sent.
        behind = keeping_up(rate, len(lags) / elapsed, send_lag, float(pct[3]))
        notes += behind
        stable = stable and not behind
    return Point(
        label=label,
        mode="concurrency" if concurrency else "rate",
        load=float(concurrency or rate),
        requests_per_s=codes.get("OK", 0) / elapsed,
        images_per_s=sum(recorder.images[first:last]) / elapsed,
        latency_ms={
            "p50": float(pct[0]),
            "p90": float(pct[1]),
            "p95": float(pct[2]),
            "p99": float(pct[3]),
            "max": max(ok_latency) * 1e3 if ok_latency else math.nan,
        },
        errors={c: n for c, n in codes.items() if c != "OK"},
        error_details={c: recorder.first_errors.get(c, "") for c in codes if c != "OK"},
        stable=stable,
        windows=len(throughput),
        client_cpu=(cpu[-1] - cpu[-k - 1]) / elapsed,
        server=server_figures,
        send_lag_ms=send_lag,
        notes=notes,
    )


def keeping_up(
    offered: float, sent_per_s: float, send_lag_ms: float | None, p99_ms: float
) -> list[str]:
    """Why a fixed-rate point did not measure its offered load (none: it did), as
    perf_analyzer's "not able to keep up" judges it, by the calls sent and their lateness.

    Lateness is judged tail against tail: the event loop's timers wake on a ~1 ms grid, so a
    lag p99 of 1-2 ms is this client's normal burstiness, as large as a fast server's p50; a
    lag p99 past the latency p99 is client timing that outweighs anything the latencies show."""
    notes = []
    if sent_per_s < KEEP_UP * offered:
        notes.append(
            f"fell behind: sent {sent_per_s:.0f} calls/s of the {offered:g}/s offered (under "
            f"{KEEP_UP:.0%}): the client, or a server that queues calls, could not keep up"
        )
    if send_lag_ms is not None and math.isfinite(p99_ms) and send_lag_ms > p99_ms:
        notes.append(
            f"fell behind: send lag p99 {send_lag_ms:.2f} ms is above the p99 latency "
            f"{p99_ms:.2f} ms: calls started late, so the latencies are not those of the "
            "offered arrivals"
        )
    return notes


# Histograms whose sum and count give a mean: (sum, count, figure, scale).
_MEANS = (
    ("batch_sum", "batch_count", "mean_batch", 1.0),
    ("queue_sum", "queue_count", "mean_queue_ms", 1e3),
)


def server_figures_between(
    before: dict[str, float], after: dict[str, float]
) -> tuple[dict[str, float], list[str]]:
    """Mean batch size and queue time over the windows, from histogram sums and counts; and
    a note for each histogram whose counters went down.

    Prometheus' rule for counters (as ``increase()`` applies it): one that went down was reset
    (a server restart) and counted from zero since, so its increase is its value now. A
    histogram's sum and count reset together: either going down resets both."""
    out: dict[str, float] = {}
    notes: list[str] = []
    for total, count, figure, scale in _MEANS:
        if count not in after:
            continue
        d_sum = after[total] - before.get(total, 0.0)
        d_count = after[count] - before.get(count, 0.0)
        if d_sum < 0 or d_count < 0:
            d_sum, d_count = after[total], after[count]
            notes.append(f"server {figure} since its counters reset (they went down: a restart?)")
        if d_count > 0:
            out[figure] = d_sum / d_count * scale
    return out, notes
