"""The ceiling: the engine alone, in process, no gRPC, no batching logic.

A ceiling measured low makes every ratio to it look good (a busy machine once gave a server
111 % of its own engine), so `compare` takes each figure as the best of several windows, until
the last `STABLE_WINDOWS` agree within `TOLERANCE` (perf_analyzer's rule, as for the load
points) or `MAX_WINDOWS` pass: the most the engine did, not one sample of it. The functions
default to one window, as other callers (docs/families.py) time them.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time
from collections.abc import Callable

import numpy as np

from ganserve.bench.load import agree
from ganserve.serve import inputs, repository
from ganserve.serve.backends import Backend, EngineOptions, create_engine
from ganserve.serve.metadata import ModelMetadata


def _feeds(m: ModelMetadata, batch: int, seed: int) -> dict[str, np.ndarray]:
    """The inputs the server would build for ``batch`` consecutive seeds, classes cycling."""
    labels = np.arange(batch) % m.num_classes if m.conditional else None
    return inputs.feeds_for_seeds(m, range(seed, seed + batch), labels)


STABLE_WINDOWS = 3
MAX_WINDOWS = 6
TOLERANCE = 0.10


def best_window(
    sample: Callable[[], tuple[float, float]],
    *,
    stable_windows: int = STABLE_WINDOWS,
    max_windows: int = MAX_WINDOWS,
    tolerance: float = TOLERANCE,
) -> dict[str, float | bool]:
    """Call ``sample()`` (one window: images/s and median ms per call) until the last
    ``stable_windows`` images/s agree within ``tolerance`` or ``max_windows`` were taken; the
    best window's figures, how many windows were taken, and whether the last ones agreed."""
    windows: list[tuple[float, float]] = []
    stable = False
    while len(windows) < max_windows and not stable:
        windows.append(sample())
        rates = [rate for rate, _ in windows[-stable_windows:]]
        stable = len(windows) >= stable_windows and agree(rates, tolerance)
    rate, median_ms = max(windows)
    return {"images_per_s": rate, "median_ms": median_ms, "windows": len(windows), "stable": stable}


def _window(
    engine, feeds: dict[str, np.ndarray], batch: int, seconds: float
) -> tuple[float, float]:
    """One window of ``engine.run(feeds)`` calls, ``seconds`` long and at least 5 calls:
    images/s over the calls' own time, and the median ms per call."""
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        t = time.perf_counter()
        engine.run(feeds)
        times.append(time.perf_counter() - t)
    return batch * len(times) / sum(times), float(np.median(times) * 1e3)


def engine_throughput(
    repo: pathlib.Path,
    name: str,
    batch_sizes: list[int],
    *,
    seconds: float = 1.0,
    backend: Backend = Backend.ONNXRUNTIME_CPU,
    version: int | None = None,
    cache_dir: pathlib.Path | None = None,
    stable_windows: int = 1,
    max_windows: int = 1,
) -> dict[int, dict[str, float]]:
    """images/s and median call time of ``engine.run`` at each batch size, with whichever of
    1 thread or all cores is faster there (ONNX Runtime CPU): the best this engine does alone,
    in the best of ``seconds``-long windows (`best_window`: until ``stable_windows`` agree, at
    most ``max_windows``; one by default). A GPU ``backend``'s call includes its host-device
    copies, as in the server. ``version``: the model version to time; None times the newest,
    which the server serves. ``cache_dir``: where ONNX Runtime's TensorRT provider keeps the
    engines it builds (as --engine-cache-dir)."""
    if version is None:
        version = repository.latest(repo, name)
    else:
        version = repository.open_version(repo, name, version)
    m = version.metadata
    cores = len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    out: dict[int, dict[str, float]] = {}
    cpu = backend is Backend.ONNXRUNTIME_CPU
    for threads in sorted({1, cores}) if cpu else [0]:
        options = EngineOptions(
            intra_op_threads=threads, max_batch_size=max(batch_sizes), cache_dir=cache_dir
        )
        engine = create_engine(version.path, m, backend, options)
        for batch in batch_sizes:
            feeds = _feeds(m, batch, seed=int(rng.integers(1 << 32)))
            for _ in range(3):
                engine.run(feeds)  # warm-up: arena growth, first-call costs
            best = best_window(
                functools.partial(_window, engine, feeds, batch, seconds),
                stable_windows=stable_windows,
                max_windows=max_windows,
            )
            if batch not in out or best["images_per_s"] > out[batch]["images_per_s"]:
                out[batch] = {**best, "threads": threads}
        engine.close()
    return out


def parallel_engine_throughput(
    repo: pathlib.Path,
    name: str,
    batch: int,
    instances: int,
    *,
    seconds: float = 2.0,
    backend: Backend = Backend.ONNXRUNTIME_CPU,
    cache_dir: pathlib.Path | None = None,
    stable_windows: int = 1,
    max_windows: int = 1,
) -> dict[str, float]:
    """images/s of ``instances`` engines (single-thread on the CPU) running ``batch`` side by
    side, as a server with that many instances would: the ceiling for a multi-instance server,
    in the best of ``seconds``-long windows (as `engine_throughput`)."""
    import threading

    version = repository.latest(repo, name)
    m = version.metadata
    options = EngineOptions(intra_op_threads=1, max_batch_size=batch, cache_dir=cache_dir)
    engines = [create_engine(version.path, m, backend, options) for _ in range(instances)]
    feeds = _feeds(m, batch, seed=0)
    counts = [0] * instances
    start = threading.Barrier(instances + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        engines[i].run(feeds)
        start.wait()
        while not stop.is_set():
            engines[i].run(feeds)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(instances)]
    for t in threads:
        t.start()
    start.wait()

    def window() -> tuple[float, float]:
        done, began = sum(counts), time.perf_counter()
        time.sleep(seconds)
        return batch * (sum(counts) - done) / (time.perf_counter() - began), float("nan")

    try:
        best = best_window(window, stable_windows=stable_windows, max_windows=max_windows)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for engine in engines:
            engine.close()
    del best["median_ms"]  # calls overlap: no one call time
    return {**best, "instances": instances}
