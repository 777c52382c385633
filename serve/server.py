"""Server lifecycle: load the repository, start gRPC (+ health, reflection) and /metrics, drain.

server = GanServer(config)
await server.start()          # server.port, server.metrics_port are the bound ports
await server.stop()           # NOT_SERVING, refuse new work, drain within the grace period
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import prometheus_client as prom
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ganserve.serve import repository
from ganserve.serve.batcher import Batcher
from ganserve.serve.config import ServerConfig
from ganserve.serve.engine import OnnxEngine
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metrics import ServerMetrics
from ganserve.serve.servicer import GeneratorServicer, LoadedModel
from ganserve.v1 import generator_pb2, generator_pb2_grpc

LOGGER = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name
# Health is reported for the whole server ("") and for the Generator service by name.
HEALTH_NAMES = ("", SERVICE_NAME)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def load_models(config: ServerConfig, metrics: ServerMetrics) -> tuple[dict[str, LoadedModel], str]:
    """Open the latest version of every model in the repository; return them and the default."""
    root = config.model_repository
    names = repository.model_names(root)
    if not names:
        raise ModelLoadError(f"model repository {root} holds no <name>/<version>/ folders")
    default = config.default_model
    if default is None:
        if len(names) > 1:
            raise ModelLoadError(
                f"model repository {root} holds several models ({', '.join(names)}); "
                "choose one with --default-model"
            )
        default = names[0]
    elif default not in names:
        raise ModelLoadError(
            f"--default-model {default!r} is not in {root} (found: {', '.join(names)})"
        )
    models = {}
    for name in names:
        version = repository.latest(root, name)
        engine = OnnxEngine(
            version.onnx_path,
            version.metadata,
            backend=config.backend,
            intra_op_threads=config.intra_op_threads,
        )
        batcher = Batcher(engine, config.batching, metrics, model=name)
        models[name] = LoadedModel(version.metadata, engine.backend.value, batcher)
        metrics.model_info.labels(name, version.metadata.version, engine.backend.value).set(1)
        LOGGER.info("loaded model %s version %s on %s", name, version.version, engine.backend.value)
    return models, default


class GanServer:
    """One ganserve process: gRPC server, health, reflection, metrics endpoint, batchers."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics(max_batch_size=config.batching.max_batch_size)
        self.models, self.default_model = load_models(config, self.metrics)
        self.health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._metrics_http = None
        self.port = 0
        self.metrics_port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        config = self.config
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        servicer = GeneratorServicer(
            self.models,
            default_model=self.default_model,
            max_batch_size=config.batching.max_batch_size,
            metrics=self.metrics,
        )
        generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{config.host}:{config.port}"
        self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC address {address}")
        if config.metrics_port >= 0:
            self._metrics_http, _ = prom.start_http_server(
                config.metrics_port, addr=config.metrics_host, registry=self.metrics.registry
            )
            self.metrics_port = self._metrics_http.server_port
        for model in self.models.values():
            model.batcher.start()
        await server.start()
        self._server = server
        for name in HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        LOGGER.info(
            "serving %s on port %d (metrics on %s)",
            ", ".join(self.models),
            self.port,
            self.metrics_port or "off",
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new work with UNAVAILABLE, finish accepted work, exit.

        The port stays open while draining, so health checks see NOT_SERVING and new calls get
        a clear UNAVAILABLE instead of a refused connection.
        """
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        started = time.monotonic()
        for name in HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.gather(*(m.batcher.close(grace) for m in self.models.values()))
        if self._server is not None:
            # Handlers whose batches finished only have their responses left to write.
            remaining = grace - (time.monotonic() - started)
            await self._server.stop(max(remaining, 1.0))
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        LOGGER.info("stopped after draining for %.2fs", time.monotonic() - started)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
