"""The contract end to end, through a real gRPC server on a loopback port."""

from __future__ import annotations

import concurrent.futures
import io
import re
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, ServerThread, control_engine, generator_stub, scrape
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc

PNG = pb.IMAGE_ENCODING_PNG
RAW = pb.IMAGE_ENCODING_RAW_UINT8


def generate(server: ServerThread, **fields: object) -> pb.GenerateResponse:
    with generator_stub(server.target) as stub:
        return stub.Generate(pb.GenerateRequest(**fields), timeout=30)


def expect_error(server: ServerThread, code: grpc.StatusCode, match: str, **fields: object) -> None:
    with pytest.raises(grpc.RpcError) as info:
        generate(server, **fields)
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()


def test_generate_returns_png_of_the_model_shape(bundled_server: ServerThread) -> None:
    response = generate(bundled_server, seed=42, class_label=7)
    image = Image.open(io.BytesIO(response.image))
    assert image.format == "PNG" and image.mode == "L" and image.size == (32, 32)
    assert (response.height, response.width, response.channels) == (32, 32, 1)
    assert (response.seed, response.class_label) == (42, 7)
    assert response.model == "digits" and response.model_version == "2"
    assert response.encoding == PNG


def test_raw_encoding_carries_the_same_pixels_as_png(bundled_server: ServerThread) -> None:
    png = generate(bundled_server, seed=3, class_label=3, encoding=PNG)
    raw = generate(bundled_server, seed=3, class_label=3, encoding=RAW)
    assert raw.encoding == RAW and len(raw.image) == 32 * 32 * 1
    pixels = np.frombuffer(raw.image, dtype=np.uint8).reshape(32, 32)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.image))), pixels)


def test_repeats_are_byte_identical(bundled_server: ServerThread) -> None:
    first = generate(bundled_server, seed=1234, class_label=5)
    for _ in range(3):
        assert generate(bundled_server, seed=1234, class_label=5).image == first.image


def test_different_seeds_and_classes_differ(bundled_server: ServerThread) -> None:
    images = {
        generate(bundled_server, seed=s, class_label=c).image for s in (1, 2, 3) for c in (0, 1)
    }
    assert len(images) == 6


@pytest.mark.parametrize("seed", [0, 2**32 - 1, 2**32, 2**64 - 1])
def test_extreme_seeds_are_served(bundled_server: ServerThread, seed: int) -> None:
    assert generate(bundled_server, seed=seed, class_label=0).seed == seed


def test_image_is_the_same_in_any_batch(bundled_server: ServerThread) -> None:
    """Alone, then in one batch with 47 other requests: they wait together behind a batch held
    in the engine, then run as one batch of 48."""
    alone = generate(bundled_server, seed=777, class_label=4, encoding=RAW).image
    control = control_engine(bundled_server)
    batcher = bundled_server.server.models.resolve("digits").batcher
    seeds = [*range(1000, 1047), 777]
    control.hold()
    with concurrent.futures.ThreadPoolExecutor(len(seeds) + 1) as pool:
        try:
            blocker = pool.submit(generate, bundled_server, seed=1, class_label=1)
            assert control.entered.wait(30)
            calls = [
                pool.submit(generate, bundled_server, seed=s, class_label=4, encoding=RAW)
                for s in seeds
            ]
            deadline = time.monotonic() + 30
            while batcher.queue_depth < len(seeds):
                assert time.monotonic() < deadline, "the requests never queued together"
                time.sleep(0.005)
        finally:
            control.release()
        blocker.result(30)
        responses = [call.result(30) for call in calls]
    assert control.batches[-1] == len(seeds)  # one batch, after the held one
    assert responses[-1].image == alone
    assert len({r.image for r in responses}) == len(seeds)


def test_default_model_is_used_when_model_is_empty(bundled_server: ServerThread) -> None:
    assert generate(bundled_server, seed=1, class_label=1, model="").model == "digits"
    assert generate(bundled_server, seed=1, class_label=1, model="digits").model == "digits"


@pytest.mark.parametrize("label", [10, 12, -1, 2**31 - 1])
def test_generate_rejects_class_out_of_range(bundled_server: ServerThread, label: int) -> None:
    expect_error(
        bundled_server,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"class_label {label} is out of range: model 'digits' has classes 0..9",
        seed=1,
        class_label=label,
    )


def test_generate_requires_class_on_conditional_model(bundled_server: ServerThread) -> None:
    expect_error(
        bundled_server,
        grpc.StatusCode.INVALID_ARGUMENT,
        "class_label is required: model 'digits' has classes 0..9",
        seed=1,
    )


def test_generate_rejects_unknown_model(bundled_server: ServerThread) -> None:
    expect_error(
        bundled_server,
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' not found; available: digits",
        seed=1,
        class_label=1,
        model="nope",
    )


def test_generate_rejects_unknown_encoding(bundled_server: ServerThread) -> None:
    expect_error(
        bundled_server,
        grpc.StatusCode.INVALID_ARGUMENT,
        "encoding 7 is not supported",
        seed=1,
        class_label=1,
        encoding=7,
    )


def test_get_model_info_describes_the_model(bundled_server: ServerThread) -> None:
    with generator_stub(bundled_server.target) as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetModelInfo(pb.GetModelInfoRequest(model="nope"), timeout=10)
    assert (info.name, info.version, info.latent_dim, info.num_classes) == ("digits", "2", 64, 10)
    assert (info.height, info.width, info.channels) == (32, 32, 1)
    assert list(info.class_names) == [str(i) for i in range(10)]
    assert info.max_batch_size == 64 and info.backend == "onnxruntime-cpu"
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", ["", "ganserve.v1.Generator"])
def test_health_reports_serving(bundled_server: ServerThread, service: str) -> None:
    with grpc.insecure_channel(bundled_server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_generator(bundled_server: ServerThread) -> None:
    with grpc.insecure_channel(bundled_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="ganserve.v1.Generator"),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"ganserve.v1.Generator", "ganserve.v1.ModelAdmin", "grpc.health.v1.Health"} <= names
    proto = descriptor_pb2.FileDescriptorProto.FromString(
        described.file_descriptor_response.file_descriptor_proto[0]
    )
    methods = [m.name for m in proto.service[0].method]
    assert methods == ["Generate", "GetModelInfo", "GenerateBatch", "Interpolate"]


def test_metrics_endpoint_counts_requests_and_batches(bundled_server: ServerThread) -> None:
    before = scrape(bundled_server)  # a fresh server may not have a sample yet: count it as 0
    generate(bundled_server, seed=5, class_label=5)
    expect_error(
        bundled_server, grpc.StatusCode.INVALID_ARGUMENT, "out of range", seed=5, class_label=50
    )
    after = scrape(bundled_server)

    def rise(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    text = after["_text"]
    assert 'ganserve_requests_total{code="OK",method="Generate",model="digits",version="2"}' in text
    assert 'code="INVALID_ARGUMENT"' in text
    assert rise("ganserve_requests_total") == 2
    assert rise("ganserve_batch_size_count") >= 1
    assert rise("ganserve_images_generated_total") == 1
    assert 'ganserve_model_info{backend="onnxruntime-cpu",model="digits",version="2"} 1.0' in text
    # Each stage of the one served request was timed: the series exist from the start, so it
    # is their counts and sums that must move, not the presence of a bucket line.
    for histogram in (
        "request_duration_seconds",
        "queue_duration_seconds",
        "inference_duration_seconds",
        "encode_duration_seconds",
    ):
        assert rise(f"ganserve_{histogram}_count") >= 1, histogram
        assert rise(f"ganserve_{histogram}_sum") > 0, histogram


def test_metrics_md_documents_exactly_what_the_server_exports(
    bundled_server: ServerThread,
) -> None:
    """Every family a real scrape holds is in docs/metrics.md, and every name documented there
    is exported (the GPU gauges only with NVML and a GPU)."""
    text = scrape(bundled_server)["_text"]
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")  # prometheus_client's creation timestamps
    }
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`((?:ganserve|process|python)_[a-z_]+)", doc))
    assert sorted(exported - documented) == []
    assert sorted(n for n in documented - exported if "_gpu_" not in n) == []
    assert "process_resident_memory_bytes" in exported  # the process collector is registered


def test_drain_flips_health_finishes_accepted_work_and_refuses_new(start_server) -> None:
    server = start_server()
    batcher = server.server.models.resolve("digits").batcher
    gate, started = threading.Event(), threading.Event()
    engine = batcher._free[0]
    real_run = engine.run

    def held_run(feeds):  # hold the batch in the engine until the test says go
        started.set()
        gate.wait(20)
        return real_run(feeds)

    engine.run = held_run
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        accepted = pool.submit(generate, server, seed=8, class_label=8)
        assert started.wait(20)
        stopping = pool.submit(server.stop, 20)
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="ganserve.v1.Generator")
            while health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                time.sleep(0.01)
        expect_error(server, grpc.StatusCode.UNAVAILABLE, "draining", seed=9, class_label=9)
        gate.set()
        assert accepted.result(20).image.startswith(b"\x89PNG")
        stopping.result(30)


@pytest.mark.parametrize("age_s", [0.0, 1.0], ids=["off", "1 s"])
def test_max_connection_age_sends_clients_to_reconnect(start_server, age_s: float) -> None:
    """gRPC clients resolve a name (a headless Service) again only when a connection ends, and
    the server never ended one: pods the autoscaler added got no traffic from them. With an
    age, the server sends GOAWAY and the client's next call reconnects (resolving again)."""
    server = start_server(max_connection_age_s=age_s)
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(server.target) as channel:
        channel.subscribe(states.append)
        stub = generator_pb2_grpc.GeneratorStub(channel)
        assert stub.Generate(pb.GenerateRequest(seed=1, class_label=1), timeout=30).image
        deadline = time.monotonic() + 4  # 1 s, gRPC's +-10 % jitter, and room for a slow CI
        while time.monotonic() < deadline and not _left_ready(states):
            time.sleep(0.05)
        left = _left_ready(states)
        assert stub.Generate(pb.GenerateRequest(seed=2, class_label=2), timeout=30).image
    assert left == (age_s > 0), states


def _left_ready(states: list[grpc.ChannelConnectivity]) -> bool:
    """The channel was READY and then was not (GOAWAY: IDLE until the next call)."""
    ready = grpc.ChannelConnectivity.READY
    return ready in states and states[-1] != ready and states.index(ready) < len(states) - 1
