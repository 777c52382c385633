"""Rendering the Helm chart for the tests in tests/deploy: the value sets, the objects by kind,
and TLS files like the Secret cert-manager writes."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import helm_python as helm
import yaml

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


def render(
    chart: helm.Chart, values: dict[str, Any], release: str = RELEASE
) -> tuple[Manifests, str]:
    """The rendered objects by kind (Services by "Service/<name>") and the NOTES text."""
    out = chart.render(copy.deepcopy(values), name=release, namespace=NAMESPACE)
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
