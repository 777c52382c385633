"""Prometheus metrics of the server, on a registry of its own (one per server instance).

Names are under ``ganserve_``, in base units (seconds, bytes); per-model series carry
``model`` and ``version``. See docs/metrics.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import prometheus_client as prom

# Doubling from 100 us to ~6.5 s: sub-millisecond cache hits to seconds-long overload.
LATENCY_BUCKETS = tuple(0.0001 * 2**i for i in range(17))
MODEL = ("model", "version")


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to max_batch_size, plus max_batch_size itself."""
    buckets, b = [], 1
    while b < max_batch_size:
        buckets.append(float(b))
        b *= 2
    buckets.append(float(max_batch_size))
    return tuple(buckets)


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self, *, max_batch_size: int, registry: prom.CollectorRegistry | None = None):
        self.registry = r = registry or prom.CollectorRegistry()
        # Called with (model, version) by forget_version: holders of cached children drop them.
        self.forget_listeners: list[Callable[[str, str], None]] = []

        def histogram(name: str, doc: str, labels: tuple[str, ...] = MODEL, buckets=None):
            return prom.Histogram(name, doc, labels, registry=r, buckets=buckets or LATENCY_BUCKETS)

        self.requests = prom.Counter(
            "ganserve_requests",
            "RPCs answered, by method and final gRPC status code.",
            ("method", *MODEL, "code"),
            registry=r,
        )
        self.request_duration = histogram(
            "ganserve_request_duration_seconds",
            "Receipt to answer of an RPC, server side.",
            ("method", *MODEL),
        )
        self.queue_duration = histogram(
            "ganserve_queue_duration_seconds",
            "Time a request waited in its model's queue before its batch started.",
        )
        self.inference_duration = histogram(
            "ganserve_inference_duration_seconds",
            "One batch in the worker: latents, engine call, conversion to uint8.",
        )
        self.encode_duration = histogram(
            "ganserve_encode_duration_seconds", "Encoding one batch's images (PNG or raw)."
        )
        self.batch_size = histogram(
            "ganserve_batch_size",
            "Images in each batch sent to the engine.",
            buckets=_batch_buckets(max_batch_size),
        )
        self.queue_depth = prom.Gauge(
            "ganserve_queue_depth",
            "Images waiting in the model version's queue.",
            MODEL,
            registry=r,
        )
        self.in_flight = prom.Gauge(
            "ganserve_inflight_requests", "RPCs accepted and not yet answered.", MODEL, registry=r
        )
        self.images = prom.Counter(
            "ganserve_images_generated",
            "Images returned successfully (cache hits included).",
            MODEL,
            registry=r,
        )
        self.dropped = prom.Counter(
            "ganserve_requests_dropped",
            "Queued images dropped before reaching the engine, by reason (a multi-image call "
            "counts each).",
            (*MODEL, "reason"),
            registry=r,
        )
        self.batch_failures = prom.Counter(
            "ganserve_batch_failures",
            "Batches whose engine call raised or hung past --engine-timeout.",
            MODEL,
            registry=r,
        )
        self.engine_timeouts = prom.Counter(
            "ganserve_engine_timeouts",
            "Batches still in the engine after --engine-timeout; each one's instance is replaced.",
            MODEL,
            registry=r,
        )
        self.cache_hits = prom.Counter(
            "ganserve_cache_hits", "Images served from the response cache.", MODEL, registry=r
        )
        self.cache_misses = prom.Counter(
            "ganserve_cache_misses",
            "Cacheable images not found in the response cache.",
            MODEL,
            registry=r,
        )
        self.cache_bytes = prom.Gauge(
            "ganserve_cache_bytes", "Bytes held by the response cache.", registry=r
        )
        self.cache_entries = prom.Gauge(
            "ganserve_cache_entries", "Images held by the response cache.", registry=r
        )
        self.model_load_duration = prom.Gauge(
            "ganserve_model_load_duration_seconds",
            "Time to load and warm up the model version being served.",
            MODEL,
            registry=r,
        )
        self.model_load_failures = prom.Counter(
            "ganserve_model_load_failures",
            "Model versions that failed to load.",
            ("model",),
            registry=r,
        )
        self.reloads = prom.Counter(
            "ganserve_repository_reloads",
            "Repository reloads, by outcome.",
            ("outcome",),
            registry=r,
        )
        self.model_info = prom.Gauge(
            "ganserve_model_info",
            "1 for each model version being served.",
            (*MODEL, "backend"),
            registry=r,
        )
        self.auth_failures = prom.Counter(
            "ganserve_auth_failures",
            "Calls refused for a missing or wrong bearer token.",
            registry=r,
        )
        self.credential_reloads = prom.Counter(
            "ganserve_credential_reloads",
            "TLS key pairs and bearer tokens read again after their files changed, by outcome "
            "(failed: the old one stays in use).",
            ("credential", "outcome"),
            registry=r,
        )
        self.health = prom.Gauge(
            "ganserve_serving", "1 while the server reports SERVING, else 0.", registry=r
        )
        # The process's memory, CPU and file descriptors, and the interpreter's collector, as
        # the default registry exports them.
        prom.ProcessCollector(registry=r)
        prom.GCCollector(registry=r)
        prom.PlatformCollector(registry=r)

    def forget_version(self, model: str, version: str) -> None:
        """Drop a retired version's gauges, which would otherwise report its last queue depth,
        calls in flight and load time forever. Its counters and histograms stay: they count
        what happened, and rate() needs them to end, not vanish."""
        for gauge in (self.queue_depth, self.in_flight, self.model_load_duration):
            with contextlib.suppress(KeyError):
                gauge.remove(model, version)
        for listener in self.forget_listeners:
            listener(model, version)
