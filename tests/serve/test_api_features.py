"""GenerateBatch, Interpolate, truncation, version pinning and the response cache, through a
real server on the bundled model."""

from __future__ import annotations

import math
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from conftest import BUNDLED_REPOSITORY, ServerThread, generator_stub, scrape
from ganserve.client import GeneratorClient, ImageEncoding
from ganserve.serve import repository
from ganserve.serve.backends import Backend, EngineOptions, create_engine
from ganserve.serve.cache import ENTRY_OVERHEAD_BYTES, ResponseCache
from ganserve.serve.imaging import to_uint8
from ganserve.serve.inputs import feeds_for_seeds
from ganserve.serve.metrics import ServerMetrics
from ganserve.v1 import admin_pb2, admin_pb2_grpc
from ganserve.v1 import generator_pb2 as pb

RAW = ImageEncoding.RAW_UINT8


@pytest.fixture(scope="module")
def server(start_server_module) -> ServerThread:
    return start_server_module(cache_bytes=1 << 20, max_items_per_call=64)


@pytest.fixture
def client(server: ServerThread) -> GeneratorClient:
    with GeneratorClient(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def reference() -> Callable[[list[int], list[int]], np.ndarray]:
    """The served version's images computed in process (the engine, not the server and its
    cache): (seeds, labels) -> (N, H, W, C) uint8."""
    version = repository.latest(BUNDLED_REPOSITORY, "digits")
    engine = create_engine(
        version.path, version.metadata, Backend.ONNXRUNTIME_CPU, EngineOptions(max_batch_size=64)
    )

    def images(seeds: list[int], labels: list[int]) -> np.ndarray:
        feeds = feeds_for_seeds(version.metadata, seeds, labels)
        return to_uint8(
            np.concatenate(
                [engine.run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(len(seeds))]
            )
        )

    yield images
    engine.close()


def test_generate_batch_returns_images_in_request_order(
    client: GeneratorClient, reference: Callable
) -> None:
    items = [(s, s % 10) for s in (5, 1, 9, 2**64 - 1, 0)]
    batch = client.generate_batch(items, encoding=RAW)
    assert [(r.response.seed, r.response.class_label) for r in batch] == items
    expected = reference([s for s, _ in items], [c for _, c in items])
    for (seed, label), image, pixels in zip(items, batch, expected, strict=True):
        assert np.array_equal(image.pixels, pixels)  # computed one at a time, outside
        # Every field, not just the pixels: the items are built from shared fields.
        assert image.response == client.generate(seed, label, encoding=RAW).response


def test_the_response_cache_tells_classes_apart(
    client: GeneratorClient, reference: Callable
) -> None:
    """One seed asked for three classes, twice each, with the cache on: a key missing the
    class would answer with the first class's image."""
    seed, labels = 424242, [1, 2, 7]
    expected = reference([seed] * 3, labels)
    for _ in range(2):
        for label, pixels in zip(labels, expected, strict=True):
            assert np.array_equal(client.generate(seed, label, encoding=RAW).pixels, pixels)
    assert len({p.tobytes() for p in expected}) == 3


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ([(1, 1), (2, None), (3, 11)], "items[1].class_label is required"),
        ([(1, 1), (2, -1), (3, None)], "items[1].class_label -1 is out of range"),
        ([(1, 9), (2, 0), (3, 10)], "items[2].class_label 10 is out of range"),
    ],
)
def test_generate_batch_names_the_first_bad_item(
    server: ServerThread, items: list, problem: str
) -> None:
    request = pb.GenerateBatchRequest(items=[pb.BatchItem(seed=s, class_label=c) for s, c in items])
    with generator_stub(server.target) as stub, pytest.raises(grpc.RpcError) as info:
        stub.GenerateBatch(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(problem)


def test_generate_batch_names_the_bad_item(client: GeneratorClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.generate_batch([(1, 1), (2, 11)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "items[1].class_label 11 is out of range: model 'digits' has classes 0..9"
    )


def test_interpolate_streams_frames_from_start_to_end_seed(client: GeneratorClient) -> None:
    frames = list(client.interpolate(3, 4, 7, class_label=2, encoding=RAW))
    assert [f.response.index for f in frames] == list(range(7))
    assert [round(f.response.t, 4) for f in frames] == [round(t, 4) for t in np.linspace(0, 1, 7)]
    # The ends of the walk are exactly the two seeds' images.
    assert frames[0].response.image == client.generate(3, 2, encoding=RAW).response.image
    assert frames[-1].response.image == client.generate(4, 2, encoding=RAW).response.image
    assert len({f.response.image for f in frames}) == 7


@pytest.mark.parametrize("frames", [0, 1, 65])
def test_interpolate_rejects_frame_counts_outside_the_cap(
    client: GeneratorClient, frames: int
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(client.interpolate(1, 2, frames, class_label=1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"frames {frames} is out of range: use 2..64" in info.value.details()


def test_truncation_zero_maps_every_seed_to_the_mean_image(client: GeneratorClient) -> None:
    means = {client.generate(s, 4, truncation=0.0, encoding=RAW).response.image for s in (1, 2, 3)}
    plain = client.generate(1, 4, encoding=RAW).response.image
    half = client.generate(1, 4, truncation=0.5, encoding=RAW).response.image
    assert len(means) == 1 and plain not in means and half not in means | {plain}
    assert client.generate(1, 4, truncation=1.0, encoding=RAW).response.image == plain


@pytest.mark.parametrize(
    ("psi", "shown"),
    [(-0.1, "-0.1"), (2.5, "2.5"), (2.0000002, "2.0000002"), (math.nan, "nan"), (math.inf, "inf")],
)
def test_truncation_out_of_range_is_invalid(server: ServerThread, psi: float, shown: str) -> None:
    """Through the bare stub: the Python client refuses non-finite values itself. The value is
    shown as the caller wrote it, not as the float32 on the wire widened (2.00000023841...)."""
    with generator_stub(server.target) as stub, pytest.raises(grpc.RpcError) as info:
        stub.Generate(pb.GenerateRequest(seed=1, class_label=1, truncation=psi), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"truncation {shown} is out of range")
    assert "0 <= truncation <= 2" in info.value.details()


def test_model_version_can_be_pinned(client: GeneratorClient) -> None:
    assert client.generate(1, 1, model_version="2").response.model_version == "2"
    with pytest.raises(grpc.RpcError) as info:
        client.generate(1, 1, model_version="7")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == ("model 'digits' version '7' is not served; served versions: 2")


def test_model_info_reports_versions_limits_and_truncation_mode(client: GeneratorClient) -> None:
    info = client.model_info()
    assert list(info.versions) == ["2"]
    assert info.max_items_per_call == 64 and info.truncation_mode == "z-scale"
    assert (info.architecture, info.style_layers) == ("dcgan", 0)


def test_style_mixing_on_a_model_without_style_layers_is_invalid(client: GeneratorClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.generate(seed=1, class_label=1, style_mix_seed=2, style_mix_layer=1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "style_mix_seed must be unset: model 'digits' (dcgan) has no style layers" in (
        info.value.details()
    )


@pytest.mark.parametrize("layer", [-5, 1, 99])
def test_a_style_mix_layer_without_a_seed_is_invalid(client: GeneratorClient, layer: int) -> None:
    """It was ignored in silence; the caller meant to mix and got a plain image."""
    with pytest.raises(grpc.RpcError) as info:
        client.generate(seed=1, class_label=1, style_mix_layer=layer)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"style_mix_layer {layer} needs style_mix_seed" in info.value.details()


def test_repeated_requests_hit_the_cache(server: ServerThread, client: GeneratorClient) -> None:
    def counts() -> tuple[float, float]:
        m = scrape(server)
        return m.get("ganserve_cache_hits_total", 0.0), m.get("ganserve_cache_misses_total", 0.0)

    hits0, misses0 = counts()
    first = client.generate(123456, 6).response.image
    again = client.generate(123456, 6).response.image
    other_encoding = client.generate(123456, 6, encoding=RAW).response.image
    hits1, misses1 = counts()
    assert again == first and other_encoding != first
    assert (hits1 - hits0, misses1 - misses0) == (1, 2)
    assert scrape(server)["ganserve_cache_bytes"] > 0


def test_cache_keeps_within_its_byte_budget_evicting_least_recent() -> None:
    cache = ResponseCache(3 * (100 + ENTRY_OVERHEAD_BYTES), ServerMetrics(max_batch_size=1))
    for key in "abc":
        cache.put(key, bytes(100))
    cache.get("a")  # a is now the most recent
    cache.put("d", bytes(100))
    assert cache.get("b") is None and cache.get("a") is not None
    assert len(cache) == 3 and cache.size_bytes <= cache.budget
    cache.put("huge", bytes(10_000))  # larger than the whole budget: not stored
    assert cache.get("huge") is None and len(cache) == 3


def test_request_id_is_echoed_in_trailing_metadata(server: ServerThread) -> None:
    with generator_stub(server.target) as stub:
        _, call = stub.Generate.with_call(
            pb.GenerateRequest(seed=1, class_label=1),
            metadata=[("x-request-id", "abc-123")],
            timeout=30,
        )
        trailing = dict(call.trailing_metadata())
        _, anonymous = stub.Generate.with_call(
            pb.GenerateRequest(seed=1, class_label=1), timeout=30
        )
    assert trailing["x-request-id"] == "abc-123"
    assert len(dict(anonymous.trailing_metadata())["x-request-id"]) == 16


def test_request_id_is_echoed_on_replies_made_outside_the_generator(
    server: ServerThread,
) -> None:
    """Bytes that do not parse are refused before the servicer runs, and ModelAdmin is its own
    service: both still echo the caller's id, which is how a caller finds the server's log."""
    metadata = [("x-request-id", "abc-456")]
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/ganserve.v1.Generator/Generate")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x08", metadata=metadata, timeout=30)  # a truncated varint
        admin = admin_pb2_grpc.ModelAdminStub(channel)
        _, listed = admin.ListModels.with_call(
            admin_pb2.ListModelsRequest(), metadata=metadata, timeout=30
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata())["x-request-id"] == "abc-456"
    assert dict(listed.trailing_metadata())["x-request-id"] == "abc-456"


def test_items_per_call_never_exceed_the_queue(start_server) -> None:
    server = start_server(max_queue_size=8, max_items_per_call=1024)
    with GeneratorClient(server.target) as client:
        assert client.model_info().max_items_per_call == 8
        with pytest.raises(grpc.RpcError) as info:
            client.generate_batch([(s, 1) for s in range(9)])
    assert "send 1..8 per call" in info.value.details()


def test_interpolate_on_a_server_capped_at_one_image_a_call_names_the_settings(
    start_server,
) -> None:
    """It said 'frames 2 is out of range: use 2..1', a range no client can send."""
    server = start_server(max_items_per_call=1)
    with GeneratorClient(server.target) as client, pytest.raises(grpc.RpcError) as info:
        list(client.interpolate(1, 2, 2, 1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes at most 1 image a call for model 'digits' (--max-items-per-call" in (
        info.value.details()
    )


def test_a_batch_whose_response_would_not_fit_is_refused_up_front(
    start_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within max_items_per_call but over the response limit, the images were once computed
    and then failed by gRPC itself ("Sent message larger than max") while the server counted
    an OK. A 100 kB limit stands in for 256 MiB: 32x32x1 images fit 48 to it."""
    from ganserve.serve import server as server_module

    monkeypatch.setattr(server_module, "MAX_RESPONSE_BYTES", 100_000)
    server = start_server(max_items_per_call=1024)
    with GeneratorClient(server.target) as c:
        assert c.model_info().max_items_per_call == 48
        for encoding in (ImageEncoding.PNG, RAW):
            assert len(c.generate_batch([(s, 1) for s in range(48)], encoding=encoding)) == 48
        with pytest.raises(grpc.RpcError) as info:
            c.generate_batch([(s, 1) for s in range(49)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items has 49 entries, but 32x32x1 images of model 'digits' fit 48" in (
        info.value.details()
    )
    assert "send 1..48 per call" in info.value.details()
    # Interpolate's frames are capped by the same figure GetModelInfo reports (proto contract).
    with GeneratorClient(server.target) as c:
        assert len(list(c.interpolate(1, 2, 48, 1))) == 48
        with pytest.raises(grpc.RpcError) as info:
            list(c.interpolate(1, 2, 49, 1))
    assert "frames 49 is out of range: use 2..48" in info.value.details()
