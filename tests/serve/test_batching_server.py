"""Batching behaviour seen from outside, through a real server: batches form under
concurrency, dead requests never reach the engine, a full queue answers RESOURCE_EXHAUSTED at
once, and a planted engine failure fails one batch only."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from conftest import ServerThread, control_engine, generator_stub, scrape
from ganserve.client import GeneratorClient, RetryPolicy
from ganserve.serve.batcher import RETRY_AFTER_S
from ganserve.v1 import generator_pb2 as pb


def call(server: ServerThread, seed: int, timeout: float = 30) -> grpc.StatusCode:
    with generator_stub(server.target) as stub:
        try:
            stub.Generate(pb.GenerateRequest(seed=seed, class_label=seed % 10), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_concurrent_requests_are_batched(start_server) -> None:
    server = start_server(max_queue_delay_us=20_000, max_batch_size=16)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda s: call(server, s), range(64)))
    assert set(codes) == {grpc.StatusCode.OK}
    metrics = scrape(server)
    requests, batches = metrics["ganserve_batch_size_sum"], metrics["ganserve_batch_size_count"]
    assert requests >= 64  # warm-up runs bypass the batcher
    assert batches < requests / 2, f"{requests} requests in {batches} batches: no batching"
    # The histogram's buckets show batches larger than one.
    text = metrics["_text"]
    ones = float(
        next(
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith("ganserve_batch_size_bucket") and 'le="1.0"' in line
        )
    )
    assert ones < batches


def test_deadlines_and_cancellations_never_reach_the_engine(start_server) -> None:
    server = start_server(max_batch_size=64)
    control = control_engine(server)
    control.hold()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        blocker = pool.submit(call, server, 0)
        assert control.entered.wait(10)
        short = [pool.submit(call, server, s, 0.3) for s in range(1, 5)]
        codes = [f.result(10) for f in short]
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 4
        with generator_stub(server.target) as stub:
            future = stub.Generate.future(pb.GenerateRequest(seed=9, class_label=9), timeout=30)
            time.sleep(0.2)
            future.cancel()
        time.sleep(0.2)  # let the server see the cancellation
        control.release()
        assert blocker.result(10) == grpc.StatusCode.OK
    assert call(server, 10) == grpc.StatusCode.OK
    # The engine saw the blocker and the last call, never the 5 dead requests.
    assert control.batches == [1, 1]
    metrics = scrape(server)["_text"]
    assert (
        'ganserve_requests_dropped_total{model="digits",reason="deadline",version="2"} 4.0'
        in metrics
    )
    assert (
        'ganserve_requests_dropped_total{model="digits",reason="cancelled",version="2"} 1.0'
        in metrics
    )
    assert server.server.models.resolve("digits").batcher.queue_depth == 0


@contextlib.contextmanager
def full_queue(start_server) -> Iterator[ServerThread]:
    """A server whose 4-image queue is full behind a held engine. On leaving, the engine is
    released, and the held call and the queued ones must all succeed."""
    server = start_server(max_batch_size=1, max_queue_size=4)
    control = control_engine(server)
    control.hold()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        blocker = pool.submit(call, server, 0)
        assert control.entered.wait(10)
        queued = [pool.submit(call, server, s) for s in range(1, 5)]
        deadline = time.monotonic() + 10
        while server.server.models.resolve("digits").batcher.queue_depth < 4:
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.01)
        try:
            yield server
        finally:
            control.release()
        assert [f.result(10) for f in [blocker, *queued]] == [grpc.StatusCode.OK] * 5


def test_full_queue_answers_resource_exhausted_at_once(start_server) -> None:
    with full_queue(start_server) as server:
        refused = [call(server, s) for s in range(5, 8)]  # answered while the engine is held
    assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3


def refused_calls(server: ServerThread) -> float:
    text = scrape(server)["_text"]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ganserve_requests_total{") and 'code="RESOURCE_EXHAUSTED"' in line
    )


def test_a_full_queue_says_when_to_retry_and_the_client_can_retry_it(start_server) -> None:
    """A refusal carries gRPC's retry pushback (how long until the queue has room), and the
    Python client retries RESOURCE_EXHAUSTED only when its policy asks for it."""
    with full_queue(start_server) as server:
        with generator_stub(server.target) as stub, pytest.raises(grpc.RpcError) as info:
            stub.Generate(pb.GenerateRequest(seed=5, class_label=5), timeout=10)
        trailers = dict(info.value.trailing_metadata())
        low, high = RETRY_AFTER_S
        assert low * 1000 <= int(trailers["grpc-retry-pushback-ms"]) <= high * 1000
        attempts = {}
        for retry_queue_full in (False, True):
            before = refused_calls(server)
            policy = RetryPolicy(max_attempts=3, retry_queue_full=retry_queue_full)
            with (
                GeneratorClient(server.target, retry=policy) as client,
                pytest.raises(grpc.RpcError) as info,
            ):
                client.generate(5, 5)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            deadline = time.monotonic() + 5  # counted just after the status is sent
            while refused_calls(server) == before and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            attempts[retry_queue_full] = refused_calls(server) - before
        assert attempts == {False: 1, True: 3}


def test_planted_engine_failure_fails_one_batch_only(start_server) -> None:
    server = start_server(max_batch_size=8, max_queue_delay_us=50_000)
    control = control_engine(server)
    control.fail_next = 1
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        failed = list(pool.map(lambda s: call(server, s), range(4)))
    assert failed == [grpc.StatusCode.INTERNAL] * 4  # one batch of four, failed together
    assert control.batches == [4]
    assert [call(server, s) for s in range(4)] == [grpc.StatusCode.OK] * 4
    assert (
        'ganserve_batch_failures_total{model="digits",version="2"} 1.0' in scrape(server)["_text"]
    )


@pytest.mark.parametrize("instances", [2])
def test_several_instances_serve_one_version(start_server, instances: int) -> None:
    """Each instance runs a batch of its own: with the engines held, as many batches are inside
    engines at the same moment as there are instances, and all are served once released."""
    server = start_server(instances=instances, max_batch_size=4)
    batcher = server.server.models.resolve("digits").batcher
    control = control_engine(server)
    inside = 0  # batches inside an engine right now
    lock = threading.Lock()

    def counted(run: Callable) -> Callable:
        def run_counted(feeds):
            nonlocal inside
            with lock:
                inside += 1
            try:
                return run(feeds)
            finally:
                with lock:
                    inside -= 1

        return run_counted

    for engine in batcher._free:
        engine.run = counted(engine.run)
    control.hold()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(call, server, s) for s in range(8 * instances)]
        try:
            deadline = time.monotonic() + 10
            while inside < instances:
                assert time.monotonic() < deadline, f"only {inside} batch(es) in engines at once"
                time.sleep(0.01)
            assert not control.gate.is_set()  # none was released to make room for another
        finally:
            control.release()
        codes = [f.result(30) for f in futures]
    assert set(codes) == {grpc.StatusCode.OK}
    assert len(batcher._free) == instances


@pytest.mark.parametrize("warmup", [True, False])
def test_several_instances_are_timed_at_load_to_judge_parallel_batches(
    start_server, warmup: bool
) -> None:
    """The bundled model takes ~0.1 ms an image at batch 64 on a CPU: a batch beside a running
    one waits for more than one image. Without a warm-up it is not timed, and any will do."""
    server = start_server(instances=2, max_batch_size=64, warmup=warmup)
    served = server.server.models.resolve("", "")
    if warmup:
        assert 1 < served.batcher.parallel_min <= 32
    else:
        assert served.batcher.parallel_min == 1
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda s: call(server, s), range(48)))
    assert set(codes) == {grpc.StatusCode.OK}
