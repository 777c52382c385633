"""Rendering the Helm chart for the tests in tests/deploy: the value sets, the objects by kind,
and TLS files like the Secret cert-manager writes."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import pathlib
from typing import Any

import helm_python as helm
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import ROOT
from ganserve.serve.config import ServerConfig

CHART = ROOT / "helm" / "ganserve"
RELEASE, NAMESPACE = "demo", "serving"
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
GRPC_PORT, METRICS_PORT = _DEFAULTS["port"], _DEFAULTS["metrics_port"]
TOKEN = "0123456789abcdef-token"

DEFAULT: dict[str, Any] = {}
# Every optional part on at once: GPU, HPA on the custom metric, mutual TLS, a token,
# ServiceMonitor, headless Service, models from a claim, a preStop sleep.
FULL: dict[str, Any] = {
    "gpu": {"enabled": True},
    "autoscaling": {"enabled": True, "customMetric": {"enabled": True}},
    "tls": {"enabled": True, "secretName": "ganserve-tls", "clientAuth": True},
    "auth": {"enabled": True, "token": TOKEN},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "service": {"headless": {"enabled": True}},
    "modelRepository": {"source": "persistentVolumeClaim", "claimName": "ganserve-models"},
    "models": {"digits": {"backend": "onnxruntime-cuda", "versions": [1, 2], "precision": "fp16"}},
    "config": {"preferred_batch_sizes": [8, 32, 64], "shutdown_delay": 2.5},
    "preStopSleepSeconds": 3,
}
VALUES = {"default": DEFAULT, "gpu-hpa-tls-auth-monitor": FULL}

Manifests = dict[str, dict[str, Any]]


def render(chart: helm.Chart, values: dict[str, Any]) -> tuple[Manifests, str]:
    """The rendered objects by kind (Services by "Service/<name>") and the NOTES text."""
    out = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    objects: Manifests = {}
    notes = ""
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                key = doc["kind"]
                if key == "Service":
                    key = f"Service/{doc['metadata']['name']}"
                assert key not in objects, f"two {key}"
                objects[key] = doc
    return objects, notes


def container(objects: Manifests) -> dict[str, Any]:
    """The Deployment's one container."""
    (only,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def config_file(objects: Manifests) -> str:
    """The server's TOML config file from the ConfigMap."""
    return objects["ConfigMap"]["data"]["ganserve.toml"]


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
