"""`ganserve serve`: serve a model repository over gRPC, with /metrics for Prometheus.

Examples:

\b
    ganserve serve --model-repository models
    ganserve serve --config ganserve.toml --port 6000
    GANSERVE_MAX_BATCH_SIZE=32 ganserve serve --model-repository /models
    ganserve serve --tls-cert server.pem --tls-key server.key --auth-token-file token.txt

Settings come from, later winning: defaults, the --config TOML file (keys are the flag names
with underscores), GANSERVE_<FLAG> environment variables, flags. The bearer token is read from
--auth-token-file or the GANSERVE_AUTH_TOKEN variable, never from a flag. SIGTERM drains and
exits (a second SIGTERM or SIGINT exits at once); SIGHUP reloads the model repository.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import gc
import json
import logging
import os
import pathlib
import signal
import sys
from typing import Any

import click
from click.core import ParameterSource

from ganserve.serve import logs, loops
from ganserve.serve.backends import Backend
from ganserve.serve.config import (
    MAX_CONNECTION_AGE_S,
    MAX_DRAIN_S,
    BatchingConfig,
    EventLoop,
    LogFormat,
    LogLevel,
    ServerConfig,
    build_config,
    read_config_file,
)
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.server import GanServer

LOGGER = logging.getLogger("ganserve")
B, S = BatchingConfig, ServerConfig  # dataclass defaults are the flags' defaults


def _sizes(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...]:
    if value is None or isinstance(value, tuple):
        return value or ()
    try:
        return tuple(int(x) for x in str(value).split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


GC_THRESHOLD = 100_000  # container allocations between young-generation collections


@click.group(context_settings={"show_default": True})
def main() -> None:
    """ganserve: fast single-pass GAN image generation over gRPC."""


def _option(*decls: str, env: str, **kwargs: Any):
    return click.option(*decls, envvar=f"GANSERVE_{env}", show_envvar=True, **kwargs)


@main.command(help=__doc__)
@_option(
    "--config",
    "config_file",
    env="CONFIG",
    default=None,
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="TOML config file.",
)
@_option(
    "--model-repository",
    env="MODEL_REPOSITORY",
    default="models",
    type=click.Path(path_type=pathlib.Path),
    help="Folder of <name>/<version>/ models.",
)
@_option(
    "--default-model",
    env="DEFAULT_MODEL",
    default=None,
    help="Model for requests that name none [default: the only model].",
)
@_option(
    "--backend",
    env="BACKEND",
    default=S.backend.value,
    type=click.Choice([b.value for b in Backend]),
    help="Execution backend.",
)
@_option("--host", env="HOST", default=S.host, help="gRPC bind address (IPv6: :: or [::]).")
@_option(
    "--port",
    env="PORT",
    default=S.port,
    type=click.IntRange(0, 65535),
    help="gRPC port (0 = any free port).",
)
@_option(
    "--metrics-host",
    env="METRICS_HOST",
    default=S.metrics_host,
    help="Bind address of /metrics (IPv6: :: or [::]).",
)
@_option(
    "--metrics-port",
    env="METRICS_PORT",
    default=S.metrics_port,
    type=click.IntRange(-1, 65535),
    help="/metrics port (0 = any, -1 = off).",
)
@_option(
    "--max-batch-size",
    env="MAX_BATCH_SIZE",
    default=B.max_batch_size,
    type=click.IntRange(1, 4096),
    help="Largest batch sent to the engine, in images.",
)
@_option(
    "--max-queue-delay-us",
    env="MAX_QUEUE_DELAY_US",
    default=B.max_queue_delay_us,
    type=click.IntRange(0, 10_000_000),
    help="Longest a request waits for its batch to fill (microseconds); a batch closes "
    "sooner when a waiting call's deadline would pass otherwise.",
)
@_option(
    "--parallel-batch-us",
    env="PARALLEL_BATCH_US",
    default=B.parallel_batch_us,
    type=click.IntRange(0, 10_000_000),
    help="With several instances: while a batch runs, start another only once the waiting "
    "images are worth this much engine time (microseconds; 0 = whenever an instance is free).",
)
@_option(
    "--max-queue-size",
    env="MAX_QUEUE_SIZE",
    default=B.max_queue_size,
    type=click.IntRange(1, 10_000_000),
    help="Queued images (GenerateBatch and Interpolate count each) beyond which calls get "
    "RESOURCE_EXHAUSTED.",
)
@_option(
    "--instances",
    env="INSTANCES",
    default=B.instances,
    type=click.IntRange(1, 64),
    help="Engine instances per model version.",
)
@_option(
    "--preferred-batch-sizes",
    env="PREFERRED_BATCH_SIZES",
    default="",
    callback=_sizes,
    help="Comma-separated batch sizes to pad or split batches to (e.g. 8,32,64).",
)
@_option(
    "--intra-op-threads",
    env="INTRA_OP_THREADS",
    default=S.intra_op_threads,
    type=click.IntRange(0, 1024),
    help="ONNX Runtime CPU threads per instance (0 = auto: 1 or the instance's share of the "
    "cores, whichever runs the max batch faster, timed at load).",
)
@_option(
    "--warmup/--no-warmup",
    env="WARMUP",
    default=S.warmup,
    help="Run the batch sizes the batcher sends before reporting SERVING: every size on a "
    "GPU, 1 and the max batch on the CPU, the preferred sizes when set.",
)
@_option(
    "--cache-bytes",
    env="CACHE_BYTES",
    default=S.cache_bytes,
    type=click.IntRange(0, 2**40),
    help="Response cache budget in bytes (0 = off).",
)
@_option(
    "--max-items-per-call",
    env="MAX_ITEMS_PER_CALL",
    default=S.max_items_per_call,
    type=click.IntRange(1, 65536),
    help="Cap on GenerateBatch items / Interpolate frames.",
)
@_option(
    "--max-request-bytes",
    env="MAX_REQUEST_BYTES",
    default=S.max_request_bytes,
    type=click.IntRange(1024, 2**30),
    help="Largest request message accepted.",
)
@_option(
    "--concurrent-accepts",
    env="CONCURRENT_ACCEPTS",
    default=S.concurrent_accepts,
    type=click.IntRange(0, 1024),
    help="Pending accepts per Generator method beyond grpcio's one (0 = grpcio's loop alone).",
)
@_option(
    "--engine-timeout",
    "engine_timeout_s",
    env="ENGINE_TIMEOUT",
    default=B.engine_timeout_s,
    type=click.FloatRange(0.01, 3600),
    help="Seconds a batch may spend in the engine before it fails and the instance is replaced.",
)
@_option(
    "--shutdown-delay",
    "shutdown_delay_s",
    env="SHUTDOWN_DELAY",
    default=S.shutdown_delay_s,
    type=click.FloatRange(0, MAX_DRAIN_S),
    help="On SIGTERM, seconds to keep serving after health turns NOT_SERVING.",
)
@_option(
    "--drain-grace",
    "drain_grace_s",
    env="DRAIN_GRACE",
    default=S.drain_grace_s,
    type=click.FloatRange(0, MAX_DRAIN_S),
    help="Then, seconds for accepted work to finish.",
)
@_option(
    "--max-connection-age",
    "max_connection_age_s",
    env="MAX_CONNECTION_AGE",
    default=S.max_connection_age_s,
    type=click.FloatRange(0, MAX_CONNECTION_AGE_S),
    help="Seconds after which each client connection is asked to reconnect (GOAWAY; calls in "
    "flight finish), so clients of a headless Service find new pods: 1 to 86400, or 0: never.",
)
@_option(
    "--tls-cert",
    env="TLS_CERT",
    default=None,
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="PEM certificate chain.",
)
@_option(
    "--tls-key",
    env="TLS_KEY",
    default=None,
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="PEM private key.",
)
@_option(
    "--tls-client-ca",
    env="TLS_CLIENT_CA",
    default=None,
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="PEM CA for client certificates: turns on mutual TLS.",
)
@_option(
    "--auth-token-file",
    env="AUTH_TOKEN_FILE",
    default=None,
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="File holding the bearer token every RPC but health must send.",
)
@_option(
    "--engine-cache-dir",
    env="ENGINE_CACHE_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Writable folder for TensorRT engine caches.",
)
@_option(
    "--log-format",
    env="LOG_FORMAT",
    default=S.log_format.value,
    type=click.Choice([f.value for f in LogFormat]),
    help="Log line format.",
)
@_option(
    "--event-loop",
    env="EVENT_LOOP",
    default=S.event_loop.value,
    type=click.Choice([f.value for f in EventLoop]),
    help="Event loop: uvloop, asyncio's own, or auto (uvloop when installed).",
)
@_option(
    "--access-log/--no-access-log",
    env="ACCESS_LOG",
    default=S.access_log,
    help="One log line per request.",
)
@_option(
    "--admin/--no-admin",
    env="ADMIN",
    default=S.admin,
    help="Serve ModelAdmin (list/reload models); behind the bearer token when one is set.",
)
@_option(
    "--log-level",
    env="LOG_LEVEL",
    default=S.log_level.value,
    type=click.Choice([level.value for level in LogLevel], case_sensitive=False),
    help="The least severe log records written.",
)
@click.option(
    "--dry-run", is_flag=True, help="Validate the settings, print them resolved as JSON, and exit."
)
@click.pass_context
def serve(
    ctx: click.Context,
    config_file: pathlib.Path | None,
    dry_run: bool,
    **flags: Any,
) -> None:
    try:
        settings = read_config_file(config_file) if config_file else {}
        # Flags and env vars win over the file; click's own defaults lose to it.
        for key, value in flags.items():
            if key not in settings or ctx.get_parameter_source(key) is not ParameterSource.DEFAULT:
                settings[key] = value
        if "GANSERVE_AUTH_TOKEN" in os.environ:
            settings["auth_token"] = os.environ["GANSERVE_AUTH_TOKEN"]
            if ctx.get_parameter_source("auth_token_file") is ParameterSource.DEFAULT:
                settings.pop("auth_token_file", None)  # the environment beats the file
        settings = {k: v for k, v in settings.items() if v is not None}
        config = build_config(settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if dry_run:
        click.echo(json.dumps(_describe(config), indent=2, sort_keys=True))
        return
    logs.configure(config.log_level.value, config.log_format)
    # Every call allocates a few hundred container objects (tasks, futures, messages), so at
    # the default threshold (700) the collector ran many times a second, each time holding the
    # GIL the event loop and the engines need: unary throughput at c=64 rose ~5 % and p99 fell
    # ~10 % with this one (docs/benchmarks.md). Cyclic garbage is still collected, less often.
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    try:
        new_loop = loops.loop_factory(config.event_loop)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(_serve(config))
    except (ModelLoadError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


def _describe(config: ServerConfig) -> dict[str, Any]:
    """The resolved config as plain JSON values, secrets redacted."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, pathlib.Path):
            return str(value)
        return value

    out = plain(config)
    if out["auth_token"] is not None:
        out["auth_token"] = "<redacted>"
    return out


async def _serve(config: ServerConfig) -> None:
    server = GanServer(config)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    signalled: list[int] = []

    def on_stop(signum: int) -> None:
        name = signal.Signals(signum).name
        if signalled:
            # An operator who asks twice does not want to wait out the delay and the grace.
            LOGGER.warning("received %s again: exiting now, without draining", name)
            logging.shutdown()
            os._exit(128 + signum)
        signalled.append(signum)
        if not starting.done():
            # Nothing serves yet: stop loading (a long load, a TensorRT build, would outlast
            # the pod's grace) and close the port. The load's thread is a daemon.
            LOGGER.info("received %s while loading models: stopping", name)
            starting.cancel()
            return
        LOGGER.info("received %s: draining", name)
        task = loop.create_task(server.stop())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_reload() -> None:
        LOGGER.info("received SIGHUP: reloading the model repository and credential files")
        task = loop.create_task(server.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    starting = loop.create_task(server.start())
    try:
        await starting
    except asyncio.CancelledError:
        if not signalled:  # not our signal: someone else cancels this task
            raise
        LOGGER.info("stopped before serving")
        return
    await server.wait_stopped()


if __name__ == "__main__":
    sys.exit(main())
