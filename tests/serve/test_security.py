"""Who may call and how much: bearer-token auth, TLS, mutual TLS, and request size limits,
each through a real server on a loopback port."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import pathlib
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import BUNDLED_REPOSITORY as BUNDLED
from conftest import ServerThread
from ganserve.client.client import GeneratorClient
from ganserve.serve import credentials
from ganserve.serve.config import TlsConfig, batch_request_bytes, largest_batch_request
from ganserve.serve.logs import REQUEST_ID
from ganserve.serve.server import GanServer
from ganserve.v1 import admin_pb2, admin_pb2_grpc, generator_pb2_grpc
from ganserve.v1 import generator_pb2 as pb

TOKEN = "s3cret-token-0123456789"
TIMEOUT_S = 10.0
# Failing handshakes fail fast; the bound only keeps a broken test from hanging.
FAIL_TIMEOUT_S = 5.0


def scrape(server: ServerThread, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on the server's /metrics whose labels include ``labels``."""
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def expect_status(code: grpc.StatusCode, call: Callable[[], object], match: str = "") -> str:
    """Run ``call`` (iterating a stream to its end) and check it fails with ``code``."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    assert info.value.code() == code, info.value.details()
    assert match in (info.value.details() or ""), info.value.details()
    return info.value.details()


# --- bearer-token auth --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(start_server_module: Callable[..., ServerThread]) -> ServerThread:
    return start_server_module(auth_token=TOKEN)


@pytest.fixture
def channel(auth_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(auth_server.target) as channel:
        yield channel


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return None if token is None else (("authorization", f"Bearer {token}"),)


def _generate(channel: grpc.Channel, token: str | None) -> object:
    stub = generator_pb2_grpc.GeneratorStub(channel)
    request = pb.GenerateRequest(seed=1, class_label=1)
    return stub.Generate(request, metadata=_metadata(token), timeout=TIMEOUT_S)


def _list_models(channel: grpc.Channel, token: str | None) -> object:
    stub = admin_pb2_grpc.ModelAdminStub(channel)
    return stub.ListModels(
        admin_pb2.ListModelsRequest(), metadata=_metadata(token), timeout=TIMEOUT_S
    )


def _interpolate(channel: grpc.Channel, token: str | None) -> object:
    stub = generator_pb2_grpc.GeneratorStub(channel)
    request = pb.InterpolateRequest(seed_start=1, seed_end=2, class_label=3, frames=4)
    return stub.Interpolate(request, metadata=_metadata(token), timeout=TIMEOUT_S)


def _reflection(channel: grpc.Channel, token: str | None) -> object:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    return stub.ServerReflectionInfo(iter([request]), metadata=_metadata(token), timeout=TIMEOUT_S)


GUARDED_CALLS = [
    pytest.param(_generate, id="Generator/Generate"),
    pytest.param(_list_models, id="ModelAdmin/ListModels"),
    pytest.param(_interpolate, id="Generator/Interpolate (server streaming)"),
    pytest.param(_reflection, id="ServerReflection (bidi streaming)"),
]


@pytest.mark.parametrize("call", GUARDED_CALLS)
def test_call_without_token_is_unauthenticated(
    auth_server: ServerThread, channel: grpc.Channel, call: Callable[..., object]
) -> None:
    details = expect_status(
        grpc.StatusCode.UNAUTHENTICATED, lambda: call(channel, None), "missing bearer token"
    )
    assert "authorization: Bearer <token>" in details  # says what to send


@pytest.mark.parametrize("call", GUARDED_CALLS)
@pytest.mark.parametrize(
    "token",
    ["wrong-token-0123456789", TOKEN + "x", TOKEN[:-1], TOKEN.upper()],
)
def test_call_with_wrong_token_is_unauthenticated(
    channel: grpc.Channel, call: Callable[..., object], token: str
) -> None:
    expect_status(
        grpc.StatusCode.UNAUTHENTICATED, lambda: call(channel, token), "invalid bearer token"
    )


# The right token under any other scheme, or with no space after "Bearer", is refused: the
# scheme is checked, not just the characters after the first space.
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Basic " + TOKEN, id="Basic"),
        pytest.param("Token " + TOKEN, id="Token"),
        pytest.param("Bearer" + TOKEN, id="Bearer without a space"),
        pytest.param(TOKEN, id="no scheme"),
    ],
)
def test_token_without_bearer_scheme_is_invalid(channel: grpc.Channel, value: str) -> None:
    stub = generator_pb2_grpc.GeneratorStub(channel)
    details = expect_status(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: stub.Generate(
            pb.GenerateRequest(seed=1, class_label=1),
            metadata=(("authorization", value),),
            timeout=TIMEOUT_S,
        ),
    )
    assert details == "invalid bearer token: send metadata 'authorization: Bearer <token>'"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_case_insensitive(channel: grpc.Channel, scheme: str) -> None:
    reply = generator_pb2_grpc.GeneratorStub(channel).Generate(
        pb.GenerateRequest(seed=1, class_label=1),
        metadata=(("authorization", f"{scheme} {TOKEN}"),),
        timeout=TIMEOUT_S,
    )
    assert reply.image


@pytest.mark.parametrize("call", GUARDED_CALLS)
def test_call_with_right_token_succeeds(channel: grpc.Channel, call: Callable[..., object]) -> None:
    result = call(channel, TOKEN)
    if isinstance(result, Iterator):
        assert list(result)
    else:
        assert result.ByteSize() > 0


def test_client_with_token_reaches_every_rpc(auth_server: ServerThread) -> None:
    with GeneratorClient(auth_server.target, token=TOKEN, timeout=TIMEOUT_S) as client:
        assert client.generate(46, 7).pixels.shape == (32, 32, 1)
        assert len(client.generate_batch([(1, 1), (2, 2)])) == 2
        assert len(list(client.interpolate(1, 2, 3, 5))) == 3
        assert client.model_info().name == "digits"
        assert [m.name for m in client.list_models()] == ["digits"]
        assert not client.reload_models().changes


def test_client_with_wrong_token_is_unauthenticated(auth_server: ServerThread) -> None:
    with GeneratorClient(auth_server.target, token="not-" + TOKEN, timeout=TIMEOUT_S) as client:
        expect_status(
            grpc.StatusCode.UNAUTHENTICATED, lambda: client.generate(46, 7), "invalid bearer"
        )
        expect_status(grpc.StatusCode.UNAUTHENTICATED, client.list_models, "invalid bearer")


def test_a_refusal_echoes_the_request_id(channel: grpc.Channel) -> None:
    stub = generator_pb2_grpc.GeneratorStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(
            pb.GenerateRequest(seed=1, class_label=1),
            metadata=(("x-request-id", "who-is-this"),),
            timeout=TIMEOUT_S,
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(info.value.trailing_metadata())["x-request-id"] == "who-is-this"


def test_a_refusal_is_logged_under_the_request_id_its_trailer_carries(
    channel: grpc.Channel,
) -> None:
    """The refusal's log line said `[-]`: no way to find it from the id the caller got back."""
    seen: list[tuple[str, str]] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # in the call's own context
            seen.append((record.getMessage(), REQUEST_ID.get()))

    stub = generator_pb2_grpc.GeneratorStub(channel)
    logger, grab = logging.getLogger("ganserve.serve.auth"), Grab()
    logger.addHandler(grab)
    try:
        trailers = []
        for metadata in ((("x-request-id", "who-is-this"),), ()):
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(
                    pb.GenerateRequest(seed=1, class_label=1), metadata=metadata, timeout=TIMEOUT_S
                )
            trailers.append(dict(info.value.trailing_metadata())["x-request-id"])
    finally:
        logger.removeHandler(grab)
    line = "refused /ganserve.v1.Generator/Generate: missing bearer token"
    assert seen == [(line, trailers[0]), (line, trailers[1])] and trailers[0] == "who-is-this"


@pytest.mark.parametrize("service", ["", "ganserve.v1.Generator"])
def test_health_check_needs_no_token(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_watch_needs_no_token(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
    try:
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stream.cancel()


def test_reflection_with_token_lists_the_services(channel: grpc.Channel) -> None:
    (response,) = _reflection(channel, TOKEN)
    names = {s.name for s in response.list_services_response.service}
    assert {"ganserve.v1.Generator", "ganserve.v1.ModelAdmin", "grpc.health.v1.Health"} <= names


def test_auth_failures_are_counted(auth_server: ServerThread, channel: grpc.Channel) -> None:
    before = scrape(auth_server, "ganserve_auth_failures_total")
    refused = 0
    for call in (_generate, _list_models, _interpolate, _reflection):
        for token in (None, "wrong-token-0123456789"):
            expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda c=call, t=token: c(channel, t))
            refused += 1
    _generate(channel, TOKEN)
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    assert scrape(auth_server, "ganserve_auth_failures_total") - before == refused


def test_refused_calls_never_reach_the_generator(
    auth_server: ServerThread, channel: grpc.Channel
) -> None:
    before = scrape(auth_server, "ganserve_requests_total", method="Generate")
    for _ in range(3):
        expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: _generate(channel, None))
    assert scrape(auth_server, "ganserve_requests_total", method="Generate") == before


def test_server_without_auth_token_needs_none(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server()
    with grpc.insecure_channel(server.target) as channel:
        assert _generate(channel, None).model == "digits"
        assert _generate(channel, "any-token-at-all-is-ignored").model == "digits"
    assert scrape(server, "ganserve_auth_failures_total") == 0


# --- TLS and mutual TLS -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """PEM files of two CAs: `ca` signs the server and a client; `other_ca` signs a rogue
    client and a rogue server."""

    ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path
    other_ca: pathlib.Path
    other_client_cert: pathlib.Path
    other_client_key: pathlib.Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``subject``, self-signed (a CA) when ``issuer`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(folder: pathlib.Path, stem: str, cert: x509.Certificate, key=None) -> pathlib.Path:
    path = folder / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("ganserve test CA", None)
    other_ca = _issue("some other CA", None)
    for stem, made in {
        "ca": ca,
        "server": _issue("localhost", ca, server=True),
        "client": _issue("client", ca, client=True),
        "other-ca": other_ca,
        "other-client": _issue("client", other_ca, client=True),
    }.items():
        _write(folder, stem, *made)
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.pem",
        other_client_cert=folder / "other-client.pem",
        other_client_key=folder / "other-client.key",
    )


@pytest.fixture(scope="module")
def tls_server(start_server_module: Callable[..., ServerThread], pki: Pki) -> ServerThread:
    return start_server_module(tls=TlsConfig(cert_file=pki.server_cert, key_file=pki.server_key))


@pytest.fixture(scope="module")
def mtls_server(start_server_module: Callable[..., ServerThread], pki: Pki) -> ServerThread:
    return start_server_module(
        tls=TlsConfig(cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca)
    )


def tls_client(
    server: ServerThread,
    ca: pathlib.Path,
    *,
    host: str = "localhost",
    cert: pathlib.Path | None = None,
    key: pathlib.Path | None = None,
) -> GeneratorClient:
    """A client without retries, so a failed handshake surfaces at once."""
    return GeneratorClient(
        f"{host}:{server.server.port}",
        timeout=FAIL_TIMEOUT_S,
        retry=None,
        root_certificates=ca.read_bytes(),
        client_certificate=cert.read_bytes() if cert else None,
        client_key=key.read_bytes() if key else None,
    )


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_client_trusting_the_ca_is_served(
    tls_server: ServerThread, pki: Pki, host: str
) -> None:
    """The server certificate names both localhost and 127.0.0.1."""
    with tls_client(tls_server, pki.ca, host=host) as client:
        assert client.generate(46, 7).response.model == "digits"
        assert [m.name for m in client.list_models()] == ["digits"]


def test_tls_client_with_a_certificate_is_served_without_mtls(
    tls_server: ServerThread, pki: Pki
) -> None:
    with tls_client(tls_server, pki.ca, cert=pki.client_cert, key=pki.client_key) as client:
        assert client.generate(46, 7).response.model == "digits"


def test_plaintext_client_is_refused_by_a_tls_server(tls_server: ServerThread) -> None:
    with GeneratorClient(tls_server.target, timeout=FAIL_TIMEOUT_S, retry=None) as client:
        expect_status(grpc.StatusCode.UNAVAILABLE, lambda: client.generate(46, 7))


def test_tls_client_trusting_another_ca_is_refused(tls_server: ServerThread, pki: Pki) -> None:
    with tls_client(tls_server, pki.other_ca) as client:
        expect_status(grpc.StatusCode.UNAVAILABLE, lambda: client.generate(46, 7))


def test_tls_client_checks_the_host_name(tls_server: ServerThread, pki: Pki) -> None:
    """A name the certificate does not carry fails, even with the right CA."""
    options = (("grpc.ssl_target_name_override", "ganserve.example"),)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    target = f"localhost:{tls_server.server.port}"
    with grpc.secure_channel(target, credentials, options=options) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        expect_status(
            grpc.StatusCode.UNAVAILABLE,
            lambda: stub.Generate(pb.GenerateRequest(seed=1, class_label=1), timeout=5),
        )


def test_health_is_served_over_tls(tls_server: ServerThread, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{tls_server.server.port}", credentials) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_mtls_client_with_a_certificate_from_the_ca_is_served(
    mtls_server: ServerThread, pki: Pki
) -> None:
    with tls_client(mtls_server, pki.ca, cert=pki.client_cert, key=pki.client_key) as client:
        assert client.generate(46, 7).response.class_label == 7
        assert len(list(client.interpolate(1, 2, 3, 5))) == 3


def test_mtls_client_without_a_certificate_is_refused(mtls_server: ServerThread, pki: Pki) -> None:
    with tls_client(mtls_server, pki.ca) as client:
        expect_status(grpc.StatusCode.UNAVAILABLE, lambda: client.generate(46, 7))


def test_mtls_client_with_a_certificate_from_another_ca_is_refused(
    mtls_server: ServerThread, pki: Pki
) -> None:
    with tls_client(
        mtls_server, pki.ca, cert=pki.other_client_cert, key=pki.other_client_key
    ) as client:
        expect_status(grpc.StatusCode.UNAVAILABLE, lambda: client.generate(46, 7))


def test_mtls_refuses_plaintext(mtls_server: ServerThread) -> None:
    with GeneratorClient(mtls_server.target, timeout=FAIL_TIMEOUT_S, retry=None) as client:
        expect_status(grpc.StatusCode.UNAVAILABLE, lambda: client.generate(46, 7))


def test_tls_and_auth_together_need_both(
    start_server: Callable[..., ServerThread], pki: Pki
) -> None:
    server = start_server(
        tls=TlsConfig(cert_file=pki.server_cert, key_file=pki.server_key), auth_token=TOKEN
    )
    with tls_client(server, pki.ca) as client:
        expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: client.generate(46, 7), "missing")
    target = f"localhost:{server.server.port}"
    with GeneratorClient(
        target, token=TOKEN, root_certificates=pki.ca.read_bytes(), retry=None
    ) as client:
        assert client.generate(46, 7).response.model == "digits"


# --- rotation: certificates and tokens read again when their files change -----------------------


class SecretVolume:
    """Files laid out as Kubernetes mounts a Secret: each name a symlink into ``..data``, itself
    a symlink to a timestamped folder, swapped in one rename on update."""

    def __init__(self, folder: pathlib.Path, names: tuple[str, ...]) -> None:
        self.folder, self.generation = folder, 0
        folder.mkdir()
        for name in names:
            (folder / name).symlink_to(pathlib.Path("..data") / name)

    def write(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        target = self.folder / f"..{self.generation}"
        target.mkdir()
        for name, data in files.items():
            (target / name).write_bytes(data)
        (self.folder / "..data_tmp").symlink_to(target.name)
        (self.folder / "..data_tmp").replace(self.folder / "..data")


def _pem_pair(made: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> dict[str, bytes]:
    cert, key = made
    return {
        "tls.crt": cert.public_bytes(serialization.Encoding.PEM),
        "tls.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }


def _handshake(server: ServerThread, ca: bytes) -> pb.GenerateResponse:
    """One call on a fresh connection (a local subchannel pool: no connection reused)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    options = (("grpc.use_local_subchannel_pool", 1),)
    target = f"localhost:{server.server.port}"
    with grpc.secure_channel(target, credentials, options=options) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        return stub.Generate(pb.GenerateRequest(seed=1, class_label=1), timeout=FAIL_TIMEOUT_S)


def _refresh(server: ServerThread) -> list[str]:
    async def refresh(server: GanServer) -> list[str]:
        return server.credentials.refresh()

    return server.call(refresh)


def test_a_renewed_certificate_is_served_from_the_next_handshake(
    start_server: Callable[..., ServerThread], tmp_path: pathlib.Path
) -> None:
    """cert-manager renews into the mounted Secret; the server presents the new certificate
    without a restart, and refuses a pair that does not match, keeping the old one."""
    old_ca, new_ca = _issue("old CA", None), _issue("new CA", None)
    pem = {
        n: c.public_bytes(serialization.Encoding.PEM)
        for n, (c, _) in {"old": old_ca, "new": new_ca}.items()
    }
    volume = SecretVolume(tmp_path / "tls", ("tls.crt", "tls.key"))
    volume.write(_pem_pair(_issue("localhost", old_ca, server=True)))
    server = start_server(
        tls=TlsConfig(cert_file=volume.folder / "tls.crt", key_file=volume.folder / "tls.key")
    )
    assert _handshake(server, pem["old"]).model == "digits"
    assert _refresh(server) == []  # nothing changed

    mismatched = _pem_pair(_issue("localhost", new_ca, server=True))
    mismatched["tls.key"] = _pem_pair(_issue("localhost", new_ca, server=True))["tls.key"]
    volume.write(mismatched)
    assert _refresh(server) == []
    assert _refresh(server) == []  # refused once: not read again until it changes again
    assert _handshake(server, pem["old"]).model == "digits"
    assert (
        scrape(server, "ganserve_credential_reloads_total", credential="tls", outcome="failed") == 1
    )

    volume.write(_pem_pair(_issue("localhost", new_ca, server=True)))
    assert _refresh(server) == ["tls"]
    assert _handshake(server, pem["new"]).model == "digits"
    expect_status(grpc.StatusCode.UNAVAILABLE, lambda: _handshake(server, pem["old"]))
    assert scrape(server, "ganserve_credential_reloads_total", credential="tls", outcome="ok") == 1


def test_a_rotated_token_replaces_the_old_one(
    start_server: Callable[..., ServerThread], tmp_path: pathlib.Path
) -> None:
    volume = SecretVolume(tmp_path / "auth", ("token",))
    volume.write({"token": f"{TOKEN}\n".encode()})
    server = start_server(auth_token=TOKEN, auth_token_file=volume.folder / "token")
    new = "n3w-token-0123456789abcdef"
    with grpc.insecure_channel(server.target) as channel:
        assert _generate(channel, TOKEN).model == "digits"
        volume.write({"token": b"short\n"})  # refused: the old token stays valid
        assert _refresh(server) == []
        assert _generate(channel, TOKEN).model == "digits"
        volume.write({"token": f"{new}\n".encode()})
        assert _refresh(server) == ["token"]
        expect_status(grpc.StatusCode.UNAUTHENTICATED, lambda: _generate(channel, TOKEN))
        assert _generate(channel, new).model == "digits"
    assert (
        scrape(server, "ganserve_credential_reloads_total", credential="token", outcome="ok") == 1
    )
    failed = scrape(
        server, "ganserve_credential_reloads_total", credential="token", outcome="failed"
    )
    assert failed == 1


def test_credential_files_are_polled_without_a_signal(
    start_server: Callable[..., ServerThread],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(credentials, "POLL_S", 0.05)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = start_server(auth_token=TOKEN, auth_token_file=token_file)
    new = "n3w-token-0123456789abcdef"
    rewritten = tmp_path / "token.new"
    rewritten.write_text(new)
    rewritten.replace(token_file)
    with grpc.insecure_channel(server.target) as channel:
        deadline = time.monotonic() + TIMEOUT_S
        while server.server.credentials.interceptor.token != new:
            assert time.monotonic() < deadline, "the token file was not read again"
            time.sleep(0.05)
        assert _generate(channel, new).model == "digits"


# --- request limits -----------------------------------------------------------------------------


def test_request_over_max_request_bytes_is_resource_exhausted(
    start_server: Callable[..., ServerThread],
) -> None:
    # As many items as fit the smallest requests; the config refuses a cap they cannot hold.
    server = start_server(max_request_bytes=2048, max_items_per_call=64)
    request = pb.GenerateBatchRequest(
        items=[pb.BatchItem(seed=2**63, class_label=1) for _ in range(500)]
    )
    assert request.ByteSize() > 2048
    with grpc.insecure_channel(server.target) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        expect_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            lambda: stub.GenerateBatch(request, timeout=TIMEOUT_S),
        )
        # The channel and the server are fine afterwards: small requests still work.
        response = stub.Generate(pb.GenerateRequest(seed=2**63, class_label=1), timeout=TIMEOUT_S)
        assert response.seed == 2**63
        small = pb.GenerateBatchRequest(items=[pb.BatchItem(seed=s, class_label=1) for s in (1, 2)])
        assert small.ByteSize() < 2048
        assert len(stub.GenerateBatch(small, timeout=TIMEOUT_S).images) == 2


def test_a_call_of_max_items_per_call_items_at_their_largest_fits_max_request_bytes(
    start_server: Callable[..., ServerThread],
) -> None:
    """The smallest max_request_bytes the config allows for a cap still takes a full call
    whatever its fields hold (before, --max-request-bytes 1024 was accepted beside a cap of
    1024 items, and gRPC refused 200 of them naming neither setting)."""
    items = 30  # 1033 bytes at most: just over the flag's minimum
    server = start_server(max_request_bytes=batch_request_bytes(items), max_items_per_call=items)
    largest = largest_batch_request(items)
    served = pb.GenerateBatchRequest(
        items=[pb.BatchItem(seed=2**64 - 1, class_label=9) for _ in range(items)],
        model="digits",
        encoding=pb.IMAGE_ENCODING_RAW_UINT8,
        truncation=2.0,
    )
    with grpc.insecure_channel(server.target) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        # Past gRPC's size check: the handler answers (no model has that 255-byte name).
        expect_status(
            grpc.StatusCode.NOT_FOUND, lambda: stub.GenerateBatch(largest, timeout=TIMEOUT_S)
        )
        reply = stub.GenerateBatch(served, timeout=TIMEOUT_S)
    assert [image.seed for image in reply.images] == [2**64 - 1] * items


@pytest.fixture(scope="module")
def capped_server(start_server_module: Callable[..., ServerThread]) -> ServerThread:
    return start_server_module(max_items_per_call=8)


@pytest.mark.parametrize(
    ("count", "match"),
    [
        (9, "items has 9 entries; send 1..8 per call"),
        (100, "items has 100 entries; send 1..8 per call"),
        (0, "items has 0 entries; send 1..8 per call"),
    ],
)
def test_generate_batch_item_count_is_capped(
    capped_server: ServerThread, count: int, match: str
) -> None:
    with GeneratorClient(capped_server.target, timeout=TIMEOUT_S) as client:
        expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: client.generate_batch([(s, 1) for s in range(count)]),
            match,
        )


def test_generate_batch_at_the_cap_is_served(capped_server: ServerThread) -> None:
    with GeneratorClient(capped_server.target, timeout=TIMEOUT_S) as client:
        images = client.generate_batch([(s, s % 10) for s in range(8)])
        assert [i.response.seed for i in images] == list(range(8))
        assert client.model_info().max_items_per_call == 8


@pytest.mark.parametrize("frames", [1, 9])
def test_interpolate_frames_are_capped(capped_server: ServerThread, frames: int) -> None:
    with GeneratorClient(capped_server.target, timeout=TIMEOUT_S) as client:
        expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: client.interpolate(1, 2, frames, 3),
            f"frames {frames} is out of range: use 2..8",
        )


# --- secrets stay out of the logs --------------------------------------------------------------


def test_secrets_never_appear_in_logs(tmp_path: pathlib.Path, pki: Pki) -> None:
    """A real server process with TLS, a token, DEBUG logs and the access log: right, wrong and
    malformed credentials go through it; its whole output never holds the token, a caller's
    wrong token, or the private key."""
    from ganserve.bench.compare import ganserve

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    wrong = "someone-elses-token-0123456789"
    log = tmp_path / "server.log"
    args = ["--auth-token-file", str(token_file), "--log-level", "DEBUG", "--access-log"]
    args += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with (
        ganserve(BUNDLED, log, *args, tls_ca=pki.ca) as server,
        grpc.secure_channel(server.target, credentials) as channel,
    ):
        stub = generator_pb2_grpc.GeneratorStub(channel)
        request = pb.GenerateRequest(seed=1, class_label=1)
        assert stub.Generate(request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30)
        for value in (f"Bearer {wrong}", wrong, f"Basic {wrong}"):
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(request, metadata=[("authorization", value)], timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert wrong not in info.value.details()
    text = log.read_text()
    assert "refused" in text and "Generate" in text  # the log did record the calls
    key_body = "".join(pki.server_key.read_text().splitlines()[1:-1])
    for secret in (TOKEN, wrong, key_body[:40]):
        assert secret not in text
