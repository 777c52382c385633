"""The ganserve.v1.Generator service: validates requests and hands them to a model's batcher.

Every RPC runs inside `_Call`, which owns the request id, the deadline, the metrics, the access
log line, and the one translation of exceptions into gRPC status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from ganserve.serve import imaging
from ganserve.serve import inputs as model_inputs
from ganserve.serve.batcher import Work, missed_deadline
from ganserve.serve.cache import ResponseCache
from ganserve.serve.errors import (
    GanServeError,
    InvalidArgumentError,
    ModelNotFoundError,
    UnavailableError,
    to_status,
)
from ganserve.serve.logs import ACCESS_LOGGER, REQUEST_ID, request_id
from ganserve.serve.metadata import ModelMetadata
from ganserve.serve.metrics import ServerMetrics
from ganserve.serve.models import ModelManager, ServedVersion
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc

LOGGER = logging.getLogger(__name__)
MAX_TRUNCATION = 2.0


def validate_label(metadata: ModelMetadata, has_label: bool, label: int, field: str) -> int | None:
    """The class label, checked against the model; None for unconditional models."""
    if not metadata.conditional:
        if has_label:
            raise InvalidArgumentError(
                f"{field} must be unset: model {metadata.name!r} is unconditional"
            )
        return None
    classes = f"model {metadata.name!r} has classes 0..{metadata.num_classes - 1}"
    if not has_label:
        raise InvalidArgumentError(f"{field} is required: {classes}")
    if not 0 <= label < metadata.num_classes:
        raise InvalidArgumentError(f"{field} {label} is out of range: {classes}")
    return label


def validate_labels(metadata: ModelMetadata, items) -> list[int | None]:
    """Each GenerateBatch item's class label, checked as `validate_label` checks one; the
    error names the first bad item. Checked in bulk first: per item it costs 0.3 us, not 2."""
    if metadata.conditional:
        if all(item.HasField("class_label") for item in items):
            labels = [item.class_label for item in items]
            if min(labels) >= 0 and max(labels) < metadata.num_classes:
                return labels
    elif not any(item.HasField("class_label") for item in items):
        return [None] * len(items)
    return [  # one is bad: this raises, naming the first
        validate_label(
            metadata, item.HasField("class_label"), item.class_label, f"items[{i}].class_label"
        )
        for i, item in enumerate(items)
    ]


def validate_encoding(value: int) -> imaging.Encoding:
    try:
        return imaging.Encoding(value)
    except ValueError:
        raise InvalidArgumentError(
            f"encoding {value} is not supported; use IMAGE_ENCODING_PNG (0) or "
            "IMAGE_ENCODING_RAW_UINT8 (1)"
        ) from None


def validate_truncation(has_value: bool, value: float) -> float:
    if not has_value:
        return 1.0
    if not (math.isfinite(value) and 0.0 <= value <= MAX_TRUNCATION):
        raise InvalidArgumentError(
            # The float32 on the wire as the caller wrote it (2.0000002, not 2.000000238418579)
            f"truncation {np.float32(value)!s} is out of range: use 0 <= truncation <= "
            f"{MAX_TRUNCATION:g} "
            "(1 = no truncation)"
        )
    return value


def validate_style_mix(
    metadata: ModelMetadata, has_seed: bool, seed: int, layer: int
) -> tuple[int | None, int]:
    """(style_mix_seed or None, style_mix_layer), checked against the model's style layers."""
    if not has_seed:
        if layer:  # 0 is the field's default: nothing was asked for
            raise InvalidArgumentError(
                f"style_mix_layer {layer} needs style_mix_seed: set both to mix styles, or neither"
            )
        return None, 0
    layers = metadata.style_layers
    if not layers:
        raise InvalidArgumentError(
            f"style_mix_seed must be unset: model {metadata.name!r} ({metadata.architecture}) "
            "has no style layers; style mixing needs a StyleGAN-style model"
        )
    if not 0 <= layer < layers:
        raise InvalidArgumentError(
            f"style_mix_layer {layer} is out of range: model {metadata.name!r} has style "
            f"layers 0..{layers - 1}"
        )
    return seed, layer


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation from a to b at each t in [0, 1]; (T,) -> (T, D) float32.

    The angle is taken between the directions of a and b; nearly parallel vectors fall back
    to linear interpolation, where slerp's formula divides by ~0.
    """
    cos = float(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    omega = math.acos(min(1.0, max(-1.0, cos)))
    t = t[:, None]  # (T, 1)
    if math.sin(omega) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    s = math.sin(omega)
    return (np.sin((1 - t) * omega) / s * a + np.sin(t * omega) / s * b).astype(np.float32)


def _walk(
    m: ModelMetadata,
    start: int,
    end: int,
    t: np.ndarray,
    label: int | None,
    encoding: imaging.Encoding,
    psi: float,
) -> list[Work]:
    """The frames of a walk from seed ``start`` to ``end`` at each t: z and the per-layer
    noise (if any) each by slerp. The two ends are the seeds themselves, so they are exactly
    Generate's images whatever rounding the slerp does."""
    a, b = model_inputs.seed_vector(m, start), model_inputs.seed_vector(m, end)
    d = m.latent_dim
    path = slerp(a[:d], b[:d], t)  # (T, latent_dim)
    if m.noise_dim:
        path = np.concatenate([path, slerp(a[d:], b[d:], t)], axis=1)  # + (T, noise_dim)
    ends = {0: start, len(t) - 1: end}
    return [
        Work(ends[i], label, encoding, psi)
        if i in ends
        else Work(start, label, encoding, psi, path[i])
        for i in range(len(t))
    ]


# An image's share of a response beyond its pixels: PNG chunks and zlib framing, the item's
# other fields (seed, label, shape, model, version).
ITEM_OVERHEAD_BYTES = 1024


class _Series:
    """The metric children of one (method, model, version), each resolved on first use: a
    labels() lookup takes a lock and hashes the label values, on every request otherwise."""

    def __init__(self, metrics: ServerMetrics, method: str, model: str, version: str) -> None:
        self._m, self._key = metrics, (method, model, version)
        self.requests: dict[str, object] = {}

    def count(self, code: str) -> None:
        counter = self.requests.get(code)
        if counter is None:
            counter = self.requests[code] = self._m.requests.labels(*self._key, code)
        counter.inc()

    @functools.cached_property
    def duration(self):
        return self._m.request_duration.labels(*self._key)

    @functools.cached_property
    def in_flight(self):
        return self._m.in_flight.labels(*self._key[1:])

    @functools.cached_property
    def images(self):
        return self._m.images.labels(*self._key[1:])

    @functools.cached_property
    def cache_hits(self):
        return self._m.cache_hits.labels(*self._key[1:])

    @functools.cached_property
    def cache_misses(self):
        return self._m.cache_misses.labels(*self._key[1:])


UNSERVED_VERSION = "_unserved"


class _Call:
    """One RPC: request id, deadline, status mapping, metrics and the access log line."""

    # The labels of a call that reached no version (set per call only when it names a
    # served model): a class default, so the request path does not pay for it.
    unserved = ("_unknown", "")

    def __init__(self, servicer: GeneratorServicer, method: str, context: grpc.aio.ServicerContext):
        self._servicer, self.method, self.context = servicer, method, context
        self.started = time.monotonic()
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else self.started + remaining
        self.request_id = request_id(context)
        # Read now: a stream abandoned at its `yield` is closed after grpcio frees the call,
        # and reading the peer then crashes the process (SIGSEGV in cygrpc).
        self.peer = context.peer() if servicer._access_log else ""
        self.served: ServedVersion | None = None
        # The in-flight gauge child this call raised: lowered at its end even when a reload
        # has retired the version meanwhile (a fresh lookup would bring the series back at -1).
        self.in_flight = None
        self.items = 1
        self.code = grpc.StatusCode.OK

    async def __aenter__(self) -> _Call:
        self._token = REQUEST_ID.set(self.request_id)
        self.context.set_trailing_metadata((("x-request-id", self.request_id),))
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        message = None
        try:
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                # gRPC cancels the handler both when the client cancels and at its deadline.
                expired = missed_deadline(self.deadline, time.monotonic())
                self.code = (
                    grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                )
            elif exc is not None:
                self.code, message = to_status(exc)
                if self.code is grpc.StatusCode.INTERNAL:
                    LOGGER.error("%s failed: %s", self.method, exc, exc_info=exc)
        finally:
            # Account for the call before the caller can see its outcome, so a scrape that
            # follows a reply always includes it.
            self._servicer._finish(self)
            # A stream cancelled between frames is abandoned by grpcio at its `yield` and
            # closed later by asyncio's generator finaliser, in a context of its own: the
            # call's context is gone with it, and there is nothing to restore.
            with contextlib.suppress(ValueError):
                REQUEST_ID.reset(self._token)
        if message is not None:
            extra = exc.trailers() if isinstance(exc, GanServeError) else ()
            trailers = (("x-request-id", self.request_id), *extra)
            await self.context.abort(self.code, message, trailing_metadata=trailers)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generator"].full_name


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """Implements the Generator service over the ModelManager's versions."""

    def __init__(
        self,
        models: ModelManager,
        *,
        metrics: ServerMetrics,
        max_batch_size: int,
        max_items_per_call: int,
        max_response_bytes: int,
        cache: ResponseCache | None = None,
        access_log: bool = False,
    ) -> None:
        self._models = models
        self._metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_items = max_items_per_call
        self._max_response_bytes = max_response_bytes
        self._cache = cache
        self._access_log = access_log
        self._children: dict[tuple[str, str, str], _Series] = {}
        metrics.forget_listeners.append(self._forget_series)
        self.ready = False

    def _forget_series(self, model: str, version: str) -> None:
        """A retired version's gauges left the registry: should the version serve again, its
        calls must resolve new children, not update the removed ones unseen."""
        for key in [k for k in self._children if k[1:] == (model, version)]:
            del self._children[key]

    def _items_cap(self, m: ModelMetadata) -> int:
        """GenerateBatch items per call for model ``m``: the configured cap, and no more than
        one response can carry (a PNG of noise is a little larger than its raw pixels)."""
        worst = m.height * (m.width * m.channels + 1) + ITEM_OVERHEAD_BYTES
        return max(1, min(self._max_items, self._max_response_bytes // worst))

    def _enter(self, call: _Call, name: str, version: str) -> ServedVersion:
        """Route the call (inside its `async with`, so errors become statuses)."""
        if not self.ready:
            raise UnavailableError("server is starting: models are still loading")
        try:
            served = self._models.resolve(name, version)
        except ModelNotFoundError:
            # A served model with a version it does not serve: counted under the model, with
            # a fixed version label (the client's would make the label set unbounded).
            model = self._models.served_name(name)
            if model is not None:
                call.unserved = (model, UNSERVED_VERSION)
            raise
        call.served = served
        call.in_flight = self._series(call.method, *served.key).in_flight
        call.in_flight.inc()
        served.calls.enter()
        return served

    def count_unparsable(self, path: str) -> None:
        """An RPC refused before any handler ran because its bytes did not parse."""
        service, _, method = path.rpartition("/")
        if service == f"/{SERVICE_NAME}":
            self._series(method, "_unknown", "").count(grpc.StatusCode.INVALID_ARGUMENT.name)

    def _series(self, method: str, model: str, version: str) -> _Series:
        key = (method, model, version)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = _Series(self._metrics, method, model, version)
        return series

    def _finish(self, call: _Call) -> None:
        seconds = time.monotonic() - call.started
        model, version = call.served.key if call.served else call.unserved
        series = self._series(call.method, model, version)
        if call.in_flight is not None:
            call.in_flight.dec()
            call.served.calls.leave()  # the last call of a retired version drops its gauges
        code = call.code.name
        series.count(code)
        series.duration.observe(seconds)
        if self._access_log:
            ACCESS_LOGGER.info(
                "%s %s v%s %s %.2fms",
                call.method,
                model,
                version,
                code,
                seconds * 1e3,
                extra={
                    "method": call.method,
                    "model": model,
                    "version": version,
                    "code": code,
                    "duration_ms": round(seconds * 1e3, 3),
                    "peer": call.peer,
                    "items": call.items,
                },
            )

    async def _images(self, call: _Call, served: ServedVersion, works: list[Work]) -> list[bytes]:
        """Encoded images for ``works``, from the cache where possible, in order."""
        series = self._series(call.method, *served.key)
        cache = self._cache
        keys: list[tuple | None] = [None] * len(works)
        out: list[bytes | None] = [None] * len(works)
        if cache is not None:
            for i, work in enumerate(works):
                if work.latent is None:  # interpolation frames are not addressable by seed
                    keys[i] = (
                        *served.key,
                        served.fingerprint,  # a reload that replaced the files is another model
                        work.seed,
                        work.label,
                        work.encoding,
                        work.truncation,
                        work.mix_seed,
                        work.mix_layer,
                    )
                    out[i] = cache.get(keys[i])
            hits = sum(x is not None for x in out)
            if hits:
                series.cache_hits.inc(hits)
            if misses := sum(k is not None for k in keys) - hits:
                series.cache_misses.inc(misses)
        todo = [i for i, x in enumerate(out) if x is None]
        if len(todo) == 1:  # the common unary case: no gather
            out[todo[0]] = await served.batcher.submit(works[todo[0]], call.deadline)
        elif todo:
            groups = served.batcher.submit_many([works[i] for i in todo], call.deadline)
            try:
                results = await asyncio.gather(*groups)
            finally:
                for group in groups:  # a failed or cancelled call frees its other slots
                    group.cancel()
            images = (image for group in results for image in group)
            for i, image in zip(todo, images, strict=True):
                out[i] = image
        if cache is not None:
            for i in todo:
                if keys[i] is not None:
                    cache.put(keys[i], out[i])
        series.images.inc(len(works))
        return out  # type: ignore[return-value]

    @staticmethod
    def _shared_fields(m: ModelMetadata, encoding: imaging.Encoding) -> dict[str, object]:
        """The GenerateResponse fields that every image of one call shares."""
        return {
            "encoding": encoding.value,
            "height": m.height,
            "width": m.width,
            "channels": m.channels,
            "model": m.name,
            "model_version": m.version,
        }

    @classmethod
    def _fields(cls, m: ModelMetadata, work: Work, image: bytes) -> dict[str, object]:
        """The GenerateResponse fields for one image."""
        return {
            "image": image,
            "seed": work.seed,
            "class_label": -1 if work.label is None else work.label,
            **cls._shared_fields(m, work.encoding),
        }

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        async with _Call(self, "Generate", context) as call:
            served = self._enter(call, request.model, request.model_version)
            m = served.metadata
            mix_seed, mix_layer = validate_style_mix(
                m,
                request.HasField("style_mix_seed"),
                request.style_mix_seed,
                request.style_mix_layer,
            )
            work = Work(
                request.seed,
                validate_label(
                    m, request.HasField("class_label"), request.class_label, "class_label"
                ),
                validate_encoding(request.encoding),
                validate_truncation(request.HasField("truncation"), request.truncation),
                mix_seed=mix_seed,
                mix_layer=mix_layer,
            )
            (image,) = await self._images(call, served, [work])
            return pb.GenerateResponse(**self._fields(m, work, image))

    async def GenerateBatch(
        self, request: pb.GenerateBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateBatchResponse:
        async with _Call(self, "GenerateBatch", context) as call:
            call.items = count = len(request.items)
            # The model first: a call for a served model is counted under it, whatever else
            # is wrong with it.
            served = self._enter(call, request.model, request.model_version)
            m = served.metadata
            if not 1 <= count <= self._max_items:
                raise InvalidArgumentError(
                    f"items has {count} entries; send 1..{self._max_items} per call"
                )
            if count > (cap := self._items_cap(m)):
                raise InvalidArgumentError(
                    f"items has {count} entries, but {m.height}x{m.width}x{m.channels} images of "
                    f"model {m.name!r} fit {cap} to a {self._max_response_bytes >> 20} MiB "
                    f"response; send 1..{cap} per call"
                )
            encoding = validate_encoding(request.encoding)
            psi = validate_truncation(request.HasField("truncation"), request.truncation)
            items = list(request.items)  # each pass over the repeated field wraps every item
            labels = validate_labels(m, items)
            works = [
                Work(item.seed, label, encoding, psi)
                for item, label in zip(items, labels, strict=True)
            ]
            images = await self._images(call, served, works)
            # Built in place (assigning ready-made messages to a repeated field copies each),
            # from the fields every item shares, serialised once: merging those bytes costs
            # half as much as setting six fields per item.
            shared = pb.GenerateResponse(**self._shared_fields(m, encoding)).SerializeToString()
            response = pb.GenerateBatchResponse()
            add = response.images.add
            for work, image in zip(works, images, strict=True):
                item = add()
                item.MergeFromString(shared)
                item.image = image
                item.seed = work.seed
                item.class_label = -1 if work.label is None else work.label
            return response

    async def Interpolate(
        self, request: pb.InterpolateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.InterpolateFrame]:
        async with _Call(self, "Interpolate", context) as call:
            call.items = frames = request.frames
            served = self._enter(call, request.model, request.model_version)
            m = served.metadata
            # The cap GetModelInfo reports as max_items_per_call, as for GenerateBatch.
            cap = self._items_cap(m)
            if cap < 2:  # "use 2..1" would name no frames a client could send
                raise InvalidArgumentError(
                    f"this server takes at most {cap} image a call for model {m.name!r} "
                    "(--max-items-per-call, --max-queue-size, and what fits one response), and "
                    "Interpolate needs 2 frames or more"
                )
            if not 2 <= frames <= cap:
                raise InvalidArgumentError(f"frames {frames} is out of range: use 2..{cap}")
            label = validate_label(
                m, request.HasField("class_label"), request.class_label, "class_label"
            )
            encoding = validate_encoding(request.encoding)
            psi = validate_truncation(request.HasField("truncation"), request.truncation)
            t = np.linspace(0.0, 1.0, frames)
            works = _walk(m, request.seed_start, request.seed_end, t, label, encoding, psi)
            groups = served.batcher.submit_many(works, call.deadline)
            images = self._series(call.method, *served.key).images
            i = 0
            try:
                for group in groups:  # a group's frames finish together: stream them as they do
                    for image in await group:
                        images.inc()
                        yield pb.InterpolateFrame(
                            index=i,
                            t=float(t[i]),
                            image=image,
                            encoding=encoding.value,
                            height=m.height,
                            width=m.width,
                            channels=m.channels,
                            model=m.name,
                            model_version=m.version,
                        )
                        i += 1
            finally:
                for group in groups:
                    group.cancel()

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        async with _Call(self, "GetModelInfo", context) as call:
            served = self._enter(call, request.model, request.model_version)
            m = served.metadata
            return pb.ModelInfo(
                name=m.name,
                version=m.version,
                latent_dim=m.latent_dim,
                num_classes=m.num_classes,
                height=m.height,
                width=m.width,
                channels=m.channels,
                class_names=list(m.class_names),
                max_batch_size=self._max_batch_size,
                backend=served.backend.value,
                versions=[v.metadata.version for v in self._models.versions(m.name)],
                max_items_per_call=self._items_cap(m),
                truncation_mode=m.truncation_mode,
                architecture=m.architecture,
                style_layers=m.style_layers,
                precision=served.precision,
            )
