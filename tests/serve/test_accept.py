"""Concurrent accepts (serve/accept.py): calls taken by the extra pending accepts are handled
exactly like calls taken by grpcio's own loop, and the server falls back to that loop alone
when grpcio's private entry points are not what the module expects."""

from __future__ import annotations

import concurrent.futures
import logging

import grpc
import pytest
from grpc._cython import cygrpc

from conftest import generator_stub
from ganserve.serve import accept
from ganserve.v1 import generator_pb2 as pb

TOKEN = "accept-test-token-0123456789"
CALLS = 48  # concurrent calls per check: more than grpcio's own loop takes at once


def _concurrently(fn, count: int = CALLS) -> list:
    """``fn(i)`` for i in 0..count-1 from as many threads, all in flight together."""
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(fn, range(count)))


def _outcome(stub, i: int, metadata=()):
    try:
        reply = stub.Generate(
            pb.GenerateRequest(seed=i, class_label=i % 10, encoding=pb.IMAGE_ENCODING_RAW_UINT8),
            metadata=metadata,
            timeout=30,
        )
        return reply.image
    except grpc.RpcError as exc:
        return exc.code()


def test_concurrent_calls_come_in_through_the_extra_accepts_with_the_same_images(start_server):
    server = start_server(concurrent_accepts=8)
    accepts = server.server.accepts
    assert accepts is not None and accepts.pending == 8 * 4  # Generator's 4 methods
    with generator_stub(server.target) as stub:
        one_at_a_time = [_outcome(stub, i) for i in range(CALLS)]
        before = accepts.accepted
        together = _concurrently(lambda i: _outcome(stub, i))
    assert all(isinstance(image, bytes) for image in one_at_a_time)
    assert together == one_at_a_time  # whichever accept took a call, the same image
    assert accepts.accepted > before


def test_the_bearer_token_is_checked_on_calls_the_extra_accepts_take(start_server):
    server = start_server(auth_token=TOKEN, concurrent_accepts=8)
    accepts = server.server.accepts
    with generator_stub(server.target) as stub:
        before = accepts.accepted
        refused = _concurrently(lambda i: _outcome(stub, i))
        taken = accepts.accepted - before
        allowed = _concurrently(
            lambda i: _outcome(stub, i, metadata=(("authorization", f"Bearer {TOKEN}"),))
        )
    assert taken > 0  # the refusals below include calls the extra accepts took
    assert refused == [grpc.StatusCode.UNAUTHENTICATED] * CALLS
    assert all(isinstance(image, bytes) for image in allowed)


def test_unparsable_requests_the_extra_accepts_take_are_refused_and_counted(start_server):
    server = start_server(concurrent_accepts=8)
    accepts = server.server.accepts
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/ganserve.v1.Generator/Generate")  # bytes in, bytes out

        def send(_: int):
            try:
                return raw(b"\xff\xff\xff", timeout=30)
            except grpc.RpcError as exc:
                return exc.code()

        before = accepts.accepted
        codes = _concurrently(send)
    assert accepts.accepted > before
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * CALLS
    counted = server.server.metrics.registry.get_sample_value(
        "ganserve_requests_total",
        {"method": "Generate", "model": "_unknown", "version": "", "code": "INVALID_ARGUMENT"},
    )
    assert counted == CALLS


def test_the_extra_accepts_end_when_the_server_stops(start_server):
    server = start_server(concurrent_accepts=8)
    accepts = server.server.accepts
    assert accepts.pending == 32
    server.stop()
    assert accepts.pending == 0


def test_zero_leaves_grpcios_loop_alone(start_server):
    server = start_server(concurrent_accepts=0)
    assert server.server.accepts is None
    with generator_stub(server.target) as stub:
        assert all(isinstance(x, bytes) for x in _concurrently(lambda i: _outcome(stub, i), 8))


def test_an_unexpected_grpcio_falls_back_to_its_own_loop_with_a_warning(
    start_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(
        accept, "_EXPECTED", {**accept._EXPECTED, "_schedule_rpc_coro": ("coro", "state")}
    )
    with caplog.at_level(logging.WARNING, logger="ganserve.serve.server"):
        server = start_server(concurrent_accepts=8)
    assert server.server.accepts is None
    assert "concurrent accepts off (grpcio" in caplog.text
    assert "cygrpc._schedule_rpc_coro takes ('rpc_coro', 'rpc_state'" in caplog.text
    with generator_stub(server.target) as stub:
        assert all(isinstance(x, bytes) for x in _concurrently(lambda i: _outcome(stub, i), 8))


def test_supported_names_what_is_missing(monkeypatch: pytest.MonkeyPatch):
    why_not = accept.supported()
    assert why_not is None, (
        f"{why_not}: serve/accept.py calls grpcio's private entry points; check them against "
        "this grpcio's aio/server.pyx.pxi and update _EXPECTED"
    )
    monkeypatch.delattr(cygrpc, "_handle_rpc")
    assert accept.supported() == f"grpcio {grpc.__version__} has no cygrpc._handle_rpc"


def test_a_grpcio_without_its_cython_module_is_not_supported(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(accept, "cygrpc", None)
    assert accept.supported() == f"grpcio {grpc.__version__} has no grpc._cython.cygrpc"
