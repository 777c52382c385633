"""`python -m ganserve.serve.healthcheck`: exit 0 when the local server reports SERVING.

The container's HEALTHCHECK and the Helm chart's probes under TLS (kubelet's native gRPC probe
cannot do TLS) run this. It asks grpc.health.v1.Health about "" on localhost:$GANSERVE_PORT
(the server's own port variable; default 50051), over TLS when GANSERVE_HEALTH_CA is set, with
a client certificate when GANSERVE_HEALTH_CERT and GANSERVE_HEALTH_KEY are set (mutual TLS),
checking the certificate against GANSERVE_HEALTH_SERVER_NAME (default localhost).

Exit status: 0 SERVING; 1 not serving or unreachable; 2 the probe's own settings are wrong (a
missing certificate file, a GANSERVE_PORT that is not a port), with one line naming them.
"""

from __future__ import annotations

import os
import ssl
import sys

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub

TIMEOUT_S = 4.0


class ProbeError(Exception):
    """A setting of the probe itself is wrong (a missing certificate file, a bad port)."""


def _pem(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ProbeError(f"{variable}={path}: {exc.strerror}") from None


def _check_pem(pair: bool) -> None:
    """gRPC only says it cannot create a handshaker, and that reads as an unhealthy server:
    name the file that is not PEM instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=os.environ["GANSERVE_HEALTH_CA"])
    except (ssl.SSLError, OSError) as exc:
        raise ProbeError(f"GANSERVE_HEALTH_CA: not a PEM CA bundle ({_reason(exc)})") from None
    if not pair:
        return
    try:
        context.load_cert_chain(
            os.environ["GANSERVE_HEALTH_CERT"], os.environ.get("GANSERVE_HEALTH_KEY")
        )
    except (ssl.SSLError, OSError) as exc:
        raise ProbeError(
            "GANSERVE_HEALTH_CERT and GANSERVE_HEALTH_KEY: not a PEM certificate and its key "
            f"({_reason(exc)})"
        ) from None


def _reason(exc: Exception) -> object:
    return getattr(exc, "reason", None) or exc


def check() -> bool:
    """True when the server on this host reports SERVING."""
    port = os.environ.get("GANSERVE_PORT", "50051")
    # ASCII digits only: str.isdigit() also takes '²' (int() then raises) and '٥٠' (gRPC then
    # cannot parse the target, which read as "unhealthy" instead of a misconfiguration).
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ProbeError(f"GANSERVE_PORT={port!r} is not a port (1..65535)")
    target = f"localhost:{int(port)}"
    ca = _pem("GANSERVE_HEALTH_CA")
    if ca is None:
        given = [
            f"GANSERVE_HEALTH_{n}"
            for n in ("CERT", "KEY")
            if os.environ.get(f"GANSERVE_HEALTH_{n}")
        ]
        if given:  # else the probe would dial in plaintext and call a TLS server unhealthy
            raise ProbeError(
                f"{' and '.join(given)} set but GANSERVE_HEALTH_CA is not: a TLS probe needs the "
                "CA that signed the server's certificate"
            )
        channel = grpc.insecure_channel(target)
    else:
        key, cert = _pem("GANSERVE_HEALTH_KEY"), _pem("GANSERVE_HEALTH_CERT")
        if (key is None) != (cert is None):  # gRPC aborts the process on half a pair
            given, missing = ("KEY", "CERT") if cert is None else ("CERT", "KEY")
            raise ProbeError(
                f"GANSERVE_HEALTH_{given} is set but GANSERVE_HEALTH_{missing} is not: a "
                "client certificate needs both"
            )
        _check_pem(cert is not None)
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        name = os.environ.get("GANSERVE_HEALTH_SERVER_NAME", "localhost")
        channel = grpc.secure_channel(
            target, credentials, [("grpc.ssl_target_name_override", name)]
        )
    with channel:
        try:
            reply = HealthStub(channel).Check(HealthCheckRequest(), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            print(f"health check failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    return reply.status == HealthCheckResponse.SERVING


def main() -> int:
    try:
        return 0 if check() else 1
    except ProbeError as exc:
        print(f"health check misconfigured: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
