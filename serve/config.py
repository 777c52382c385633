"""Server configuration: frozen dataclasses built at the edge (CLI flags / GANSERVE_ env vars)."""

from __future__ import annotations

import dataclasses
import pathlib

from ganserve.serve.engine import Backend


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """How one model's requests are grouped into engine calls.

    Args:
        max_batch_size: A batch closes as soon as it holds this many requests.
        max_queue_delay_us: ...or when its oldest request has waited this long (microseconds).
            0 batches whatever is queued when the engine is free, as Triton does by default.
        max_queue_size: Requests waiting beyond this many are refused with RESOURCE_EXHAUSTED.
        instances: Engine calls that may run at once for this model.
    """

    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    max_queue_size: int = 4096
    instances: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise ValueError(f"max_batch_size must be in 1..4096, got {self.max_batch_size}")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ValueError(
                f"max_queue_delay_us must be in 0..10000000, got {self.max_queue_delay_us}"
            )
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if not 1 <= self.instances <= 64:
            raise ValueError(f"instances must be in 1..64, got {self.instances}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `ganserve serve` needs.

    Args:
        model_repository: Folder holding ``<name>/<version>/model.onnx`` trees.
        default_model: Model used when a request's ``model`` is empty; None means the only
            model in the repository (an error if there are several).
        host: Interface the gRPC server binds.
        port: gRPC port; 0 picks a free one (tests).
        metrics_host: Interface of the Prometheus HTTP endpoint.
        metrics_port: Port of ``/metrics``; 0 picks a free one, -1 disables it.
        backend: Execution backend for every model.
        intra_op_threads: ONNX Runtime intra-op threads; 0 lets it choose.
        batching: Batching settings, the same for every model.
        drain_grace_s: On SIGTERM, how long in-flight requests may take to finish.
    """

    model_repository: pathlib.Path
    default_model: str | None = None
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8000
    backend: Backend = Backend.AUTO
    intra_op_threads: int = 0
    batching: BatchingConfig = dataclasses.field(default_factory=BatchingConfig)
    drain_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in -1..65535, got {self.metrics_port}")
        if self.metrics_port == self.port and self.port != 0:
            raise ValueError(f"port and metrics_port are both {self.port}; pick two ports")
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        if self.drain_grace_s < 0:
            raise ValueError(f"drain_grace_s must be >= 0, got {self.drain_grace_s}")
