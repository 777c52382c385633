"""Bad input never crashes the server and never comes back UNKNOWN or INTERNAL.

Property-based tests draw every field of every RPC (valid and not) and compare the status with
what the contract says the request deserves; raw malformed bytes go to every method; extremes
(edge seeds, huge counts and names, unknown enums, oversize messages) are tried one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ServerThread
from ganserve.v1 import admin_pb2, generator_pb2
from ganserve.v1 import generator_pb2 as pb

pytestmark = pytest.mark.timeout(600)

CAP = 16  # max_items_per_call of the server under test
CLASSES = 10
SERVED_VERSION = "2"
MODEL = "digits"
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
PROPERTY = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def server(start_server_module: Callable[..., ServerThread]) -> ServerThread:
    return start_server_module(max_items_per_call=CAP, max_queue_delay_us=500)


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


# --- strategies: each field's valid values, its edges, and junk --------------------------------

seeds = st.integers(0, 2**64 - 1)
labels = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1), st.integers(-2, CLASSES + 1))
encodings = st.one_of(st.sampled_from([0, 1]), st.integers(-(2**31), 2**31 - 1))
truncations = st.one_of(
    st.none(), st.floats(0, 2, width=32), st.floats(width=32, allow_nan=True, allow_infinity=True)
)
# Proto strings are UTF-8: anything but lone surrogates, including control characters.
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
models = st.one_of(st.sampled_from(["", MODEL]), texts)
versions = st.one_of(st.sampled_from(["", SERVED_VERSION, "1", "0", "-1"]), texts)
frames = st.one_of(st.integers(0, CAP + 2), st.integers(-(2**31), 2**31 - 1))


def _model_problems(model: str, version: str) -> list[tuple[grpc.StatusCode, str]]:
    if model not in ("", MODEL):
        return [(NOT_FOUND, "model")]
    if version not in ("", SERVED_VERSION):
        return [(NOT_FOUND, "version")]
    return []


def _label_problems(label: int | None, field: str) -> list[tuple[grpc.StatusCode, str]]:
    return [] if label is not None and 0 <= label < CLASSES else [(INVALID, field)]


def _common_problems(encoding: int, truncation: float | None) -> list[tuple[grpc.StatusCode, str]]:
    out = []
    if encoding not in (0, 1):
        out.append((INVALID, "encoding"))
    if truncation is not None and not (math.isfinite(truncation) and 0 <= truncation <= 2):
        out.append((INVALID, "truncation"))
    return out


def check(call: Callable[[], object], problems: list[tuple[grpc.StatusCode, str]]) -> object:
    """Make the call: OK when there are no problems, else the status of one of them, with a
    message naming its field; never anything else."""
    try:
        reply = call()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        assert problems, f"a valid request failed: {code.name}: {details}"
        assert any(code == c and field in details for c, field in problems), (
            f"{code.name}: {details!r}; expected one of {problems}"
        )
        return None
    assert not problems, f"an invalid request succeeded; expected one of {problems}"
    return reply


def _check_image(image: bytes, encoding: int) -> None:
    if encoding == pb.IMAGE_ENCODING_RAW_UINT8:
        assert len(image) == 32 * 32
    else:
        assert image.startswith(b"\x89PNG")


# --- property tests over every field of every RPC ----------------------------------------------


@PROPERTY
@given(
    seed=seeds,
    label=labels,
    model=models,
    version=versions,
    enc=encodings,
    psi=truncations,
    mix=st.one_of(st.none(), seeds),
    mix_layer=st.integers(-(2**31), 2**31 - 1),
)
def test_generate_answers_every_request_by_the_contract(
    channel: grpc.Channel, seed, label, model, version, enc, psi, mix, mix_layer
) -> None:
    request = pb.GenerateRequest(
        seed=seed,
        class_label=label,
        model=model,
        model_version=version,
        encoding=enc,
        style_mix_seed=mix,
        style_mix_layer=mix_layer,
    )
    if psi is not None:
        request.truncation = psi
    # The bundled DCGAN has no style layers: any style_mix_seed is refused, and a layer
    # without a seed is refused on any model.
    mixing = [(INVALID, "style_mix_seed")] if mix is not None else []
    if mix is None and mix_layer:
        mixing = [(INVALID, "style_mix_layer")]
    problems = _model_problems(model, version) or (
        _label_problems(label, "class_label") + _common_problems(enc, psi) + mixing
    )
    stub = channel.unary_unary(
        "/ganserve.v1.Generator/Generate",
        request_serializer=pb.GenerateRequest.SerializeToString,
        response_deserializer=pb.GenerateResponse.FromString,
    )
    reply = check(lambda: stub(request, timeout=30), problems)
    if reply is not None:
        assert (reply.seed, reply.class_label, reply.model_version) == (seed, label, "2")
        _check_image(reply.image, enc)


@PROPERTY
@given(
    items=st.lists(st.tuples(seeds, labels), max_size=CAP + 3),
    model=models,
    version=versions,
    enc=encodings,
    psi=truncations,
)
def test_generate_batch_answers_every_request_by_the_contract(
    channel: grpc.Channel, items, model, version, enc, psi
) -> None:
    request = pb.GenerateBatchRequest(
        items=[pb.BatchItem(seed=s, class_label=c) for s, c in items],
        model=model,
        model_version=version,
        encoding=enc,
    )
    if psi is not None:
        request.truncation = psi
    # The model is resolved first (so a call for a served model is metered under it).
    if problems := _model_problems(model, version):
        pass
    elif not 1 <= len(items) <= CAP:
        problems = [(INVALID, "items")]
    else:
        problems = _common_problems(enc, psi) + [
            p for i, (_, c) in enumerate(items) for p in _label_problems(c, f"items[{i}]")
        ]
    stub = channel.unary_unary(
        "/ganserve.v1.Generator/GenerateBatch",
        request_serializer=pb.GenerateBatchRequest.SerializeToString,
        response_deserializer=pb.GenerateBatchResponse.FromString,
    )
    reply = check(lambda: stub(request, timeout=30), problems)
    if reply is not None:
        assert [(r.seed, r.class_label) for r in reply.images] == items
        for image in reply.images:
            _check_image(image.image, enc)


@PROPERTY
@given(
    start=seeds,
    end=seeds,
    label=labels,
    n=frames,
    model=models,
    version=versions,
    enc=encodings,
    psi=truncations,
)
def test_interpolate_answers_every_request_by_the_contract(
    channel: grpc.Channel, start, end, label, n, model, version, enc, psi
) -> None:
    request = pb.InterpolateRequest(
        seed_start=start,
        seed_end=end,
        class_label=label,
        frames=n,
        model=model,
        model_version=version,
        encoding=enc,
    )
    if psi is not None:
        request.truncation = psi
    if problems := _model_problems(model, version):
        pass
    elif not 2 <= n <= CAP:
        problems = [(INVALID, "frames")]
    else:
        problems = _label_problems(label, "class_label") + _common_problems(enc, psi)
    stub = channel.unary_stream(
        "/ganserve.v1.Generator/Interpolate",
        request_serializer=pb.InterpolateRequest.SerializeToString,
        response_deserializer=pb.InterpolateFrame.FromString,
    )
    reply = check(lambda: list(stub(request, timeout=30)), problems)
    if reply is not None:
        assert [f.index for f in reply] == list(range(n))
        assert np.allclose([f.t for f in reply], np.linspace(0, 1, n))


@PROPERTY
@given(model=models)
def test_get_model_info_answers_every_request_by_the_contract(channel: grpc.Channel, model) -> None:
    stub = channel.unary_unary(
        "/ganserve.v1.Generator/GetModelInfo",
        request_serializer=pb.GetModelInfoRequest.SerializeToString,
        response_deserializer=pb.ModelInfo.FromString,
    )
    problems = _model_problems(model, "")
    reply = check(lambda: stub(pb.GetModelInfoRequest(model=model), timeout=30), problems)
    if reply is not None:
        assert reply.name == MODEL


# --- raw bytes to every method ------------------------------------------------------------------

# (method path, request message class, how it streams: "unary", "server" or "bidi")
METHODS = [
    ("/ganserve.v1.Generator/Generate", pb.GenerateRequest, "unary"),
    ("/ganserve.v1.Generator/GenerateBatch", pb.GenerateBatchRequest, "unary"),
    ("/ganserve.v1.Generator/Interpolate", pb.InterpolateRequest, "server"),
    ("/ganserve.v1.Generator/GetModelInfo", pb.GetModelInfoRequest, "unary"),
    ("/ganserve.v1.ModelAdmin/ListModels", admin_pb2.ListModelsRequest, "unary"),
    ("/ganserve.v1.ModelAdmin/ReloadModels", admin_pb2.ReloadModelsRequest, "unary"),
    ("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest, "unary"),
    ("/grpc.health.v1.Health/Watch", health_pb2.HealthCheckRequest, "server"),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest,
        "bidi",
    ),
]
METHOD_IDS = [m[0].rsplit("/", 1)[1] for m in METHODS]


def _send(channel: grpc.Channel, method: str, streaming: str, payload: bytes) -> object:
    """Send raw bytes; return the first response's bytes (streams are cut after one)."""
    if streaming != "unary":
        if streaming == "bidi":
            call = channel.stream_stream(method)(iter([payload]), timeout=10)
        else:
            call = channel.unary_stream(method)(payload, timeout=10)
        try:
            return next(call)
        finally:
            call.cancel()
    return channel.unary_unary(method)(payload, timeout=10)


def _string_field_number(message: type) -> int | None:
    for field in message.DESCRIPTOR.fields:
        if field.type == field.TYPE_STRING:
            return field.number
    return None


def _malformed(message: type) -> list[bytes]:
    """Bytes that cannot parse as ``message``."""
    out = [
        b"\x08",  # a varint field with its value cut off
        b"\x0a\x05ab",  # a length-delimited field 2 bytes long that claims 5
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a tag varint longer than 64 bits
        b"\x0f",  # wire type 7 does not exist
    ]
    number = _string_field_number(message)
    if number is not None:  # a string field holding bytes that are not UTF-8
        out.append(bytes([number << 3 | 2, 2, 0xC3, 0x28]))
    return out


@pytest.mark.parametrize(("method", "message", "streaming"), METHODS, ids=METHOD_IDS)
def test_malformed_bytes_are_invalid_argument_naming_the_message(
    channel: grpc.Channel, method: str, message: type, streaming: str
) -> None:
    for payload in _malformed(message):
        with pytest.raises(grpc.RpcError) as info:
            _send(channel, method, streaming, payload)
        assert info.value.code() == INVALID, (payload, info.value.details())
        assert message.DESCRIPTOR.full_name in info.value.details()


ACCEPTABLE_FOR_RANDOM_BYTES = {grpc.StatusCode.OK, INVALID, NOT_FOUND}


@settings(max_examples=40, deadline=None)
@given(index=st.sampled_from(range(len(METHODS))), payload=st.binary(max_size=64))
def test_random_bytes_never_crash_or_come_back_unknown(
    channel: grpc.Channel, index: int, payload: bytes
) -> None:
    method, _, streaming = METHODS[index]
    try:
        _send(channel, method, streaming, payload)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        assert code in ACCEPTABLE_FOR_RANDOM_BYTES, (method, payload, exc.details())


def test_the_server_still_serves_after_the_junk(channel: grpc.Channel) -> None:
    stub = channel.unary_unary(
        "/ganserve.v1.Generator/Generate",
        request_serializer=pb.GenerateRequest.SerializeToString,
        response_deserializer=pb.GenerateResponse.FromString,
    )
    assert stub(pb.GenerateRequest(seed=1, class_label=1), timeout=30).image


# --- extremes -------------------------------------------------------------------------------


def _generate(channel: grpc.Channel, request: object, name: str = "Generate") -> object:
    message = getattr(generator_pb2, f"{name}Request")
    return channel.unary_unary(
        f"/ganserve.v1.Generator/{name}",
        request_serializer=message.SerializeToString,
        response_deserializer=lambda b: b,
    )(request, timeout=30)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("ダイジッツ", "'ダイジッツ'"),
        ("digits\x00", "'digits\\x00'"),
        ("x" * 100_000, "characters)"),
    ],
    ids=["unicode", "control-character", "100k-characters"],
)
def test_odd_model_names_are_not_found_with_a_short_escaped_message(
    channel: grpc.Channel, name: str, shown: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _generate(channel, pb.GenerateRequest(seed=1, class_label=1, model=name))
    assert info.value.code() == NOT_FOUND
    assert shown in info.value.details() and "available: digits" in info.value.details()
    assert len(info.value.details()) < 300


def test_a_batch_far_over_the_cap_is_invalid_argument(channel: grpc.Channel) -> None:
    request = pb.GenerateBatchRequest(
        items=[pb.BatchItem(seed=i, class_label=1) for i in range(5000)]
    )
    with pytest.raises(grpc.RpcError) as info:
        _generate(channel, request, "GenerateBatch")
    assert info.value.code() == INVALID
    assert "items has 5000 entries; send 1..16" in info.value.details()


def test_a_message_over_max_request_bytes_is_resource_exhausted(channel: grpc.Channel) -> None:
    request = pb.GenerateBatchRequest(
        items=[pb.BatchItem(seed=2**64 - 1, class_label=1) for _ in range(200_000)]
    )
    assert request.ByteSize() > 1024 * 1024  # the server's default max_request_bytes
    with pytest.raises(grpc.RpcError) as info:
        _generate(channel, request, "GenerateBatch")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("encoding", [2, -1, 2**31 - 1])
def test_unknown_enum_values_name_the_field_and_the_choices(
    channel: grpc.Channel, encoding: int
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _generate(channel, pb.GenerateRequest(seed=1, class_label=1, encoding=encoding))
    assert info.value.code() == INVALID
    assert f"encoding {encoding} is not supported" in info.value.details()
    assert "IMAGE_ENCODING_PNG" in info.value.details()
