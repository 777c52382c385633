"""Lifecycle: NOT_SERVING until warm, retries on UNAVAILABLE, the drain order, and reloads
that keep serving."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    BUNDLED_REPOSITORY,
    ServerThread,
    control_engine,
    generator_stub,
    make_config,
    scrape,
)
from ganserve.client import GeneratorClient, ImageEncoding, RetryPolicy
from ganserve.serve.backends import Backend, cpu
from ganserve.serve.config import ModelConfig
from ganserve.serve.errors import ModelLoadError
from ganserve.serve.metrics import ServerMetrics
from ganserve.serve.models import ModelManager, State
from ganserve.serve.server import grpc_address
from ganserve.v1 import admin_pb2, generator_pb2_grpc
from ganserve.v1 import generator_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="ganserve.v1.Generator")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def wait_until(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def loading_server(monkeypatch: pytest.MonkeyPatch):
    """A server whose model loading waits for `gate`; yields (thread, gate) with the port open."""
    gate = threading.Event()
    original = ModelManager.start

    async def slow_start(self: ModelManager) -> None:
        import asyncio

        await asyncio.to_thread(gate.wait, 30)
        await original(self)

    monkeypatch.setattr(ModelManager, "start", slow_start)
    thread = ServerThread(make_config(BUNDLED_REPOSITORY))
    thread._thread.start()  # do not wait for start() to finish: loading is held
    wait_until(lambda: thread.server is not None and thread.server.port, "the port to open")
    yield thread, gate
    gate.set()
    thread._ready.wait(30)
    thread.stop()


def test_health_is_not_serving_until_models_are_warm(loading_server) -> None:
    thread, gate = loading_server
    assert health(thread.target) == NOT_SERVING
    with generator_stub(thread.target) as stub, pytest.raises(grpc.RpcError) as info:
        stub.Generate(pb.GenerateRequest(seed=1, class_label=1), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "models are still loading" in info.value.details()
    with grpc.insecure_channel(thread.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == NOT_SERVING
        gate.set()
        assert next(watch).status == SERVING
        watch.cancel()


def test_client_retries_unavailable_until_the_server_is_ready(loading_server) -> None:
    thread, gate = loading_server
    with (
        GeneratorClient(thread.target, retry=None) as impatient,
        pytest.raises(grpc.RpcError) as info,
    ):
        impatient.generate(1, 1)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    threading.Timer(0.3, gate.set).start()
    retry = RetryPolicy(max_attempts=5, initial_backoff_s=0.2, max_backoff_s=1.0)
    with GeneratorClient(thread.target, retry=retry) as patient:
        assert patient.generate(1, 1).response.model == "digits"


def test_drain_order_not_serving_then_delay_then_unavailable(start_server) -> None:
    server = start_server(shutdown_delay_s=1.5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(server.stop, 10)
        wait_until(lambda: health(server.target) == NOT_SERVING, "NOT_SERVING")
        # Still inside the shutdown delay: load balancers may not have noticed yet.
        with generator_stub(server.target) as stub:
            assert stub.Generate(pb.GenerateRequest(seed=1, class_label=1), timeout=5).image

            def refused() -> bool:
                try:
                    stub.Generate(pb.GenerateRequest(seed=2, class_label=2), timeout=5)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    return True
                return False

            wait_until(refused, "UNAVAILABLE after the delay")
        stopping.result(30)


def copy_repository(tmp_path: pathlib.Path) -> pathlib.Path:
    repo = tmp_path / "models"
    (repo / "digits").mkdir(parents=True)
    shutil.copytree(
        BUNDLED_REPOSITORY / "digits" / "1",
        repo / "digits" / "1",
        ignore=shutil.ignore_patterns("*.pt"),
    )
    return repo


def add_version(repo: pathlib.Path, version: int, *, corrupt: bool = False) -> None:
    folder = repo / "digits" / str(version)
    shutil.copytree(repo / "digits" / "1", folder)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["version"] = str(version)
    (folder / "metadata.json").write_text(json.dumps(meta))
    if corrupt:
        (folder / "model.onnx").write_bytes(b"\x08\x07 not a model")


def admin(server: ServerThread) -> GeneratorClient:
    return GeneratorClient(server.target)


def test_reload_switches_to_a_new_version_without_dropping_in_flight(
    start_server,
    tmp_path: pathlib.Path,
) -> None:
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    control = control_engine(server)
    control.hold()
    with concurrent.futures.ThreadPoolExecutor(2) as pool, admin(server) as client:
        in_flight = pool.submit(client.generate, 5, 5)
        assert control.entered.wait(10)
        add_version(repo, 2)
        reply = client.reload_models()
        changes = {(c.version, c.state) for c in reply.changes}
        assert changes == {
            ("2", admin_pb2.MODEL_STATE_READY),
            ("1", admin_pb2.MODEL_STATE_UNLOADED),
        }
        assert client.generate(6, 6).response.model_version == "2"  # routed to the new one
        control.release()
        assert in_flight.result(10).response.model_version == "1"  # finished on the old one
        assert list(client.model_info().versions) == ["2"]
        assert client.reload_models().changes == []  # nothing changed since


def test_a_retired_version_finishes_its_queue_however_long_it_takes(
    start_server, tmp_path: pathlib.Path
) -> None:
    """A retired version got only --drain-grace for its queue, then failed what was left with
    "server shut down" while the server went on serving. Here the queued call waits 10 times
    that grace behind a held batch, and still gets its image from the version it was routed
    to; the in-flight gauge of the retired version ends gone, not at -1."""
    repo = copy_repository(tmp_path)
    server = start_server(repo, drain_grace_s=0.1, instances=1)
    manager = server.server.models
    control = control_engine(server)
    control.hold()
    with concurrent.futures.ThreadPoolExecutor(2) as pool, admin(server) as client:
        running = pool.submit(client.generate, 5, 5)
        assert control.entered.wait(10)
        queued = pool.submit(client.generate, 6, 6)
        wait_until(lambda: manager.resolve("digits").batcher.queue_depth == 1, "a queued call")
        add_version(repo, 2)
        client.reload_models()
        time.sleep(1.0)
        assert not queued.done()
        control.release()
        assert queued.result(10).response.model_version == "1"
        assert running.result(10).response.model_version == "1"
        wait_until(lambda: not manager._retiring, "version 1 to close")
        assert client.generate(7, 7).response.model_version == "2"
    assert sample(server, "ganserve_inflight_requests", version="1") is None
    assert sample(server, "ganserve_inflight_requests", version="2") == 0


def test_a_stream_outliving_its_retired_version_is_in_flight_until_it_ends(
    start_server, tmp_path: pathlib.Path
) -> None:
    """An Interpolate stream still being read when its version has drained and closed: its end
    lowered a fresh copy of the dropped in-flight series, which then read -1 for good; and
    the gauge was dropped while the stream was still in flight."""
    repo = copy_repository(tmp_path)
    server = start_server(repo, max_items_per_call=1024)
    manager = server.server.models
    # gRPC's window stays at its initial 64 kB (no bandwidth probing to widen it): the 1 MB
    # stream waits on flow control until its frames are read.
    options = [("grpc.http2.bdp_probe", 0)]
    with admin(server) as client, grpc.insecure_channel(server.target, options) as channel:
        request = pb.InterpolateRequest(
            seed_start=1,
            seed_end=2,
            frames=1024,
            class_label=3,
            encoding=pb.IMAGE_ENCODING_RAW_UINT8,
        )
        frames = generator_pb2_grpc.GeneratorStub(channel).Interpolate(request, timeout=60)
        next(frames)
        add_version(repo, 2)
        client.reload_models()
        wait_until(lambda: not manager._retiring, "version 1 to close")
        assert sample(server, "ganserve_inflight_requests", version="1") == 1
        assert sum(1 for _ in frames) == 1023
    wait_until(
        lambda: sample(server, "ganserve_inflight_requests", version="1") is None,
        "version 1's gauge to go once its stream ended",
    )


def test_a_reload_that_replaces_a_versions_files_is_never_answered_from_the_cache(
    start_server, tmp_path: pathlib.Path
) -> None:
    """Version 1's files replaced by version 2's weights: after the reload, cached PNGs of
    the old weights must not come back (RAW, never cached here, shows the new pixels)."""
    repo = copy_repository(tmp_path)
    server = start_server(repo, cache_bytes=1 << 20)
    with admin(server) as client:
        before = client.generate(1, 1).pixels
        assert (client.generate(1, 1).pixels == before).all()  # now a cache hit
        shutil.copy(BUNDLED_REPOSITORY / "digits" / "2" / "model.onnx", repo / "digits" / "1")
        changes = {(c.version, c.state) for c in client.reload_models().changes}
        assert changes == {("1", admin_pb2.MODEL_STATE_READY)}
        png, raw = client.generate(1, 1), client.generate(1, 1, encoding=ImageEncoding.RAW_UINT8)
        assert (png.pixels == raw.pixels).all()
        assert not (png.pixels == before).all()


def test_a_broken_new_version_is_reported_and_the_old_keeps_serving(
    start_server,
    tmp_path: pathlib.Path,
) -> None:
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    add_version(repo, 3, corrupt=True)
    with admin(server) as client:
        reply = client.reload_models()
        (change,) = reply.changes
        assert (change.version, change.state) == ("3", admin_pb2.MODEL_STATE_FAILED)
        assert "ONNX Runtime cannot load it" in change.message
        assert client.generate(1, 1).response.model_version == "1"
        states = {(m.version, m.state) for m in client.list_models()}
        assert states == {("1", admin_pb2.MODEL_STATE_READY), ("3", admin_pb2.MODEL_STATE_FAILED)}
    assert 'ganserve_model_load_failures_total{model="digits"} 1.0' in scrape(server)["_text"]


def test_a_new_version_whose_full_batch_outlasts_the_engine_timeout_fails_and_the_old_serves(
    start_server, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, it went READY and every full batch then failed with DEADLINE_EXCEEDED and
    replaced its instance, again and again. Version 2's engine is made slow here (planted in
    the real CPU engine) so that only it misses the timeout."""
    repo = copy_repository(tmp_path)
    server = start_server(
        repo,
        backend=Backend.ONNXRUNTIME_CPU,
        intra_op_threads=1,
        max_batch_size=4,
        engine_timeout_s=0.2,
    )
    run = cpu.OnnxCpuEngine.run

    def slow_at_full_batches_of_v2(engine: cpu.OnnxCpuEngine, feeds):
        if engine.metadata.version == "2" and len(feeds["z"]) == 4:
            time.sleep(0.25)
        return run(engine, feeds)

    monkeypatch.setattr(cpu.OnnxCpuEngine, "run", slow_at_full_batches_of_v2)
    add_version(repo, 2)
    with admin(server) as client:
        (change,) = client.reload_models().changes
        assert (change.version, change.state) == ("2", admin_pb2.MODEL_STATE_FAILED)
        assert re.search(
            r"model 'digits' v2: a full batch of 4 images took [\d.]+s at load, at or over the "
            r"engine timeout \(0\.2s\).*raise --engine-timeout \(engine_timeout\) above "
            r"[\d.]+s, or lower --max-batch-size \(max_batch_size\)",
            change.message,
        ), change.message
        assert client.generate(1, 1).response.model_version == "1"


def add_model(repo: pathlib.Path, name: str) -> None:
    """A second model: digits/1 copied under ``name``."""
    shutil.copytree(repo / "digits" / "1", repo / name / "1")
    path = repo / name / "1" / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": name}))


def test_a_reload_that_leaves_several_models_without_a_default_warns_once(
    start_server, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unnamed requests keep going to the model the server started with, but a restart with
    the same flags refuses to start (a crash loop under Kubernetes); before, the reload said
    nothing of it. Said once per set of models, and again when the set changes."""
    repo = copy_repository(tmp_path)
    server = start_server(repo)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "several models" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="ganserve.serve.models"), admin(server) as client:
        add_model(repo, "faces")
        (change,) = client.reload_models().changes
        assert (change.name, change.state) == ("faces", admin_pb2.MODEL_STATE_READY)
        assert client.generate(1, 1).response.model == "digits"
        assert client.reload_models().changes == []  # nothing changed: not said again
        (said,) = warnings()
        assert "holds several models (digits, faces) and no --default-model is set" in said
        assert "requests that name no model still go to digits" in said
        assert "a restart will refuse to start without --default-model digits" in said
        add_model(repo, "cats")
        client.reload_models()
        assert len(warnings()) == 2 and "(cats, digits, faces)" in warnings()[-1]

    # What it warns of: a restart with the same settings refuses to start.
    metrics = ServerMetrics(max_batch_size=64)
    with pytest.raises(ModelLoadError, match=r"several models \(cats, digits, faces\); choose"):
        asyncio.run(ModelManager(make_config(repo), metrics).start())


def test_pinned_versions_are_served_side_by_side(start_server, tmp_path: pathlib.Path) -> None:
    repo = copy_repository(tmp_path)
    add_version(repo, 2)
    add_version(repo, 3)
    server = start_server(repo, models={"digits": ModelConfig(versions=(1, 2))})
    with admin(server) as client:
        assert list(client.model_info().versions) == ["1", "2"]
        assert client.generate(1, 1).response.model_version == "2"  # newest served
        assert client.generate(1, 1, model_version="1").response.model_version == "1"
        with pytest.raises(grpc.RpcError) as info:
            client.generate(1, 1, model_version="3")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_info_describes_the_version_asked_for(start_server, tmp_path: pathlib.Path) -> None:
    """Versions of one model may differ (here in class names): GetModelInfo used to describe
    the newest whatever the client was about to call."""
    repo = copy_repository(tmp_path)
    add_version(repo, 2)
    path = repo / "digits" / "2" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["class_names"] = [f"digit {i}" for i in range(10)]
    path.write_text(json.dumps(meta))
    server = start_server(repo, models={"digits": ModelConfig(versions=(1, 2))})
    with admin(server) as client:
        newest, old = client.model_info(), client.model_info(model_version="1")
        with pytest.raises(grpc.RpcError) as info:
            client.model_info(model_version="3")
    assert (newest.version, newest.class_names[3]) == ("2", "digit 3")
    assert (old.version, old.class_names[3]) == ("1", "3")
    assert list(old.versions) == list(newest.versions) == ["1", "2"]
    assert old.precision == newest.precision == "fp32"
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "version '3'" in info.value.details()


def test_a_model_folder_named_in_bytes_that_are_not_utf8_is_ignored(
    start_server, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Such a folder broke ListModels and ReloadModels (UnicodeEncodeError) while it was
    there, and /metrics (HTTP 500) until a restart: its load-failure counter's label could not
    be encoded."""
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    stray = os.fsencode(repo) + b"/\xff"
    shutil.copytree(os.fsencode(repo / "digits" / "1"), stray + b"/1")
    with admin(server) as client:
        assert client.reload_models().changes == []
        assert [(m.name, m.version) for m in client.list_models()] == [("digits", "1")]
    assert scrape(server).get("ganserve_model_load_failures_total", 0) == 0  # and it answers
    assert "'\\udcff' in " in caplog.text and "not printable UTF-8 text" in caplog.text


def test_a_failed_version_deleted_from_the_repository_is_forgotten(
    start_server,
    tmp_path: pathlib.Path,
) -> None:
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    add_version(repo, 3, corrupt=True)
    with admin(server) as client:
        assert client.reload_models().changes[0].state == admin_pb2.MODEL_STATE_FAILED
        shutil.rmtree(repo / "digits" / "3")
        assert client.reload_models().changes == []
        assert [(m.version, m.state) for m in client.list_models()] == [
            ("1", admin_pb2.MODEL_STATE_READY)
        ]


# --- a port that is taken ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "other_port", "named"),
    [
        ("--port", "--metrics-port", "cannot listen on gRPC address 127.0.0.1:{port}"),
        ("--metrics-port", "--port", "cannot listen on metrics address 127.0.0.1:{port}"),
    ],
)
def test_a_taken_port_is_one_line_naming_it_and_what_to_change(
    flag: str, other_port: str, named: str
) -> None:
    """Another process (or a second ganserve) holds the port: exit 1 with one line and no
    traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--model-repository", str(BUNDLED_REPOSITORY), flag, str(port), other_port, "0"]
        error = serve_fails(*args)
    assert named.format(port=port) in error and flag in error, error


def serve_fails(*args: str) -> str:
    """Run `ganserve serve` on loopback with ``args``; it must exit 1 with one `Error:` line
    and no traceback. Returns that line."""
    loopback = ["--host", "127.0.0.1", "--metrics-host", "127.0.0.1"]
    done = subprocess.run(
        [sys.executable, "-m", "ganserve.serve.cli", "serve", *loopback, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        ("empty", "holds no <name>/<version>/ folders"),
        ("broken", "model.onnx"),
    ],
)
def test_a_repository_that_cannot_be_served_is_one_line_at_start(
    tmp_path: pathlib.Path, repository: str, message: str
) -> None:
    """`ganserve serve` turns a load failure into one `Error:` line and exit 1."""
    repo = tmp_path / "models"
    repo.mkdir()
    if repository == "broken":
        shutil.copytree(BUNDLED_REPOSITORY / "digits" / "1", repo / "digits" / "1")
        (repo / "digits" / "1" / "model.onnx").write_bytes(b"\x08\x07 not a model")
    args = ["--model-repository", str(repo), "--port", "0", "--metrics-port", "0"]
    assert message in serve_fails(*args)


def test_an_engine_timeout_no_full_batch_can_meet_is_one_line_at_start() -> None:
    """`--engine-timeout 0.01` was accepted; then every full batch failed with
    DEADLINE_EXCEEDED and replaced its instance, so no retry could succeed."""
    args = ["--model-repository", str(BUNDLED_REPOSITORY), "--port", "0", "--metrics-port", "0"]
    args += ["--backend", "onnxruntime-cpu", "--max-batch-size", "1024"]
    error = serve_fails(*args, "--engine-timeout", "0.01")
    assert re.search(
        r"model 'digits' v\d+: a full batch of 1024 images took [\d.e-]+s at load, at or over "
        r"the engine timeout \(0\.01s\), so every full batch would fail; raise "
        r"--engine-timeout \(engine_timeout\) above [\d.e-]+s, or lower --max-batch-size",
        error,
    ), error


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1:5"),
        ("localhost", "localhost:5"),
        ("::1", "[::1]:5"),
        ("[::1]", "[::1]:5"),
        ("::", "[::]:5"),
    ],
)
def test_ipv6_hosts_work_with_or_without_brackets(host: str, address: str) -> None:
    """gRPC needs [::1]:port and the metrics server a bare ::1; either spelling works for both
    --host and --metrics-host."""
    assert grpc_address(host, 5) == address


# --- reloads at the edges: pinned versions, drains, FP16 files; what the metrics say ---------


def sample(server: ServerThread, name: str, **labels: str) -> float | None:
    """One labelled sample of a real scrape, or None when the series is absent."""
    for family in text_string_to_metric_families(scrape(server)["_text"]):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_a_pinned_version_whose_folder_vanished_keeps_serving(
    start_server, tmp_path: pathlib.Path
) -> None:
    """Pinned to version 2, whose folder is moved away while version 1's stays: the reload once
    retired version 2 and left the model serving nothing while health said SERVING."""
    repo = copy_repository(tmp_path)
    add_version(repo, 2)
    server = start_server(repo, models={"digits": ModelConfig(versions=(2,))})
    with admin(server) as client:
        shutil.move(repo / "digits" / "2", tmp_path / "away")
        changes = {(c.version, c.state) for c in client.reload_models().changes}
        assert changes == {("2", admin_pb2.MODEL_STATE_FAILED)}
        assert client.generate(1, 1).response.model_version == "2"
        assert sample(server, "ganserve_model_load_failures_total", model="digits") == 1
        client.reload_models()  # the same failure again: reported, not counted again
        assert sample(server, "ganserve_model_load_failures_total", model="digits") == 1


def test_a_reload_while_draining_loads_nothing(tmp_path: pathlib.Path) -> None:
    """A version loaded after the drain began would take calls the drain refuses, and never be
    closed. Also when the drain begins while the version loads."""
    repo = copy_repository(tmp_path)

    async def run() -> tuple[list, list, list[str]]:
        manager = ModelManager(make_config(repo), ServerMetrics(max_batch_size=64))
        await manager.start()
        add_version(repo, 2)
        load, loop = manager._load, asyncio.get_running_loop()

        def load_then_drain(name: str, version: str):  # the drain begins meanwhile
            served = load(name, version)
            loop.call_soon_threadsafe(manager.stop_accepting_and_drain, 0)
            return served

        manager._load = load_then_drain  # type: ignore[method-assign]
        during = await manager.reload()
        after = await manager.reload()
        served = [v.metadata.version for v in manager.versions("digits")]
        await manager.close(0)
        return during, after, served

    during, after, served = asyncio.run(run())
    for changes in (during, after):
        assert [(c.state, c.message) for c in changes] == [
            (State.FAILED, "the server is draining; nothing was reloaded")
        ]
    assert served == ["1"]


def test_a_changed_fp16_model_is_reloaded(start_server, tmp_path: pathlib.Path) -> None:
    """With precision fp16 the served file is model.fp16.onnx: a reload must notice it."""
    repo = tmp_path / "models"
    shutil.copytree(
        BUNDLED_REPOSITORY / "digits" / "2",
        repo / "digits" / "2",
        ignore=shutil.ignore_patterns("*.pt"),
    )
    server = start_server(repo, models={"digits": ModelConfig(precision="fp16")})
    with admin(server) as client:
        assert client.model_info().precision == "fp16"
        assert [(m.version, m.precision) for m in client.list_models()] == [("2", "fp16")]
        (repo / "digits" / "2" / "model.fp16.onnx").write_bytes(b"\x08\x07 not a model")
        changes = {(c.version, c.state) for c in client.reload_models().changes}
        assert changes == {("2", admin_pb2.MODEL_STATE_FAILED)}
        assert client.generate(1, 1).response.model_version == "2"  # the loaded one still serves


def test_every_answer_is_counted_under_the_model_it_named(start_server) -> None:
    """Unparsable bytes (refused before any handler), bad counts and unserved versions of a
    served model were missing from ganserve_requests_total, or counted under
    model="_unknown"."""
    server = start_server()
    with grpc.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/ganserve.v1.Generator/Generate")
        with pytest.raises(grpc.RpcError):
            raw(b"\x08" + b"\xff" * 10, timeout=30)
        stub = generator_pb2_grpc.GeneratorStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.GenerateBatch(pb.GenerateBatchRequest(model="digits", items=[]), timeout=30)
        for version in ("9", "abc", "7"):  # a version the model does not serve
            with pytest.raises(grpc.RpcError):
                stub.Generate(pb.GenerateRequest(model_version=version, seed=1), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Generate(pb.GenerateRequest(model="nope", seed=1), timeout=30)
    code = "INVALID_ARGUMENT"
    counted = {"method": "Generate", "model": "_unknown", "code": code}
    assert sample(server, "ganserve_requests_total", **counted) == 1
    batch = {"method": "GenerateBatch", "model": "digits", "version": "2", "code": code}
    assert sample(server, "ganserve_requests_total", **batch) == 1
    unserved = {"method": "Generate", "model": "digits", "version": "_unserved"}
    assert sample(server, "ganserve_requests_total", **unserved, code="NOT_FOUND") == 3
    unknown = {"method": "Generate", "model": "_unknown", "version": ""}
    assert sample(server, "ganserve_requests_total", **unknown, code="NOT_FOUND") == 1


def test_a_retired_versions_gauges_are_dropped(start_server, tmp_path: pathlib.Path) -> None:
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    with admin(server) as client:
        client.generate(1, 1)
        assert sample(server, "ganserve_queue_depth", version="1") is not None
        add_version(repo, 2)
        client.reload_models()
        client.generate(1, 1)
        for _ in range(100):  # version 1 is closed once its queue has drained
            if sample(server, "ganserve_queue_depth", version="1") is None:
                break
            time.sleep(0.05)
    for gauge in ("ganserve_queue_depth", "ganserve_inflight_requests"):
        assert sample(server, gauge, version="1") is None
        assert sample(server, gauge, version="2") is not None
    assert sample(server, "ganserve_model_load_duration_seconds", version="1") is None
    assert sample(server, "ganserve_requests_total", version="1", code="OK") == 1  # counters stay


def _bump(path: pathlib.Path) -> None:
    """Change a file's mtime, as a redeploy of the same bytes would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_version_reloaded_in_place_keeps_its_gauges(start_server, tmp_path: pathlib.Path) -> None:
    """Version 1's files change and it is reloaded: the retired instance's clean-up must not
    take the gauges the new instance of the same version reports under."""
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    manager = server.server.models
    with admin(server) as client:
        client.generate(1, 1)
        _bump(repo / "digits" / "1" / "model.onnx")
        changes = {(c.version, c.state) for c in client.reload_models().changes}
        assert changes == {("1", admin_pb2.MODEL_STATE_READY)}
        wait_until(lambda: not manager._retiring, "the old instance to close")
        client.generate(2, 2)
    for gauge in (
        "ganserve_queue_depth",
        "ganserve_inflight_requests",
        "ganserve_model_load_duration_seconds",
    ):
        assert sample(server, gauge, version="1") is not None, gauge


def test_a_version_that_serves_again_reports_its_gauges_again(
    start_server, tmp_path: pathlib.Path
) -> None:
    """Version 2 is retired (its gauges dropped), then comes back: calls to it must report
    under new gauges, not update the dropped ones where no scrape sees them."""
    repo = copy_repository(tmp_path)
    add_version(repo, 2)
    server = start_server(repo)
    manager = server.server.models
    with admin(server) as client:
        assert client.generate(1, 1).response.model_version == "2"
        shutil.move(repo / "digits" / "2", tmp_path / "away")
        client.reload_models()
        wait_until(lambda: not manager._retiring, "version 2 to close")
        assert sample(server, "ganserve_inflight_requests", version="2") is None
        shutil.move(tmp_path / "away", repo / "digits" / "2")
        client.reload_models()
        assert client.generate(1, 1).response.model_version == "2"
    assert sample(server, "ganserve_inflight_requests", version="2") is not None
    assert sample(server, "ganserve_queue_depth", version="2") is not None


def test_a_reload_whose_caller_went_away_still_serves_what_it_loaded(
    start_server, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin reload past its deadline: the reload runs to its end, so the version it
    loaded serves (before, it was loaded, started and then neither served nor closed)."""
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    load = ModelManager._load

    def slow_load(self: ModelManager, name: str, version: str):
        time.sleep(1.0)
        return load(self, name, version)

    monkeypatch.setattr(ModelManager, "_load", slow_load)
    add_version(repo, 2)
    with admin(server) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.reload_models(timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: not server.server.models._reloads, "the reload to end")
        assert client.generate(1, 1).response.model_version == "2"
        served = {(s.version, s.state) for s in client.list_models()}
        assert ("2", admin_pb2.MODEL_STATE_READY) in served


def test_an_unreadable_file_or_a_failing_reload_is_reported_not_raised(
    start_server, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose stat fails with an OSError other than 'not found' (here a symlink loop;
    EIO on a network mount alike) and an unexpected error inside a reload: each is a FAILED
    status or a fresh load, never UNKNOWN with a traceback; the loaded version keeps serving."""
    repo = copy_repository(tmp_path)
    server = start_server(repo)
    with admin(server) as client:
        (repo / "digits" / "1" / "model.plan").symlink_to("model.plan")  # stat: ELOOP
        # Unreadable counts as absent, as the plan was before: nothing changed, nothing raised.
        assert list(client.reload_models().changes) == []

        def broken(self: ModelManager):
            raise RuntimeError("the repository listing broke")

        monkeypatch.setattr(ModelManager, "_wanted", broken)
        (change,) = client.reload_models().changes
        assert change.state == admin_pb2.MODEL_STATE_FAILED
        assert change.message == "reload failed: RuntimeError: the repository listing broke"
        assert client.generate(1, 1).response.model_version == "1"
    assert sample(server, "ganserve_repository_reloads_total", outcome="failed") == 1


def test_a_file_replaced_while_its_version_loads_is_loaded_by_the_next_reload(
    start_server, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version's fingerprint is taken before its files are read: a file replaced during
    the load differs from it, so the next reload loads the new file instead of calling the
    stale model current."""
    from ganserve.serve import backends

    repo = copy_repository(tmp_path)
    server = start_server(repo)
    model = repo / "digits" / "1" / "model.onnx"
    create = backends.create_engine
    replaced: list[bool] = []

    def create_then_replace(*args, **kwargs):
        engine = create(*args, **kwargs)
        if not replaced:  # the reload below has read the file: a redeploy replaces it now
            replaced.append(True)
            _bump(model)
        return engine

    with admin(server) as client:
        _bump(model)
        monkeypatch.setattr(backends, "create_engine", create_then_replace)
        first = [(c.version, c.state) for c in client.reload_models().changes]
        assert first == [("1", admin_pb2.MODEL_STATE_READY)] and replaced
        monkeypatch.setattr(backends, "create_engine", create)
        second = [(c.version, c.state) for c in client.reload_models().changes]
        assert second == [("1", admin_pb2.MODEL_STATE_READY)]


def test_a_version_folder_swapped_while_it_loads_is_loaded_by_the_next_reload(
    start_server, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export-gan --force` exchanges the whole folder. Swapped just after metadata.json was
    read, the load kept the old metadata while its fingerprint (taken after) matched the new
    folder, so no reload ever loaded it; the new files carry the same sizes and times here, so
    only the folder's identity tells them apart."""
    from ganserve.serve import repository

    repo = copy_repository(tmp_path)
    server = start_server(repo)
    version = repo / "digits" / "1"
    shutil.copytree(version, repo / "digits" / ".export-new")  # copy2: the same mtimes
    open_version = repository.open_version
    swapped: list[bool] = []

    def open_then_swap(*args, **kwargs):
        opened = open_version(*args, **kwargs)
        if not swapped:  # metadata.json is read: the export swaps its version in now
            swapped.append(True)
            os.rename(version, repo / "digits" / ".export-old")
            os.rename(repo / "digits" / ".export-new", version)
        return opened

    with admin(server) as client:
        _bump(version / "model.onnx")  # the first reload loads the version again
        monkeypatch.setattr(repository, "open_version", open_then_swap)
        first = [(c.version, c.state) for c in client.reload_models().changes]
        assert first == [("1", admin_pb2.MODEL_STATE_READY)] and swapped
        monkeypatch.setattr(repository, "open_version", open_version)
        second = [(c.version, c.state) for c in client.reload_models().changes]
        assert second == [("1", admin_pb2.MODEL_STATE_READY)]
