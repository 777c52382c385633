"""What gan-bench calls: ganserve's RPCs, Triton's ModelInfer, a bare gRPC round trip; and a
scraper of the server's own batch-size and queue-time figures."""

from __future__ import annotations

import http.client
import urllib.request
from typing import NoReturn

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ganserve.bench.load import Call, Scrape
from ganserve.kserve.v2 import predict_pb2, predict_pb2_grpc
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
ENCODINGS = {"png": pb.IMAGE_ENCODING_PNG, "raw": pb.IMAGE_ENCODING_RAW_UINT8}


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def ganserve_generate(
    ch: grpc.aio.Channel, *, encoding: str, num_classes: int, model: str = ""
) -> Call:
    """Unary Generate with a fresh seed per call (so a response cache could not help)."""
    stub = generator_pb2_grpc.GeneratorStub(ch)
    enc = ENCODINGS[encoding]

    async def call(i: int) -> int:
        request = pb.GenerateRequest(
            seed=i, model=model, encoding=enc, class_label=i % num_classes if num_classes else None
        )
        await stub.Generate(request, timeout=30)
        return 1

    return call


def ganserve_batch(
    ch: grpc.aio.Channel, *, encoding: str, num_classes: int, items: int, model: str = ""
) -> Call:
    """GenerateBatch with ``items`` images per call."""
    stub = generator_pb2_grpc.GeneratorStub(ch)
    enc = ENCODINGS[encoding]

    async def call(i: int) -> int:
        first = i * items
        batch = [
            pb.BatchItem(
                seed=first + j, class_label=(first + j) % num_classes if num_classes else None
            )
            for j in range(items)
        ]
        reply = await stub.GenerateBatch(
            pb.GenerateBatchRequest(items=batch, model=model, encoding=enc), timeout=60
        )
        return len(reply.images)

    return call


def triton_infer(ch: grpc.aio.Channel, *, model: str, num_classes: int) -> Call:
    """Triton's ModelInfer on the PyTriton peer: seed UINT64 [1,1], class_label INT32 [1,1]."""
    stub = predict_pb2_grpc.GRPCInferenceServiceStub(ch)
    T = predict_pb2.ModelInferRequest

    async def call(i: int) -> int:
        label = i % num_classes if num_classes else 0
        request = T(
            model_name=model,
            inputs=[
                T.InferInputTensor(name="seed", datatype="UINT64", shape=[1, 1]),
                T.InferInputTensor(name="class_label", datatype="INT32", shape=[1, 1]),
            ],
            outputs=[T.InferRequestedOutputTensor(name="image")],
            raw_input_contents=[
                np.array([i], dtype=np.uint64).tobytes(),
                np.array([label], dtype=np.int32).tobytes(),
            ],
        )
        await stub.ModelInfer(request, timeout=30)
        return 1

    return call


def _model_ready_messages() -> tuple[type, type]:
    """Triton's ModelReadyRequest {string name = 1; string version = 2} and ModelReadyResponse
    {bool ready = 1}, built here: ganserve's predict.proto, which other code shares, carries
    only the calls the load itself makes. A pool of their own, so no name can clash."""
    S, B = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    )
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    file = descriptor_pb2.FileDescriptorProto(
        name="gan_bench/model_ready.proto", package="inference", syntax="proto3"
    )
    for message, fields in (
        ("ModelReadyRequest", [("name", 1, S), ("version", 2, S)]),
        ("ModelReadyResponse", [("ready", 1, B)]),
    ):
        file.message_type.add(name=message).field.extend(
            descriptor_pb2.FieldDescriptorProto(name=n, number=i, type=t, label=optional)
            for n, i, t in fields
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in ("ModelReadyRequest", "ModelReadyResponse")
    )


ModelReadyRequest, ModelReadyResponse = _model_ready_messages()
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


async def triton_ready(ch: grpc.aio.Channel, target: str, model: str) -> None:
    """Raise ValueError, in one line saying what to fix, unless the Triton server at ``target``
    is ready and so is its ``model`` (its gRPC ServerReady and ModelReady): before any load is
    sent, not after a run of failed calls."""
    stub = predict_pb2_grpc.GRPCInferenceServiceStub(ch)
    try:
        server = await stub.ServerReady(predict_pb2.ServerReadyRequest(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
            raise
        raise ValueError(
            f"{target} does not serve Triton's GRPCInferenceService (ServerReady is "
            "UNIMPLEMENTED there): for ganserve, leave out --server triton"
        ) from None
    if not server.ready:
        raise ValueError(f"Triton at {target} is not ready (ServerReady says no): wait, or fix it")
    model_ready = ch.unary_unary(
        MODEL_READY,
        request_serializer=ModelReadyRequest.SerializeToString,
        response_deserializer=ModelReadyResponse.FromString,
    )
    try:
        reply = await model_ready(ModelReadyRequest(name=model), timeout=10)
        ready = reply.ready
    except grpc.aio.AioRpcError as exc:
        # Triton says ready: false for a model it does not have; other KServe v2 servers
        # answer with one of these.
        if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        ready = False
    if not ready:
        raise ValueError(
            f"model {model!r} is not ready on Triton at {target}: check --model (the name "
            "Triton serves it under)"
        )


def health_check(ch: grpc.aio.Channel) -> Call:
    """A bare gRPC round trip (the health service): the floor under any unary RPC."""
    stub = health_pb2_grpc.HealthStub(ch)
    request = health_pb2.HealthCheckRequest(service="")

    async def call(i: int) -> int:
        await stub.Check(request, timeout=10)
        return 0

    return call


# The families scraped, and the sample of each that gan-bench sums over the versions of the
# model measured.
SCRAPED = {
    "ganserve_batch_size_sum": "batch_sum",
    "ganserve_batch_size_count": "batch_count",
    "ganserve_queue_duration_seconds_sum": "queue_sum",
    "ganserve_queue_duration_seconds_count": "queue_count",
    "ganserve_queue_depth": "queue_depth",
}


def ganserve_scraper(metrics_url: str, *, model: str) -> Scrape:
    """Sums of ganserve's batch-size and queue-time histograms (for per-window deltas), and the
    queue depth now, over the versions of ``model``: another model the server answers
    meanwhile must not mix its batches into this one's figures."""

    def fail(why: str) -> NoReturn:
        raise RuntimeError(f"cannot scrape metrics from {metrics_url}: {why}")

    def scrape() -> dict[str, float]:
        try:
            with urllib.request.urlopen(metrics_url, timeout=5) as reply:
                text = reply.read().decode(errors="replace")
        # URLError, HTTPError, timeouts, bad URLs; an answer that is not HTTP (a gRPC port).
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = str(getattr(exc, "reason", exc))
            fail(reason if reason.isprintable() else f"{reason[:60]!r} (is it an HTTP port?)")
        out = dict.fromkeys(SCRAPED.values(), 0.0)
        families = set()
        try:  # Prometheus's own parser: labels, escapes and timestamps as the format has them
            for family in text_string_to_metric_families(text):
                families.add(family.name)
                for sample in family.samples:
                    if sample.name in SCRAPED and sample.labels.get("model") == model:
                        out[SCRAPED[sample.name]] += sample.value
        except ValueError as exc:
            fail(f"not Prometheus text ({str(exc)[:80]})")
        if "ganserve_batch_size" not in families:
            fail("no ganserve_batch_size series: give ganserve's metrics URL (--metrics-port)")
        return out

    return scrape
