"""Server lifecycle.

server = GanServer(config)
await server.start()   # port open at once with health NOT_SERVING; SERVING once warm
await server.reload()  # what SIGHUP does: models, TLS and token files
await server.stop()    # NOT_SERVING, keep serving for shutdown_delay_s, then refuse new
                       # work with UNAVAILABLE and drain within drain_grace_s, then exit
"""

from __future__ import annotations

import asyncio
import logging
import time
from wsgiref.simple_server import WSGIServer

import grpc
import prometheus_client as prom
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ganserve.serve import accept, loops
from ganserve.serve.admin import ModelAdminServicer
from ganserve.serve.cache import ResponseCache
from ganserve.serve.config import ServerConfig
from ganserve.serve.credentials import Credentials
from ganserve.serve.gpu_metrics import register_gpu_metrics
from ganserve.serve.metrics import ServerMetrics
from ganserve.serve.models import ModelManager, Status
from ganserve.serve.servicer import SERVICE_NAME, GeneratorServicer
from ganserve.serve.wire import GuardedRegistrar
from ganserve.v1 import admin_pb2, admin_pb2_grpc, generator_pb2_grpc

LOGGER = logging.getLogger(__name__)

ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
# Health is reported for the whole server ("") and for the Generator service by name.
HEALTH_NAMES = ("", SERVICE_NAME)
REFUSE_AT_LEAST_S = 0.5  # of the drain, answering UNAVAILABLE before the port closes
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def grpc_address(host: str, port: int) -> str:
    """host:port as gRPC wants it: IPv6 literals in brackets, whichever way they were given."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _metrics_server(config: ServerConfig, registry: prom.CollectorRegistry) -> WSGIServer:
    address = grpc_address(config.metrics_host, config.metrics_port)
    try:
        # The HTTP server wants IPv6 literals bare: ::1, not [::1].
        http, _ = prom.start_http_server(
            config.metrics_port, addr=config.metrics_host.strip("[]"), registry=registry
        )
    except OSError as exc:
        raise OSError(
            f"cannot listen on metrics address {address}: {exc.strerror or exc}; choose another "
            "--metrics-port or --metrics-host (or --metrics-port -1 for no metrics endpoint)"
        ) from None
    return http


class GanServer:
    """One ganserve process: gRPC (Generator, ModelAdmin, health, reflection) and /metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics(max_batch_size=config.batching.max_batch_size)
        register_gpu_metrics(self.metrics.registry)  # no-op without NVML and a GPU
        self.models = ModelManager(config, self.metrics)
        self.credentials = Credentials(config, self.metrics)
        self._watch: asyncio.Task | None = None
        self.health = health_aio.HealthServicer()
        cache = ResponseCache(config.cache_bytes, self.metrics) if config.cache_bytes else None
        self.servicer = GeneratorServicer(
            self.models,
            metrics=self.metrics,
            max_batch_size=config.batching.max_batch_size,
            # A call's items join the queue together: a call larger than the queue could never.
            max_items_per_call=min(config.max_items_per_call, config.batching.max_queue_size),
            max_response_bytes=MAX_RESPONSE_BYTES,
            cache=cache,
            access_log=config.access_log,
        )
        self._server: grpc.aio.Server | None = None
        self.accepts: accept.ConcurrentAccepts | None = None
        self._metrics_http: WSGIServer | None = None
        self.port = 0
        self.metrics_port = 0
        self._stopped = asyncio.Event()

    async def _set_health(self, status: int) -> None:
        for name in HEALTH_NAMES:
            await self.health.set(name, status)
        self.metrics.health.set(1 if status == SERVING else 0)

    async def start(self) -> None:
        """Open the port (NOT_SERVING), load and warm every model, then report SERVING."""
        config = self.config
        interceptors = [self.credentials.interceptor] if self.credentials.interceptor else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", config.max_request_bytes),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                ("grpc.so_reuseport", 0),
                *connection_age_options(config.max_connection_age_s),
            ],
        )
        # Unparsable requests -> INVALID_ARGUMENT, counted like every other answer.
        registrar = GuardedRegistrar(server, self.servicer.count_unparsable)
        generator_pb2_grpc.add_GeneratorServicer_to_server(self.servicer, registrar)
        services = [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        if config.admin:
            admin = ModelAdminServicer(self.models)
            admin_pb2_grpc.add_ModelAdminServicer_to_server(admin, registrar)
            services.append(ADMIN_SERVICE_NAME)
            if not config.auth_token:
                LOGGER.warning("ModelAdmin is on without --auth-token-file: anyone can reload")
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        # The asyncio servicer, named here: enable_server_reflection picks the threaded one for
        # anything that is not a grpc.aio.Server, and the registrar stands in for one.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((*services, reflection.SERVICE_NAME)), registrar
        )
        address = grpc_address(config.host, config.port)
        credentials = self.credentials.server_credentials()
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError:  # grpcio raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on gRPC address {address}: the port is in use or the host is "
                "not an address of this machine; choose another --port or --host"
            )
        await self._set_health(NOT_SERVING)
        await server.start()
        self._server = server
        self._accept_more(server, registrar, interceptors)
        try:
            if config.metrics_port >= 0:
                self._metrics_http = _metrics_server(config, self.metrics.registry)
                self.metrics_port = self._metrics_http.server_port
            await self.models.start()
            self.servicer.ready = True
            await self._set_health(SERVING)
            if self.credentials.watched():
                self._watch = asyncio.get_running_loop().create_task(self.credentials.watch())
        except BaseException:  # a failed load, or SIGTERM before serving: close what opened
            self.servicer.ready = False
            await self.models.close(0)
            await self._shutdown_transport(0)
            raise
        LOGGER.info(
            "serving %s on port %d%s (%s, %s event loop)",
            ", ".join(self.models.names()),
            self.port,
            " with TLS" if credentials else "",
            f"metrics on {self.metrics_port}" if self.metrics_port else "metrics off",
            loops.loop_name(asyncio.get_running_loop()),
        )

    def _accept_more(
        self,
        server: grpc.aio.Server,
        registrar: GuardedRegistrar,
        interceptors: list[grpc.aio.ServerInterceptor],
    ) -> None:
        """Start the extra pending accepts for the Generator service's methods."""
        depth = self.config.concurrent_accepts
        if not depth:
            return
        why_not = accept.supported()
        if why_not is not None:
            LOGGER.warning("concurrent accepts off (%s): calls queue behind grpcio's loop", why_not)
            return
        prefix = f"/{SERVICE_NAME}/"
        handlers = {k: h for k, h in registrar.registered.items() if k.startswith(prefix)}
        self.accepts = accept.ConcurrentAccepts(server, handlers, interceptors, depth)
        self.accepts.start()

    async def reload(self) -> list[Status]:
        """The model repository, and the TLS and token files (SIGHUP; ModelAdmin: models only)."""
        self.credentials.refresh()
        return await self.models.reload()

    async def stop(self, grace_s: float | None = None, delay_s: float | None = None) -> None:
        """Drain in order: NOT_SERVING; keep serving for the shutdown delay so load balancers
        notice; refuse new work with UNAVAILABLE while accepted work finishes within the grace
        period; then close the port. The port stays open while draining, so health checks see
        NOT_SERVING and new calls get a clear UNAVAILABLE instead of a refused connection."""
        grace = self.config.drain_grace_s if grace_s is None else grace_s
        delay = self.config.shutdown_delay_s if delay_s is None else delay_s
        await self._set_health(NOT_SERVING)
        if delay > 0:
            LOGGER.info("NOT_SERVING; still accepting requests for %.1fs", delay)
            await asyncio.sleep(delay)
        started = time.monotonic()
        await self.models.close(grace)
        # Refuse with UNAVAILABLE for a moment even when nothing was queued: a call that meets
        # gRPC's own stop gets CANCELLED instead (grpc/grpc#41785), which clients do not retry.
        await asyncio.sleep(max(0.0, min(REFUSE_AT_LEAST_S, grace) - (time.monotonic() - started)))
        await self._shutdown_transport(max(grace - (time.monotonic() - started), 1.0))
        LOGGER.info("stopped after draining for %.2fs", time.monotonic() - started)

    async def _shutdown_transport(self, grace_s: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._server is not None:
            # Handlers whose batches finished only have their responses left to write.
            await self._server.stop(grace_s)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def connection_age_options(seconds: float) -> list[tuple[str, int]]:
    """gRPC server options that send each connection a GOAWAY after ``seconds`` (0: none). No
    grace is set: gRPC's default lets the calls in flight finish, however long they take."""
    return [("grpc.max_connection_age_ms", round(seconds * 1000))] if seconds > 0 else []
