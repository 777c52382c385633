"""`ganserve serve`: serve a model repository over gRPC, with /metrics for Prometheus.

Examples:

    ganserve serve --model-repository models
    ganserve serve --model-repository /models --port 50051 --metrics-port 8000 \\
        --max-batch-size 64 --max-queue-delay-us 500
    GANSERVE_PORT=6000 ganserve serve --model-repository models

Every option can also be set by an environment variable GANSERVE_<OPTION>, e.g.
GANSERVE_MAX_BATCH_SIZE=32.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import signal
import sys

import click

from ganserve.serve.config import BatchingConfig, ServerConfig
from ganserve.serve.engine import Backend
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.server import GanServer

LOGGER = logging.getLogger("ganserve")


@click.group(context_settings={"auto_envvar_prefix": "GANSERVE", "show_default": True})
def main() -> None:
    """ganserve: fast single-pass GAN image generation over gRPC."""


@main.command(help=__doc__)
@click.option(
    "--model-repository",
    type=click.Path(path_type=pathlib.Path),
    default="models",
    envvar="GANSERVE_MODEL_REPOSITORY",
    help="Folder of <name>/<version>/ models.",
)
@click.option(
    "--default-model",
    default=None,
    envvar="GANSERVE_DEFAULT_MODEL",
    help="Model for requests that name none [default: the only model].",
)
@click.option("--host", default="0.0.0.0", envvar="GANSERVE_HOST", help="gRPC bind address.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=50051,
    envvar="GANSERVE_PORT",
    help="gRPC port (0 = any free port).",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",
    envvar="GANSERVE_METRICS_HOST",
    help="Bind address of the Prometheus /metrics endpoint.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(-1, 65535),
    default=8000,
    envvar="GANSERVE_METRICS_PORT",
    help="/metrics port (0 = any, -1 = off).",
)
@click.option(
    "--backend",
    type=click.Choice([b.value for b in Backend]),
    default="auto",
    envvar="GANSERVE_BACKEND",
    help="Execution backend.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(1, 4096),
    default=64,
    envvar="GANSERVE_MAX_BATCH_SIZE",
    help="Largest batch sent to the engine.",
)
@click.option(
    "--max-queue-delay-us",
    type=click.IntRange(0, 10_000_000),
    default=0,
    envvar="GANSERVE_MAX_QUEUE_DELAY_US",
    help="Longest a request waits for its batch to fill (microseconds).",
)
@click.option(
    "--max-queue-size",
    type=click.IntRange(1),
    default=4096,
    envvar="GANSERVE_MAX_QUEUE_SIZE",
    help="Queued requests per model beyond which calls get RESOURCE_EXHAUSTED.",
)
@click.option(
    "--instances",
    type=click.IntRange(1, 64),
    default=1,
    envvar="GANSERVE_INSTANCES",
    help="Engine calls that may run at once per model.",
)
@click.option(
    "--intra-op-threads",
    type=click.IntRange(0),
    default=0,
    envvar="GANSERVE_INTRA_OP_THREADS",
    help="ONNX Runtime threads (0 = auto).",
)
@click.option(
    "--drain-grace",
    type=click.FloatRange(0),
    default=10.0,
    envvar="GANSERVE_DRAIN_GRACE",
    help="Seconds to finish accepted work on SIGTERM.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default="INFO",
    envvar="GANSERVE_LOG_LEVEL",
)
def serve(**opts: object) -> None:
    logging.basicConfig(
        level=opts.pop("log_level"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = ServerConfig(
            model_repository=opts["model_repository"],
            default_model=opts["default_model"],
            host=opts["host"],
            port=opts["port"],
            metrics_host=opts["metrics_host"],
            metrics_port=opts["metrics_port"],
            backend=Backend(opts["backend"]),
            intra_op_threads=opts["intra_op_threads"],
            drain_grace_s=opts["drain_grace"],
            batching=BatchingConfig(
                max_batch_size=opts["max_batch_size"],
                max_queue_delay_us=opts["max_queue_delay_us"],
                max_queue_size=opts["max_queue_size"],
                instances=opts["instances"],
            ),
        )
        asyncio.run(_serve(config))
    except (ValueError, ModelLoadError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve(config: ServerConfig) -> None:
    server = GanServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if stopping:
            return
        LOGGER.info(
            "received %s: draining for up to %.1fs",
            signal.Signals(signum).name,
            config.drain_grace_s,
        )
        stopping.append(loop.create_task(server.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await server.wait_stopped()


if __name__ == "__main__":
    sys.exit(main())
