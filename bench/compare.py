"""`gan-bench compare`: every baseline and ganserve, one after another on one machine.

1. The engine alone, in process: images/s at each batch size (the ceiling).
2. ganserve with batching on (max batch 64) and off (max batch 1), Generate and GenerateBatch.
3. Triton (PyTriton's bundled tritonserver, dynamic batcher) serving the same ONNX model.
4. A DCGAN at 64x64 RGB, RAW encoding, against its engine alone.
5. The serving path's own ceilings: a bare gRPC round trip (the health service) under the same
   load, and ganserve serving a model with almost no compute (``tiny``: the bundled model's
   request and reply, a few microseconds of engine time), so the figures say how much of a
   gap is the model and how much is gRPC, batching and Python.

Servers run one at a time, so they never compete for the CPU; the same asyncio client drives
all of them. Results: a table, the targets with their ratios, JSON, CSV and a plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ganserve.bench import targets
from ganserve.bench.engine import (
    MAX_WINDOWS,
    STABLE_WINDOWS,
    engine_throughput,
    parallel_engine_throughput,
)
from ganserve.bench.load import Point, Windows, measure
from ganserve.bench.models import DCGAN64, TINY, ensure_model
from ganserve.kserve.v2 import predict_pb2, predict_pb2_grpc
from ganserve.serve import repository
from ganserve.serve.backends import Backend
from ganserve.serve.errors import GanServeError
from ganserve.v1 import generator_pb2, generator_pb2_grpc

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Run by the server's interpreter before it execs the server: the kernel sends it SIGTERM when
# gan-bench's thread that started it ends, even by SIGKILL, so an OOM-killed or kill -9'ed
# gan-bench leaves no server behind. (PR_SET_PDEATHSIG survives execve; subprocess's
# preexec_fn could set it too, but is unsafe in a process with threads.)
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):  # gan-bench died before that call: do not start
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _dies_with_us(cmd: list[str]) -> list[str]:
    """``cmd``, started so that it gets SIGTERM when this process dies (Linux; elsewhere as is)."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


class ServerStartError(RuntimeError):
    """A server gan-bench started exited, or was not ready in time; the message names its log."""


def _log_end(log: pathlib.Path) -> int:
    """Where what a server is about to write to ``log`` (opened to append) begins."""
    try:
        return log.stat().st_size
    except OSError:
        return 0


def _last_line(log: pathlib.Path, since: int) -> str:
    """The last non-blank line written to ``log`` after offset ``since`` (the server's own last
    word, often why it stopped; not an earlier server's, which shares the log in `compare`)."""
    try:
        with log.open("rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:  # a pipe, say, or gone
        return ""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return last if len(last) <= 200 else last[:197] + "..."


def _wait(
    ready: Callable[[], bool],
    what: str,
    proc: subprocess.Popen,
    log: pathlib.Path,
    since: int,
    timeout: float = 120,
) -> None:
    """Return once ready() says yes; ServerStartError, naming ``log`` (where the server, which
    writes to it from offset ``since``, said why), if ``proc`` exits first or ``timeout``
    passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = _last_line(log, since)
            raise ServerStartError(
                f"{what} exited with code {proc.returncode} before it was ready: see {log}"
                + (f" (last line: {last})" if last else "")
            )
        try:
            if ready():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise ServerStartError(f"{what} was not ready after {timeout:.0f}s: see {log}")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclasses.dataclass(frozen=True)
class Server:
    target: str
    metrics_url: str | None
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def ganserve(
    repo: pathlib.Path,
    log: pathlib.Path,
    *args: str,
    tls_ca: pathlib.Path | None = None,
    ready_s: float = 120,
) -> Iterator[Server]:
    """A ganserve process on free loopback ports, SERVING once yielded (within ``ready_s``);
    ``tls_ca`` is the CA to trust when ``args`` turn TLS on. It gets SIGTERM if this process
    dies first, or if the thread that entered this context ends (enter it from the main thread
    or one that outlives the server)."""
    port, metrics = free_port(), free_port()
    cmd = [
        str(BIN / "ganserve"),
        "serve",
        "--model-repository",
        str(repo),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics),
        "--log-level",
        "WARNING",
        *args,
    ]
    since = _log_end(log)
    with log.open("a") as out:
        proc = subprocess.Popen(_dies_with_us(cmd), stdout=out, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"

    def ready() -> bool:
        if tls_ca is None:
            channel = grpc.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
            channel = grpc.secure_channel(target, credentials)
        with channel as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    try:
        _wait(ready, "ganserve", proc, log, since, timeout=ready_s)
        yield Server(target, f"http://127.0.0.1:{metrics}/metrics", proc)
    finally:
        _stop(proc)


@contextlib.contextmanager
def triton(
    python: pathlib.Path,
    model_dir: pathlib.Path,
    log: pathlib.Path,
    max_batch: int,
    instances: int,
) -> Iterator[Server]:
    port = free_port()
    # PyTriton copies tritonserver (22 MB) into a workspace it removes only when it stops on its
    # own; killed, as here, it left one in ~/.cache/pytriton each run. This one is ours to
    # remove. It holds PyTriton's Unix sockets, whose paths may not pass 107 bytes: a short
    # folder in the system's temp dir, not under --out.
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="gan-bench-triton-"))
    cmd = [
        str(python),
        str(REPO_ROOT / "bench" / "triton_peer.py"),
        "--workspace",
        str(scratch / "pytriton"),
        "--model-dir",
        str(model_dir),
        "--grpc-port",
        str(port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--max-batch",
        str(max_batch),
        "--instances",
        str(instances),
    ]
    # PyTriton's Python backend stub links against libpython of the interpreter it runs.
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR")
        + ":"
        + os.environ.get("LD_LIBRARY_PATH", ""),
    }
    since = _log_end(log)
    with log.open("a") as out:
        proc = subprocess.Popen(  # tritonserver, the peer's child, dies with the peer
            _dies_with_us(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    target = f"127.0.0.1:{port}"

    def ready() -> bool:
        with grpc.insecure_channel(target) as ch:
            stub = predict_pb2_grpc.GRPCInferenceServiceStub(ch)
            if not stub.ServerReady(predict_pb2.ServerReadyRequest(), timeout=2).ready:
                return False
        # The server is ready before its model is: wait for one real inference to succeed.
        asyncio.run(_probe(target, model_dir.parent.name))
        return True

    try:
        _wait(ready, "Triton", proc, log, since, timeout=180)
        yield Server(target, None, proc)
    finally:
        _stop_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the peer's process group (tritonserver and its backend stubs are the peer's
    children), SIGKILL after 30 s, then wait until none of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _group_running(proc.pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs: zombies (which only whoever adopted them
    can reap, and a PID 1 that does not reap never will) do not count."""
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


async def _probe(target: str, model: str) -> None:
    ch = targets.channel(target)
    try:
        await targets.triton_infer(ch, model=model, num_classes=10)(0)
    finally:
        await ch.close()


@dataclasses.dataclass
class Results:
    backend: str = Backend.ONNXRUNTIME_CPU.value
    points: list[Point] = dataclasses.field(default_factory=list)
    engine: dict[str, dict[int, dict[str, float]]] = dataclasses.field(default_factory=dict)
    parallel: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)  # stages that could not run

    def get(self, label: str) -> Point | None:
        return next((p for p in self.points if p.label == label), None)


async def _sweep(
    results: Results,
    server: Server,
    name: str,
    make_call,
    loads: list[int],
    windows: Windows,
    *,
    log: callable,  # type: ignore[valid-type]
    rate: float | None = None,
) -> None:
    """Measure ``name`` at each concurrency in ``loads``, then at a Poisson ``rate`` if set."""
    ch = targets.channel(server.target)
    scrape = None
    if server.metrics_url:  # the figures of the model measured, whichever the server has
        stub = generator_pb2_grpc.GeneratorStub(ch)
        info = await stub.GetModelInfo(generator_pb2.GetModelInfoRequest(), timeout=10)
        scrape = targets.ganserve_scraper(server.metrics_url, model=info.name)
    specs = [{"label": f"{name} c={n}", "concurrency": n} for n in loads]
    if rate is not None:
        specs.append({"label": f"{name} @{rate:.0f}/s poisson", "rate": rate, "poisson": True})
    try:
        for spec in specs:
            point = await measure(make_call(ch), windows=windows, scrape=scrape, **spec)
            results.points.append(point)
            log(point)
    finally:
        await ch.close()


# The engine alone is the ceiling of targets: the best of windows until they agree, not one
# sample, which a busy machine can make low (see bench/engine.py).
CEILING = {"stable_windows": STABLE_WINDOWS, "max_windows": MAX_WINDOWS}
FALLBACK_RATE = 500.0  # the Poisson rate when ganserve's Generate c=64 was not measured


def poisson_rate(results: Results) -> tuple[float, str]:
    """The Poisson point's rate: half of ganserve's unary throughput at c=64, or
    FALLBACK_RATE without that point; and where the rate came from, for the notes."""
    busy = results.get("ganserve Generate raw c=64")
    if busy and busy.requests_per_s > 0:
        rate = 0.5 * busy.requests_per_s
        return rate, f"Poisson rate {rate:.0f}/s: half of ganserve Generate raw c=64's req/s"
    why = "not measured (--concurrency has no 64)" if busy is None else "had no successful call"
    return FALLBACK_RATE, (
        f"Poisson rate {FALLBACK_RATE:.0f}/s: a fixed fallback, since ganserve Generate raw c=64 "
        f"was {why}"
    )


def missing_levels(concurrency: list[int], needed: dict[int, str]) -> list[str]:
    """Notes for each level in ``needed`` (level -> the targets built on it) that
    ``concurrency`` lacks: an empty targets table must say why."""
    return [
        f"--concurrency {','.join(map(str, concurrency))} has no {level}: {what} not judged"
        for level, what in needed.items()
        if level not in concurrency
    ]


@contextlib.contextmanager
def _stage(results: Results, what: str = "") -> Iterator[None]:
    """One part of a run: a server that does not start (or a scrape that fails), or a model
    the engine cannot load, is recorded in ``results.failed`` (prefixed by ``what``) and the
    run goes on, so what was measured is kept. A server that stops answering the calls
    around the load (grpc.RpcError) fails its stage likewise."""
    try:
        yield
    except (RuntimeError, GanServeError, grpc.RpcError) as exc:
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            message = f"{exc.code().name}: {exc.details()}"  # str() is a multi-line dump
        else:
            message = str(exc)
        results.failed.append(f"{what}: {message}" if what else message)


def run_compare(
    out: pathlib.Path,
    *,
    triton_python: pathlib.Path | None,
    windows: Windows,
    concurrency: list[int],
    instances: int,
    log: callable,  # type: ignore[valid-type]
    results: Results | None = None,
) -> Results:
    """Everything in the module docstring; returns the figures, gathered into ``results`` as
    they are measured (so a caller holding it keeps them when the run is stopped)."""
    out.mkdir(parents=True, exist_ok=True)
    server_log = out / "servers.log"
    repo = REPO_ROOT / "models"
    bench_repo = ensure_model(out / "models", DCGAN64)
    tiny_repo = ensure_model(out / "tiny-models", TINY)
    results = Results() if results is None else results
    results.notes += missing_levels(concurrency, TARGET_LEVELS)
    for model, r, sizes, seconds in (
        ("digits", repo, [1, 2, 4, 8, 16, 32, 64], 0.5),
        (DCGAN64, bench_repo, [1, 8, 64], 1.0),
    ):
        with _stage(results, f"engine alone, {model}"):
            results.engine[model] = engine_throughput(r, model, sizes, seconds=seconds, **CEILING)
            results.parallel[model] = parallel_engine_throughput(
                r, model, 64, instances, seconds=seconds, **CEILING
            )
    raw = lambda ch: targets.ganserve_generate(ch, encoding="raw", num_classes=10)  # noqa: E731
    each = ("--instances", str(instances))
    with _stage(results), ganserve(repo, server_log, "--max-batch-size", "64", *each) as server:
        asyncio.run(
            _sweep(
                results,
                server,
                "grpc round trip (health)",
                targets.health_check,
                [1, 64],
                windows,
                log=log,
            )
        )
        asyncio.run(
            _sweep(results, server, "ganserve Generate raw", raw, concurrency, windows, log=log)
        )
        asyncio.run(
            _sweep(
                results,
                server,
                "ganserve Generate png",
                lambda ch: targets.ganserve_generate(ch, encoding="png", num_classes=10),
                [64],
                windows,
                log=log,
            )
        )
        asyncio.run(
            _sweep(
                results,
                server,
                "ganserve GenerateBatch(64) raw",
                lambda ch: targets.ganserve_batch(ch, encoding="raw", num_classes=10, items=64),
                [1, 2, 4],
                windows,
                log=log,
            )
        )
        rate, source = poisson_rate(results)
        results.notes.append(source)
        asyncio.run(
            _sweep(results, server, "ganserve Generate raw", raw, [], windows, log=log, rate=rate)
        )
    with (
        _stage(results),
        ganserve(tiny_repo, server_log, "--max-batch-size", "64", *each) as server,
    ):
        asyncio.run(
            _sweep(results, server, "ganserve tiny-model Generate raw", raw, [64], windows, log=log)
        )
    with _stage(results), ganserve(repo, server_log, "--max-batch-size", "1", *each) as server:
        asyncio.run(
            _sweep(results, server, "ganserve batching off", raw, [1, 64], windows, log=log)
        )
    if triton_python is not None:
        rate, _ = poisson_rate(results)  # the same as ganserve's
        digits = repository.latest(repo, "digits").path  # the version ganserve serves
        with _stage(results), triton(triton_python, digits, server_log, 64, instances) as server:
            call = lambda ch: targets.triton_infer(ch, model="digits", num_classes=10)  # noqa: E731
            asyncio.run(
                _sweep(results, server, "triton ModelInfer", call, concurrency, windows, log=log)
            )
            asyncio.run(
                _sweep(results, server, "triton ModelInfer", call, [], windows, log=log, rate=rate)
            )
    else:
        results.notes.append("Triton skipped: no PyTriton environment (make bench creates one)")
    with (
        _stage(results),
        ganserve(bench_repo, server_log, "--max-batch-size", "64", *each) as server,
    ):
        asyncio.run(
            _sweep(
                results,
                server,
                "ganserve dcgan64 RGB Generate raw",
                lambda ch: targets.ganserve_generate(ch, encoding="raw", num_classes=0),
                [64],
                windows,
                log=log,
            )
        )
    return results


def accelerator_unavailable(backend: Backend) -> str | None:
    """None if `run_accelerator` can run ``backend`` here, else why not."""
    if backend is Backend.TENSORRT:  # the model.plan is built first, by export-gan's code
        from ganserve.export import tensorrt_build

        return tensorrt_build.unavailable()
    from ganserve.serve.backends import cuda

    return cuda.unavailable(backend)


def run_accelerator(
    out: pathlib.Path,
    *,
    backend: Backend,
    windows: Windows,
    concurrency: list[int],
    instances: int,
    log: callable,  # type: ignore[valid-type]
    model: str = DCGAN64,
    engine_seconds: float = 2.0,
    results: Results | None = None,
) -> Results:
    """The GPU protocol (docs/benchmarks.md, "GPU") on ``model`` (the 64x64 RGB DCGAN): the
    engine alone on ``backend`` at batch 1 to 64, then ganserve on that backend with batching on
    (Generate at each concurrency, GenerateBatch(64) at 1, 2 and 4 calls) and off (max batch 1,
    Generate at 1 and 64). No Triton: the PyTriton peer runs ONNX Runtime on the CPU.
    ``results``: as for `run_compare`."""
    out.mkdir(parents=True, exist_ok=True)
    server_log = out / "servers.log"
    tensorrt = backend is Backend.TENSORRT
    repo = ensure_model(out / f"models-{backend.value}", model, tensorrt=tensorrt)
    results = Results() if results is None else results
    results.backend = backend.value
    results.notes += missing_levels(concurrency, ACCELERATOR_LEVELS)
    # ONNX Runtime's TensorRT provider builds an engine per session (a minute or more): one
    # cache serves the engine-alone runs and the servers, which would each build it again.
    cache = out / "trt-cache"
    with _stage(results, f"engine alone, {model}"):
        results.engine[model] = engine_throughput(
            repo,
            model,
            [1, 8, 16, 32, 64],
            seconds=engine_seconds,
            backend=backend,
            cache_dir=cache,
            **CEILING,
        )
        results.parallel[model] = parallel_engine_throughput(
            repo,
            model,
            64,
            instances,
            seconds=engine_seconds,
            backend=backend,
            cache_dir=cache,
            **CEILING,
        )
    args = ("--backend", backend.value, "--instances", str(instances))
    args += ("--engine-cache-dir", str(cache))
    name = f"ganserve {model} {backend.value}"
    classes = repository.latest(repo, model).metadata.num_classes  # 0: unconditional
    raw = lambda ch: targets.ganserve_generate(ch, encoding="raw", num_classes=classes)  # noqa: E731
    batch = lambda ch: targets.ganserve_batch(  # noqa: E731
        ch, encoding="raw", num_classes=classes, items=64
    )
    with (
        _stage(results),
        ganserve(repo, server_log, "--max-batch-size", "64", *args, ready_s=600) as server,
    ):
        sweeps = [
            ("grpc round trip (health)", targets.health_check, [1]),
            (f"{name} Generate raw", raw, concurrency),
            (f"{name} GenerateBatch(64) raw", batch, [1, 2, 4]),
        ]
        for label, call, loads in sweeps:
            asyncio.run(_sweep(results, server, label, call, loads, windows, log=log))
    with (
        _stage(results),
        ganserve(repo, server_log, "--max-batch-size", "1", *args, ready_s=600) as server,
    ):
        asyncio.run(_sweep(results, server, f"{name} batching off", raw, [1, 64], windows, log=log))
    return results


def accelerator_targets(results: Results, model: str = DCGAN64) -> list[Target]:
    """The issue's GPU targets from a `run_accelerator` run."""
    name = f"ganserve {model} {results.backend}"
    out: list[Target] = []
    batch = [p for p in results.points if p.label.startswith(f"{name} GenerateBatch(64)")]
    if batch:
        best = max(p.images_per_s for p in batch)
        out.append(
            vs_ceiling(
                "GenerateBatch(64) img/s vs engine best",
                best,
                ceiling(results, model),
                ">= 0.70",
                lambda v: v >= 0.70,
            )
        )
    on64, off64 = results.get(f"{name} Generate raw c=64"), results.get(f"{name} batching off c=64")
    if on64:
        p99 = on64.latency_ms["p99"]
        out.append(target("Generate c=64 p99, ms", p99, "< 10", lambda v: v < 10))
    if on64 and off64:
        r = ratio(on64.images_per_s, off64.images_per_s)
        out.append(target("batching on vs off, c=64 img/s", r, "report (large)"))
    low = results.get(f"{name} Generate raw c=1")
    if low:
        out.append(target("Generate c=1 p50, ms", low.latency_ms["p50"], "report"))
    return out


def ceiling(results: Results, model: str) -> float:
    """The most images/s the engine alone reaches: one engine at its best batch and thread
    count, or one single-thread engine per server instance running side by side. NaN when
    neither was measured (a run stopped before them)."""
    measured = [v["images_per_s"] for v in results.engine.get(model, {}).values()]
    measured.append(results.parallel.get(model, {}).get("images_per_s", math.nan))
    return max((v for v in measured if math.isfinite(v)), default=math.nan)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    value: float
    goal: str
    met: bool | None  # None: a figure to report, or one this run could not measure or judge
    note: str = ""  # why a target was not judged, when that is not plain


# The levels of --concurrency the targets are built on, and which targets (for the notes).
TARGET_LEVELS = {
    1: "the c=1 targets (p50 vs Triton, p50 vs engine + gRPC round trip)",
    64: "the c=64 targets (req/s and p99 vs Triton, batching on vs off)",
}
ACCELERATOR_LEVELS = {
    1: "the c=1 p50 figure",
    64: "the c=64 targets (p99, batching on vs off)",
}


def ratio(a: float, b: float) -> float:
    """a / b; NaN when b is 0 or either is not finite (a stage with no successful call)."""
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def target(
    name: str, value: float, goal: str, test: Callable[[float], bool] | None = None
) -> Target:
    """A target, met when ``test(value)``; no test: a figure to report. A value this run could
    not measure (NaN) is neither met nor missed."""
    met = test(value) if test is not None and math.isfinite(value) else None
    return Target(name, value, goal, met)


def vs_ceiling(
    name: str, through: float, ceiling: float, goal: str, test: Callable[[float], bool]
) -> Target:
    """A through-server figure as a share of the engine alone's; not judged (met None, "ceiling
    invalid") when above 1: the server cannot beat the engine it calls, so the engine-alone
    figure came out low (a busy machine while it was measured) and no ratio to it means much."""
    r = ratio(through, ceiling)
    if math.isfinite(r) and r > 1.0:
        return Target(
            name,
            r,
            goal,
            None,
            f"ceiling invalid: {through:.0f} img/s through the server is above the engine "
            f"alone's {ceiling:.0f} img/s, which was measured low",
        )
    return target(name, r, goal, test)


def targets_met(results: Results) -> list[Target]:
    """The issue's targets as ratios from this one run."""
    out: list[Target] = []
    g64 = results.get("ganserve Generate raw c=64")
    t64 = results.get("triton ModelInfer c=64")
    g1 = results.get("ganserve Generate raw c=1")
    t1 = results.get("triton ModelInfer c=1")
    rtt = results.get("grpc round trip (health) c=1")
    off64 = results.get("ganserve batching off c=64")
    alone_b1 = results.engine.get("digits", {}).get(1, {}).get("median_ms", math.nan)
    if g64 and t64:
        r = ratio(g64.requests_per_s, t64.requests_per_s)
        out.append(target("Generate c=64 req/s vs Triton", r, ">= 2.0x", lambda v: v >= 2.0))
        r = ratio(g64.latency_ms["p99"], t64.latency_ms["p99"])
        out.append(target("Generate c=64 p99 vs Triton", r, "<= 0.5x", lambda v: v <= 0.5))
    if g1 and t1:
        r = ratio(g1.latency_ms["p50"], t1.latency_ms["p50"])
        out.append(target("Generate c=1 p50 vs Triton", r, "<= 0.3x", lambda v: v <= 0.3))
    if g1 and rtt:
        over = g1.latency_ms["p50"] - (alone_b1 + rtt.latency_ms["p50"] + 0.3)
        name = "Generate c=1 p50 - (engine b1 + gRPC RTT + 0.3 ms), ms"
        out.append(target(name, over, "<= 0", lambda v: v <= 0))
    batch = [p for p in results.points if p.label.startswith("ganserve GenerateBatch(64)")]
    if batch:
        best = max(p.images_per_s for p in batch)
        out.append(
            vs_ceiling(
                "GenerateBatch(64) img/s vs engine best",
                best,
                ceiling(results, "digits"),
                ">= 0.85",
                lambda v: v >= 0.85,
            )
        )
    dc = results.get("ganserve dcgan64 RGB Generate raw c=64")
    if dc:
        out.append(
            vs_ceiling(
                "dcgan64 RGB raw c=64 img/s vs engine best",
                dc.images_per_s,
                ceiling(results, DCGAN64),
                ">= 0.90",
                lambda v: v >= 0.90,
            )
        )
    if g64 and off64:
        r = ratio(g64.images_per_s, off64.images_per_s)
        out.append(target("batching on vs off, c=64 img/s", r, "report (CPU)"))
    # How far the serving path alone could go: with no model to speak of, and with no work.
    for label, name in (
        ("ganserve tiny-model Generate raw c=64", "tiny model (no compute) c=64 req/s vs Triton"),
        ("grpc round trip (health) c=64", "bare gRPC (health) c=64 req/s vs Triton"),
    ):
        point = results.get(label)
        if point and t64:
            out.append(target(name, ratio(point.requests_per_s, t64.requests_per_s), "context"))
    return out
