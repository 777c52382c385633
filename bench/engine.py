"""The ceiling: the engine alone, in process, no gRPC, no batching logic."""

from __future__ import annotations

import os
import pathlib
import time

import numpy as np

from ganserve.serve import inputs, repository
from ganserve.serve.backends import Backend, EngineOptions, create_engine
from ganserve.serve.metadata import ModelMetadata


def _feeds(m: ModelMetadata, batch: int, seed: int) -> dict[str, np.ndarray]:
    """The inputs the server would build for ``batch`` consecutive seeds, classes cycling."""
    labels = np.arange(batch) % m.num_classes if m.conditional else None
    return inputs.feeds_for_seeds(m, range(seed, seed + batch), labels)


def engine_throughput(
    repo: pathlib.Path,
    name: str,
    batch_sizes: list[int],
    *,
    seconds: float = 1.0,
    backend: Backend = Backend.ONNXRUNTIME_CPU,
    version: int | None = None,
    cache_dir: pathlib.Path | None = None,
) -> dict[int, dict[str, float]]:
    """images/s and median call time of ``engine.run`` at each batch size, with whichever of
    1 thread or all cores is faster there (ONNX Runtime CPU): the best this engine does alone.
    A GPU ``backend``'s call includes its host-device copies, as in the server. ``version``:
    the model version to time; None times the newest, which the server serves. ``cache_dir``:
    where ONNX Runtime's TensorRT provider keeps the engines it builds (as --engine-cache-dir)."""
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
            times = []
            started = time.perf_counter()
            while time.perf_counter() - started < seconds or len(times) < 5:
                t = time.perf_counter()
                engine.run(feeds)
                times.append(time.perf_counter() - t)
            rate = batch * len(times) / sum(times)
            if batch not in out or rate > out[batch]["images_per_s"]:
                out[batch] = {
                    "images_per_s": rate,
                    "median_ms": float(np.median(times) * 1e3),
                    "threads": threads,
                }
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
) -> dict[str, float]:
    """images/s of ``instances`` engines (single-thread on the CPU) running ``batch`` side by
    side, as a server with that many instances would: the ceiling for a multi-instance server."""
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
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    for engine in engines:
        engine.close()
    return {"images_per_s": batch * sum(counts) / elapsed, "instances": instances}
