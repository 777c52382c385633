"""Shared fixtures: the bundled model repository and a real server on loopback port 0."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import pathlib
import threading
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import hypothesis
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ganserve.serve import loops
from ganserve.serve.config import BatchingConfig, ServerConfig
from ganserve.serve.server import GanServer
from ganserve.v1 import generator_pb2_grpc

# CI replays the same examples every run (a red build is reproducible); locally they vary.
hypothesis.settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUNDLED_REPOSITORY = ROOT / "models"


class ServerThread:
    """A GanServer running on its own event loop in a background thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = loops.loop_factory(config.event_loop)()  # the loop `ganserve serve` runs
        self.server: GanServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="ganserve-test")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server = GanServer(self.config)
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_until_complete(self.server.wait_stopped())

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro_fn: Callable[[GanServer], object], timeout: float = 30) -> object:
        """Run ``coro_fn(server)`` on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro_fn(self.server), self.loop).result(timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self.server is not None and not self.server._stopped.is_set():
            self.call(lambda s: s.stop(grace), timeout=grace + 30)
        self._thread.join(30)
        self.loop.close()


def make_config(repository: pathlib.Path, **overrides: object) -> ServerConfig:
    """A loopback config on free ports. ModelAdmin is on (tests reload through it); its
    default, off, is covered by test_admin_service_is_off_by_default."""
    overrides.setdefault("admin", True)
    batching = {
        k: overrides.pop(k)
        for k in list(overrides)
        if k in {f.name for f in dataclasses.fields(BatchingConfig)}
    }
    return ServerConfig(
        model_repository=repository,
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        batching=BatchingConfig(**batching),
        **overrides,
    )


@contextlib.contextmanager
def _server_factory() -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(repository: pathlib.Path = BUNDLED_REPOSITORY, **overrides: object) -> ServerThread:
        thread = ServerThread(make_config(repository, **overrides)).start()
        started.append(thread)
        return thread

    try:
        yield start
    finally:
        for thread in started:
            thread.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerThread]]:
    """Factory: start_server(repository, **config overrides) -> a running ServerThread."""
    with _server_factory() as start:
        yield start


@pytest.fixture(scope="module")
def start_server_module() -> Iterator[Callable[..., ServerThread]]:
    """Like start_server, for servers shared by a whole test module."""
    with _server_factory() as start:
        yield start


@pytest.fixture(scope="module")
def bundled_server() -> Iterator[ServerThread]:
    """One server on the bundled model, shared by a test module."""
    thread = ServerThread(make_config(BUNDLED_REPOSITORY, max_queue_delay_us=2000)).start()
    yield thread
    thread.stop()


@contextlib.contextmanager
def generator_stub(target: str) -> Iterator[generator_pb2_grpc.GeneratorStub]:
    with grpc.insecure_channel(target) as channel:
        yield generator_pb2_grpc.GeneratorStub(channel)


def _train_tiny(out: pathlib.Path, *, num_classes: int) -> pathlib.Path:
    from ganserve.train.data import load_digits_split
    from ganserve.train.loop import TrainConfig, train
    from ganserve.train.networks import GeneratorConfig

    data, heldout = load_digits_split(32)
    train(
        GeneratorConfig(width=8, latent_dim=16, embed_dim=8, num_classes=num_classes),
        TrainConfig(steps=20, batch_size=16, log_every=10, eval_per_class=0),
        data,
        heldout,
        out,
    )
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A real but tiny conditional checkpoint: 20 steps of training on digits (a few seconds)."""
    return _train_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt", num_classes=10)


@pytest.fixture(scope="session")
def two_model_repository(
    tiny_checkpoint: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """A repository with a conditional model "tiny" and an unconditional one "plain"."""
    from ganserve.export.pipeline import ExportConfig, export_checkpoint

    repo = tmp_path_factory.mktemp("two-models")
    plain = _train_tiny(tmp_path_factory.mktemp("ckpt") / "plain.pt", num_classes=0)
    export_checkpoint(tiny_checkpoint, ExportConfig(repository=repo, name="tiny"))
    export_checkpoint(plain, ExportConfig(repository=repo, name="plain"))
    return repo


class EngineControl:
    """Wraps every engine instance of a served version: can hold batches in the engine, record
    batch sizes, and plant a failure. The engines themselves are the real ONNX Runtime ones."""

    def __init__(self, batcher: object) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.fail_next = 0
        self._lock = threading.Lock()
        for engine in batcher._free:  # type: ignore[attr-defined]
            engine.run = self._wrap(engine.run)

    def _wrap(self, run: Callable) -> Callable:
        def controlled(feeds):
            with self._lock:
                self.batches.append(len(feeds["z"]))
                fail, self.fail_next = self.fail_next > 0, max(self.fail_next - 1, 0)
            self.entered.set()
            self.gate.wait(30)
            if fail:
                raise RuntimeError("planted engine failure")
            return run(feeds)

        return controlled

    def hold(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()


def control_engine(server: ServerThread, model: str = "digits") -> EngineControl:
    return EngineControl(server.server.models.resolve(model).batcher)


def scrape(server: ServerThread) -> dict[str, float]:
    """Sum each sample name's values over labels, from a real /metrics scrape."""
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{")[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    totals["_text"] = text  # type: ignore[assignment]
    return totals


def write_certificates(folder: pathlib.Path, name: str = "ganserve.serving.svc") -> None:
    """A CA (ca.crt) and a certificate for ``name`` signed by it (tls.crt, tls.key) that is good
    for both server and client auth, like a cert-manager Secret."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("test CA", ca_key, "test CA", ca_key, ca=True)
    cert = certificate(name, key, "test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "tls.crt").write_bytes(cert.public_bytes(pem))
    (folder / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
