"""The ganserve.v1.Generator service: validates requests and hands them to a model's batcher."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import grpc

from ganserve.serve import imaging
from ganserve.serve.batcher import Batcher
from ganserve.serve.errors import InvalidArgumentError, ModelNotFoundError, to_status
from ganserve.serve.metadata import ModelMetadata
from ganserve.serve.metrics import ServerMetrics
from ganserve.v1 import generator_pb2, generator_pb2_grpc

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model version being served: its metadata, backend name and batcher."""

    metadata: ModelMetadata
    backend: str
    batcher: Batcher


def _class_range(metadata: ModelMetadata) -> str:
    return f"model {metadata.name!r} has classes 0..{metadata.num_classes - 1}"


def validate_label(metadata: ModelMetadata, request: generator_pb2.GenerateRequest) -> int | None:
    """The request's class label, checked against the model; None for unconditional models."""
    has_label = request.HasField("class_label")
    if not metadata.conditional:
        if has_label:
            raise InvalidArgumentError(
                f"class_label must be unset: model {metadata.name!r} is unconditional"
            )
        return None
    if not has_label:
        raise InvalidArgumentError(f"class_label is required: {_class_range(metadata)}")
    label = request.class_label
    if not 0 <= label < metadata.num_classes:
        raise InvalidArgumentError(f"class_label {label} is out of range: {_class_range(metadata)}")
    return label


def validate_encoding(value: int) -> imaging.Encoding:
    try:
        return imaging.Encoding(value)
    except ValueError:
        raise InvalidArgumentError(
            f"encoding {value} is not supported; use IMAGE_ENCODING_PNG (0) or "
            "IMAGE_ENCODING_RAW_UINT8 (1)"
        ) from None


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """Implements Generate and GetModelInfo over a fixed set of loaded models."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        *,
        default_model: str,
        max_batch_size: int,
        metrics: ServerMetrics,
    ) -> None:
        self._models = models
        self._default = default_model
        self._max_batch_size = max_batch_size
        self._metrics = metrics

    def _resolve(self, name: str) -> LoadedModel:
        model = self._models.get(name or self._default)
        if model is None:
            available = ", ".join(sorted(self._models))
            raise ModelNotFoundError(f"model {name!r} not found; available: {available}")
        return model

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generator_pb2.GenerateResponse:
        started = time.monotonic()
        model_label = request.model or self._default
        code = grpc.StatusCode.OK
        in_flight = None
        try:
            model = self._resolve(request.model)
            metadata = model.metadata
            label = validate_label(metadata, request)
            encoding = validate_encoding(request.encoding)
            remaining = context.time_remaining()
            deadline = None if remaining is None else started + remaining
            in_flight = self._metrics.in_flight.labels(metadata.name)
            in_flight.inc()
            image = await model.batcher.submit(request.seed, label, encoding, deadline)
            self._metrics.images.labels(metadata.name).inc()
            return generator_pb2.GenerateResponse(
                image=image,
                encoding=encoding.value,
                height=metadata.height,
                width=metadata.width,
                channels=metadata.channels,
                seed=request.seed,
                class_label=-1 if label is None else label,
                model=metadata.name,
                model_version=metadata.version,
            )
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = to_status(exc)
            if code is grpc.StatusCode.INTERNAL:
                LOGGER.error("Generate failed: %s", exc, exc_info=exc)
            await context.abort(code, message)
        finally:
            if in_flight is not None:
                in_flight.dec()
            self._observe("Generate", model_label, code, started)

    async def GetModelInfo(
        self, request: generator_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> generator_pb2.ModelInfo:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            model = self._resolve(request.model)
            m = model.metadata
            return generator_pb2.ModelInfo(
                name=m.name,
                version=m.version,
                latent_dim=m.latent_dim,
                num_classes=m.num_classes,
                height=m.height,
                width=m.width,
                channels=m.channels,
                class_names=list(m.class_names),
                max_batch_size=self._max_batch_size,
                backend=model.backend,
            )
        except Exception as exc:
            code, message = to_status(exc)
            await context.abort(code, message)
        finally:
            self._observe("GetModelInfo", request.model or self._default, code, started)

    def _observe(self, method: str, model: str, code: grpc.StatusCode, started: float) -> None:
        # Unknown model names come from clients: keep them out of label values.
        model = model if model in self._models else "_unknown"
        self._metrics.requests.labels(method, model, code.name).inc()
        self._metrics.request_duration.labels(method, model).observe(time.monotonic() - started)
