"""Prometheus metrics of the server, on a registry of its own (one per server instance)."""

from __future__ import annotations

import prometheus_client as prom

# Request latencies on this service run from ~0.3 ms (cached, batch 1) to seconds (overload).
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.512,
    1.024,
    2.048,
    4.096,
    8.192,
)


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to max_batch_size, plus max_batch_size itself."""
    buckets, b = [], 1
    while b < max_batch_size:
        buckets.append(float(b))
        b *= 2
    buckets.append(float(max_batch_size))
    return tuple(buckets)


class ServerMetrics:
    """Every metric the server exports. See docs/metrics.md."""

    def __init__(self, *, max_batch_size: int, registry: prom.CollectorRegistry | None = None):
        self.registry = registry or prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "ganserve_requests",
            "RPCs answered, by final gRPC status code.",
            ["method", "model", "code"],
            registry=r,
        )
        self.request_duration = prom.Histogram(
            "ganserve_request_duration_seconds",
            "Time from receiving an RPC to answering it, by method and model.",
            ["method", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = prom.Histogram(
            "ganserve_queue_duration_seconds",
            "Time a request waited in its model's queue before its batch started.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = prom.Histogram(
            "ganserve_inference_duration_seconds",
            "Time of one batch in the worker: latents, engine call, post-processing, encoding.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "ganserve_batch_size",
            "Requests in each batch sent to the engine.",
            ["model"],
            buckets=_batch_buckets(max_batch_size),
            registry=r,
        )
        self.queue_depth = prom.Gauge(
            "ganserve_queue_depth",
            "Requests waiting in the model's queue.",
            ["model"],
            registry=r,
        )
        self.in_flight = prom.Gauge(
            "ganserve_inflight_requests",
            "Requests accepted and not yet answered.",
            ["model"],
            registry=r,
        )
        self.images = prom.Counter(
            "ganserve_images_generated",
            "Images returned successfully.",
            ["model"],
            registry=r,
        )
        self.dropped = prom.Counter(
            "ganserve_requests_dropped",
            "Queued requests dropped before reaching the engine, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.batch_failures = prom.Counter(
            "ganserve_batch_failures",
            "Batches whose engine call failed.",
            ["model"],
            registry=r,
        )
        self.model_info = prom.Gauge(
            "ganserve_model_info",
            "1 for each model version being served.",
            ["model", "version", "backend"],
            registry=r,
        )
