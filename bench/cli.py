"""`gan-bench`: measure a ganserve (or Triton) server like perf_analyzer does.

Examples:

\b
    gan-bench run --target localhost:50051 --concurrency 1,8,64,256
    gan-bench run --target localhost:50051 --rpc batch --items 64 --encoding raw
    gan-bench run --target localhost:50051 --rate 500 --poisson --metrics-url \\
        http://localhost:8000/metrics --json out.json --csv out.csv --plot out.png
    gan-bench run --target localhost:8001 --server triton --model digits --num-classes 10
    gan-bench compare --out build/bench          # every baseline side by side (make bench)
    gan-bench soak --calls 100000 --concurrency 128   # reliability runs (make soak)
    gan-bench overload --queue-size 64 --factor 3
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile

import click
import grpc
from click.core import ParameterSource

from ganserve.bench import report, targets
from ganserve.bench.load import Point, Windows, measure
from ganserve.client.cli import FiniteFloat, checked_target
from ganserve.serve.backends import Backend

MAX_CONCURRENCY = 65536
BENCH_BACKENDS = [b for b in Backend if b is not Backend.AUTO]


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(x) for x in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if min(out) < 1 or max(out) > MAX_CONCURRENCY:
        raise click.BadParameter(f"concurrency levels must be in 1..{MAX_CONCURRENCY}")
    return out


def _output_file(
    ctx: click.Context, param: click.Parameter, value: pathlib.Path | None
) -> pathlib.Path | None:
    """An output that can be written: checked before minutes of measuring, not after."""
    if value is None:
        return value
    if not value.parent.is_dir():
        raise click.BadParameter(f"folder {value.parent} does not exist")
    existed = value.exists()
    try:  # opened, not os.access: that says yes to root, and to /proc, where nothing is made
        with value.open("a"):
            pass
        if not existed:
            value.unlink()
    except OSError as exc:
        raise click.BadParameter(f"cannot write {value}: {exc.strerror}") from None
    return value


def _plot_file(
    ctx: click.Context, param: click.Parameter, value: pathlib.Path | None
) -> pathlib.Path | None:
    """`_output_file`, in a format matplotlib writes."""
    value = _output_file(ctx, param, value)
    if value is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        formats = FigureCanvasAgg.get_supported_filetypes()
        if value.suffix.lower().lstrip(".") not in formats:
            raise click.BadParameter(
                f"{value.name}: end it in one of {', '.join('.' + f for f in sorted(formats))}"
            )
    return value


def _output_folder(ctx: click.Context, param: click.Parameter, value: pathlib.Path) -> pathlib.Path:
    """A folder that exists or is made now, and that a file can be written in: tried, not
    judged by os.access, which says yes to root, and to /proc and /sys, where nothing is made."""
    try:
        value.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=value).close()
    except (FileExistsError, NotADirectoryError):
        file = next((p for p in (value, *value.parents) if p.exists() and not p.is_dir()), value)
        raise click.BadParameter(f"cannot make folder {value}: {file} is a file") from None
    except OSError as exc:
        raise click.BadParameter(f"cannot write in folder {value}: {exc.strerror}") from None
    return value


def _metrics_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value


_windows = [
    click.option("--warmup", type=FiniteFloat(0, 3600), default=1.0, help="Seconds of warm-up."),
    click.option(
        "--window", type=FiniteFloat(0.1, 3600), default=2.0, help="Seconds per measurement window."
    ),
    click.option(
        "--max-windows",
        type=click.IntRange(3),
        default=8,
        help="Windows before giving up on stability (the last 3 must agree: max/min <= 1.10).",
    ),
]


def _with_windows(fn):
    for option in reversed(_windows):
        fn = option(fn)
    return fn


def _echo_point(point: Point) -> None:
    click.echo(report.table([point]).splitlines()[1], err=True)


def _write(
    points: list[Point],
    json_path: pathlib.Path | None,
    csv_path: pathlib.Path | None,
    plot_path: pathlib.Path | None,
    title: str,
    extra: dict | None = None,
) -> None:
    """The points as JSON (with ``extra``: what made them), CSV and a plot, where asked."""
    try:
        if json_path:
            report.write_json(points, json_path, extra)
        if csv_path:
            report.write_csv(points, csv_path)
        if plot_path:
            report.plot(points, plot_path, title)
    except OSError as exc:  # checked before the run, but a disk can fill up meanwhile
        raise click.ClickException(f"cannot write {exc.filename}: {exc.strerror}") from None


_STOPPED_BY: list[int] = []  # SIGTERM or SIGHUP, once one is stopping this run


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    """Hand SIGTERM or SIGHUP to whatever handles Ctrl-C now: inside an event loop that is
    asyncio's, which cancels the run where it waits. Raising from here instead is lost when the
    signal lands in a weakref callback, whose exceptions Python only prints."""
    _STOPPED_BY.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # Ctrl-C ignored (a background job): stop all the same
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def _stop_code() -> int:
    """128 + the signal that stopped the run, as shells report it (130: Ctrl-C)."""
    return 128 + (_STOPPED_BY[0] if _STOPPED_BY else signal.SIGINT)


def _stop_name() -> str:
    return signal.Signals(_stop_code() - 128).name


def _stoppable(command):
    """Ctrl-C, SIGTERM or SIGHUP: one line and 128 + the signal, after every `finally` ran
    (the servers a run started are stopped, not orphaned), not click's 'Aborted!' and 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo(
                f"stopped by {_stop_name()}: the servers this run started are stopped", err=True
            )
            raise SystemExit(_stop_code()) from None

    return wrapper


@click.group(context_settings={"show_default": True})
def main() -> None:
    """Benchmark ganserve: load generation, side-by-side comparisons."""
    # kill, timeout and a cancelled CI job send SIGTERM (a closed terminal SIGHUP): stop as on
    # Ctrl-C. A signal already ignored (nohup) stays ignored.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _stop_like_ctrl_c)


@main.command(help=__doc__)
@click.option(
    "--target", default="localhost:50051", callback=checked_target, help="host:port of the server."
)
@click.option("--server", type=click.Choice(["ganserve", "triton"]), default="ganserve")
@click.option(
    "--rpc",
    type=click.Choice(["generate", "batch"]),
    default="generate",
    help="Generate (unary) or GenerateBatch (--items images a call).",
)
@click.option(
    "--items",
    type=click.IntRange(1, 4096),
    default=None,
    help="Images per GenerateBatch call (--rpc batch only) [default: 64].",
)
@click.option("--encoding", type=click.Choice(["raw", "png"]), default="raw")
@click.option("--model", default="", help="Model name (Triton needs it).")
@click.option(
    "--num-classes",
    type=click.IntRange(0),
    default=None,
    help="Classes to cycle through [default: ask ganserve; 10 for Triton].",
)
@click.option(
    "--concurrency",
    callback=_ints,
    default=None,
    help="Comma-separated concurrency levels [default: 1,8,64,256 unless --rate].",
)
@click.option(
    "--rate",
    type=FiniteFloat(0, 1e6, min_open=True),
    default=None,
    help="Fixed request rate (requests/s) instead of concurrency.",
)
@click.option("--poisson", is_flag=True, help="Poisson arrivals at --rate (else constant).")
@click.option(
    "--metrics-url",
    default=None,
    callback=_metrics_url,
    help="ganserve /metrics URL, for the server's batch size and queue time.",
)
@_with_windows
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    callback=_output_file,
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    callback=_output_file,
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    callback=_plot_file,
    help="Latency-vs-throughput PNG (or another format matplotlib writes).",
)
def run(
    target: str,
    server: str,
    rpc: str,
    items: int,
    encoding: str,
    model: str,
    num_classes: int | None,
    concurrency: list[int] | None,
    rate: float | None,
    poisson: bool,
    metrics_url: str | None,
    warmup: float,
    window: float,
    max_windows: int,
    json_path: pathlib.Path | None,
    csv_path: pathlib.Path | None,
    plot_path: pathlib.Path | None,
) -> None:
    if rate is not None and concurrency is not None:
        raise click.UsageError("give --concurrency or --rate, not both")
    if poisson and rate is None:
        raise click.UsageError("--poisson shapes the arrivals of --rate: add --rate")
    if items is not None and rpc != "batch":
        raise click.UsageError("--items is the images of one GenerateBatch call: add --rpc batch")
    items = 64 if items is None else items
    if server == "triton" and (rpc != "generate" or not model):
        raise click.UsageError("--server triton needs --model and takes --rpc generate only")
    if server == "triton" and encoding == "png":
        raise click.UsageError(
            "--encoding png: Triton answers with raw uint8 tensors; leave --encoding out (raw) "
            "with --server triton"
        )
    if rate is not None and rate * window < 1:
        raise click.UsageError(
            f"a {window:g} s window at {rate:g} calls/s holds less than one call: "
            "raise --rate or --window"
        )
    windows = Windows(warmup_s=warmup, window_s=window, max_windows=max_windows)
    title = f"gan-bench: {server} {rpc} {encoding}"
    points: list[Point] = []  # filled point by point, so an interrupted run keeps its points
    levels = concurrency or ([] if rate else [1, 8, 64, 256])
    made_by = {  # what made these points, written next to them (as `compare` does)
        "run": {
            "target": target,
            "server": server,
            "rpc": rpc,
            "encoding": encoding,
            "items": items if rpc == "batch" else 1,
            "model": model,
            "num_classes": num_classes,
            "concurrency": levels,
            "rate": rate,
            "poisson": poisson,
            "metrics_url": metrics_url,
            "windows": dataclasses.asdict(windows),
        },
        "machine": _machine(),
    }
    write = functools.partial(
        _write,
        json_path=json_path,
        csv_path=csv_path,
        plot_path=plot_path,
        title=title,
        extra=made_by,
    )
    try:
        asyncio.run(
            _run(
                points,
                target,
                server,
                rpc,
                items,
                encoding,
                model,
                num_classes,
                levels,
                rate,
                poisson,
                metrics_url,
                windows,
            )
        )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP (_stop_like_ctrl_c)
        if points:
            write(points)
            click.echo(f"stopped: the {len(points)} point(s) measured are written", err=True)
        raise SystemExit(_stop_code()) from None
    except Exception as exc:  # a dead server is one line, not a traceback
        code = exc.code().name if hasattr(exc, "code") and callable(exc.code) else ""
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if points:  # minutes of measuring are kept: a later point's failure is not theirs
            write(points)
            click.echo(f"failed: the {len(points)} point(s) measured are written", err=True)
        raise click.ClickException(f"{code}: {details}".strip(": ")) from None
    click.echo(report.table(points))
    write(points)
    empty = [p.label for p in points if not p.requests_per_s]
    if empty:  # a script must see it: the table alone would pass for a (slow) result
        raise click.ClickException(f"no call succeeded at {', '.join(empty)}: see the error codes")


async def _run(
    points: list[Point],
    target: str,
    server: str,
    rpc: str,
    items: int,
    encoding: str,
    model: str,
    num_classes: int | None,
    concurrency: list[int],
    rate: float | None,
    poisson: bool,
    metrics_url: str | None,
    windows: Windows,
) -> None:
    """Measure each load and append its point to ``points``."""
    ch = targets.channel(target)
    try:
        if server == "ganserve":
            from ganserve.v1 import generator_pb2, generator_pb2_grpc

            try:
                info = await generator_pb2_grpc.GeneratorStub(ch).GetModelInfo(
                    generator_pb2.GetModelInfoRequest(model=model), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    raise
                raise ValueError(
                    f"{target} does not serve ganserve's Generator API (GetModelInfo is "
                    "UNIMPLEMENTED there): for Triton, add --server triton --model NAME"
                ) from None
            classes = info.num_classes if num_classes is None else num_classes
            if classes > info.num_classes or (classes == 0) != (info.num_classes == 0):
                raise ValueError(
                    f"--num-classes {classes} does not fit model {info.name!r}, which has "
                    f"{info.num_classes or 'no'} classes: every call would fail "
                    f"(leave it out to use the model's)"
                )
            if rpc == "batch" and items > info.max_items_per_call:
                raise ValueError(
                    f"--items {items} is over model {info.name!r}'s max_items_per_call "
                    f"({info.max_items_per_call}): every call would fail"
                )
            call = (
                targets.ganserve_batch(
                    ch, encoding=encoding, num_classes=classes, items=items, model=model
                )
                if rpc == "batch"
                else targets.ganserve_generate(
                    ch, encoding=encoding, num_classes=classes, model=model
                )
            )
            shape = f"batch({items})" if rpc == "batch" else rpc
            name = f"ganserve {info.name} {shape} {encoding}"
            scraped = info.name  # the server may answer other models meanwhile
        else:
            await targets.triton_ready(ch, target, model)
            classes = 10 if num_classes is None else num_classes
            call = targets.triton_infer(ch, model=model, num_classes=classes)
            name = f"triton {model}"
            scraped = model
        scrape = targets.ganserve_scraper(metrics_url, model=scraped) if metrics_url else None
        for load in concurrency:
            points.append(
                await measure(
                    call, label=f"{name} c={load}", concurrency=load, windows=windows, scrape=scrape
                )
            )
            _echo_point(points[-1])
        if rate is not None:
            points.append(
                await measure(
                    call,
                    label=f"{name} @{rate:g}/s {'poisson' if poisson else 'constant'}",
                    rate=rate,
                    poisson=poisson,
                    windows=windows,
                    scrape=scrape,
                )
            )
            _echo_point(points[-1])
    finally:
        await ch.close()


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default="build/bench",
    callback=_output_folder,
    help="Folder for the JSON, CSV, plot and summary.",
)
@click.option(
    "--triton-python",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    default="build/triton-venv/bin/python",
    help="Python of the PyTriton environment (skipped when missing).",
)
@click.option("--concurrency", callback=_ints, default="1,8,64,256")
@click.option(
    "--instances",
    type=click.IntRange(1, 64),
    default=None,
    help="Engine instances for both servers [default: one per core; 1 on a GPU].",
)
@click.option(
    "--backend",
    type=click.Choice([b.value for b in BENCH_BACKENDS]),
    default="onnxruntime-cpu",
    help="A GPU backend runs the GPU protocol instead: the 64x64 RGB DCGAN, engine alone and "
    "through ganserve on that backend, batching on and off, and the GPU targets.",
)
@_with_windows
@_stoppable
def compare(
    out: pathlib.Path,
    triton_python: pathlib.Path,
    concurrency: list[int],
    instances: int | None,
    backend: str,
    warmup: float,
    window: float,
    max_windows: int,
) -> None:
    """Engine alone, ganserve (batching on/off), Triton and a 64x64 RGB DCGAN, in one run."""
    from ganserve.bench.compare import (
        Results,
        accelerator_targets,
        accelerator_unavailable,
        run_accelerator,
        run_compare,
        targets_met,
    )

    windows = Windows(warmup_s=warmup, window_s=window, max_windows=max_windows)
    given = click.get_current_context().get_parameter_source("triton_python")
    if given is not ParameterSource.DEFAULT and not triton_python.is_file():
        raise click.BadParameter(f"{triton_python} is not a file", param_hint="'--triton-python'")
    # Absolute: a bare name ("python") would be looked up on PATH, not run from here.
    python = triton_python.absolute() if triton_python.is_file() else None
    if python is not None:  # now, not as "Triton exited" minutes into the run
        _check_pytriton(python)
    engine_backend = Backend(backend)
    results = Results(backend=backend)
    try:
        if engine_backend is Backend.ONNXRUNTIME_CPU:
            met_by = targets_met
            run_compare(
                out,
                triton_python=python,
                windows=windows,
                concurrency=concurrency,
                instances=instances or len(os.sched_getaffinity(0)),
                log=_echo_point,
                results=results,
            )
        else:
            met_by = accelerator_targets
            reason = accelerator_unavailable(engine_backend)
            if reason:
                raise click.ClickException(f"--backend {backend} cannot run here: {reason}")
            run_accelerator(
                out,
                backend=engine_backend,
                windows=windows,
                concurrency=concurrency,
                instances=instances or 1,
                log=_echo_point,
                results=results,
            )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP: keep what was measured
        if results.points or results.engine:  # beside, not over, a finished run's files
            results.failed.append(f"stopped by {_stop_name()} before the run ended")
            _write_compare(out, results, met_by(results), echo=False, stem=".partial")
            click.echo(f"stopped: what was measured is written to {out}/*.partial.*", err=True)
        raise
    _write_compare(out, results, met_by(results), echo=True)
    if results.failed:  # after writing: what was measured is kept
        raise click.ClickException("part of the run failed: " + "; ".join(results.failed))


def _check_pytriton(python: pathlib.Path) -> None:
    """BadParameter, in one line, unless ``python`` runs and imports pytriton."""
    try:
        done = subprocess.run(
            [str(python), "-c", "import pytriton"], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it did not answer in 120 s"
        raise click.BadParameter(
            f"cannot run {python}: {why}", param_hint="'--triton-python'"
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise click.BadParameter(
            f"{python} cannot import pytriton ({last}): give the Python of a PyTriton "
            "environment (make bench creates build/triton-venv)",
            param_hint="'--triton-python'",
        )


def _write_compare(out: pathlib.Path, results, met, *, echo: bool, stem: str = "") -> None:
    """summary.md, results.json and .csv, and the plot of a `compare` run (``stem`` before
    each suffix: ".partial" for a stopped run)."""
    summary = _summary(results, met)
    if echo:
        click.echo(summary)
    (out / f"summary{stem}.md").write_text(summary + "\n")
    _write(
        results.points,
        out / f"results{stem}.json",
        out / f"results{stem}.csv",
        out / f"latency{stem}.png",
        "gan-bench compare: latency vs throughput",
        {
            "engine": results.engine,
            "parallel_engine": results.parallel,
            "targets": [t.__dict__ for t in met],
            "notes": results.notes,
            "failed": results.failed,
            "machine": _machine(),
        },
    )


def _reliability_run(
    out: pathlib.Path, name: str, repo: pathlib.Path, server_args: list[str], run
) -> None:
    """Start ganserve on ``repo``, await run(server), print and save its figures; exit 1 when
    the run's verdict is a failure, or, in one line naming its log, when the server does not
    start."""
    from ganserve.bench.compare import ServerStartError, ganserve

    out.mkdir(parents=True, exist_ok=True)
    try:
        with ganserve(repo, out / f"{name}-server.log", *server_args) as server:
            figures = asyncio.run(run(server))
    except ServerStartError as exc:
        raise click.ClickException(str(exc)) from None
    figures["machine"] = _machine()
    report.dump_json(figures, out / f"{name}.json")
    width = max(map(len, figures))
    for key, value in figures.items():
        click.echo(f"{key:<{width}}  {value}")
    if not figures["passed"]:
        raise SystemExit(1)


@main.command()
@click.option("--calls", type=click.IntRange(1), default=100_000, help="Calls after warm-up.")
@click.option("--concurrency", type=click.IntRange(1), default=128)
@click.option("--warmup-calls", type=click.IntRange(1), default=10_000)
@click.option("--rss-budget-mb", type=FiniteFloat(0), default=50.0)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default="build",
    callback=_output_folder,
)
@_stoppable
def soak(calls: int, concurrency: int, warmup_calls: int, rss_budget_mb: float, out) -> None:
    """Many Generate calls against a fresh server: every status documented, none hanging,
    memory flat (exit 1 otherwise)."""
    from ganserve.bench.compare import REPO_ROOT
    from ganserve.bench.reliability import soak as run_soak

    _reliability_run(
        out,
        "soak",
        REPO_ROOT / "models",
        [],
        lambda server: run_soak(
            server.target,
            server.pid,
            calls=calls,
            concurrency=concurrency,
            warmup_calls=warmup_calls,
            rss_budget_mb=rss_budget_mb,
        ),
    )


@main.command()
@click.option(
    "--model",
    type=click.Choice(["dcgan64", "digits"]),
    default="dcgan64",
    help="dcgan64: the engine is the bottleneck (the case shedding is for); digits: gRPC is.",
)
@click.option("--queue-size", type=click.IntRange(2), default=64)
@click.option(
    "--factor",
    type=FiniteFloat(1, min_open=True),
    default=3.0,
    help="Offered load as a multiple of the measured capacity.",
)
@click.option("--calls", type=click.IntRange(1), default=10_000)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default="build",
    callback=_output_folder,
)
@_stoppable
def overload(model: str, queue_size: int, factor: float, calls: int, out: pathlib.Path) -> None:
    """Offered load beyond a small queue: shed fast, queue bounded, goodput against capacity
    (exit 1 on an undocumented status or a queue past its size)."""
    from ganserve.bench.compare import REPO_ROOT
    from ganserve.bench.models import DCGAN64, ensure_model
    from ganserve.bench.reliability import overload as run_overload

    repo = ensure_model(out / "models", DCGAN64) if model == DCGAN64 else REPO_ROOT / "models"
    _reliability_run(
        out,
        "overload",
        repo,
        # One core left to gRPC: with every core in the engine, the event loop lags under
        # sustained overload and gRPC itself starts cancelling calls the server has not
        # picked up yet (see docs/reliability.md).
        [
            "--max-queue-size",
            str(queue_size),
            "--default-model",
            model,
            "--intra-op-threads",
            str(max(1, len(os.sched_getaffinity(0)) - 1)),
        ],
        lambda server: run_overload(
            server.target,
            server.metrics_url,
            queue_size=queue_size,
            calls=calls,
            factor=factor,
        ),
    )


def _machine() -> dict[str, str]:
    import grpc
    import onnxruntime

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": str(len(os.sched_getaffinity(0))),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _summary(results, met) -> str:
    lines = [
        f"## Engine alone (in process, {results.backend})",
        "",
        "| model | batch | images/s | ms per call |",
        "| --- | --- | --- | --- |",
    ]
    for model, sizes in results.engine.items():
        for batch, v in sizes.items():
            lines.append(
                f"| {model} | {batch} | {v['images_per_s']:.0f} | "
                f"{v['median_ms']:.3f} ({v['threads']} thread(s)) |"
            )
        if p := results.parallel.get(model):  # not yet measured when a run was stopped
            lines.append(
                f"| {model} | 64, {p['instances']} single-thread engines side by side | "
                f"{p['images_per_s']:.0f} | |"
            )
    lines += [
        "",
        "## Through gRPC",
        "",
        "```",
        report.table(results.points),
        "```",
        "",
        "## Targets",
        "",
        "| target | this run | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    for t in met:
        verdict = "n/a" if t.met is None else ("yes" if t.met else "**no**")
        verdict = "not judged" if t.note else verdict
        lines.append(f"| {t.name} | {t.value:.2f} | {t.goal} | {verdict} |")
    if not met:
        lines.append("| (none: the points they need were not measured; see below) | | | |")
    notes = [
        *results.notes,
        *(f"{t.name}: {t.note}" for t in met if t.note),
        *(f"failed: {f}" for f in results.failed),
    ]
    lines += ["", *[f"- {n}" for n in notes], "", "Machine: " + json.dumps(_machine())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
