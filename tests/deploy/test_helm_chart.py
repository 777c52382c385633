"""The Helm chart renders, lints and validates against Kubernetes' own schemas, and what it
renders matches the server: its ports, its metric names, its config loader, its security needs.
Probes and shutdown timing are in test_helm_probes.py.

Helm is the real one (its Go library through helm-python-sdk); the Kubernetes schemas are the
OpenAPI ones packaged by kubernetes-validate. No cluster is involved.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import dockerfile_lint
import grpc
import helm_python as helm
import kubernetes_validate
import pytest
from chart_render import (
    CHART,
    DEFAULT,
    FULL,
    GRPC_PORT,
    METRICS_PORT,
    NAMESPACE,
    RELEASE,
    TOKEN,
    VALUES,
    Manifests,
    config_file,
    container,
    render,
)
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import ROOT, ServerThread, write_certificates
from ganserve.client import cli as client_cli
from ganserve.serve import cli
from ganserve.serve.backends import Backend
from ganserve.serve.config import FILE_KEYS, TlsConfig
from ganserve.serve.metrics import ServerMetrics

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ("1.27", kubernetes_validate.latest_version())
# Config file keys the chart sets itself (or, for the token, never puts in a ConfigMap).
CHART_MANAGED_KEYS = {
    "model_repository",
    "port",
    "metrics_port",
    "engine_cache_dir",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "auth_token",
    "auth_token_file",
    "models",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module", params=list(VALUES), ids=list(VALUES))
def rendered(request: pytest.FixtureRequest, chart: helm.Chart) -> Manifests:
    return render(chart, VALUES[request.param])[0]


@pytest.fixture(scope="module")
def full(chart: helm.Chart) -> Manifests:
    return render(chart, FULL)[0]


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Manifests:
    return render(chart, DEFAULT)[0]


# --- Helm and Kubernetes accept it --------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUES))
def test_chart_lints_clean(name: str) -> None:
    report = helm.lint(CHART, copy.deepcopy(VALUES[name]), strict=True)
    assert report["errors"] == []
    # Severity 1 is information (e.g. "icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_manifests_match_the_kubernetes_schemas(
    rendered: Manifests, kube_version: str
) -> None:
    assert {"Deployment", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"} <= set(rendered)
    for obj in rendered.values():
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by hand in test_service_monitor_scrapes_the_metrics_port
        # strict: unknown fields are errors too, so a misspelt key cannot pass.
        kubernetes_validate.validate(obj, kube_version, strict=True)


# Other corners of the templates, each rendered, linted and validated like the two above.
VARIANTS = {
    "metrics-off": {"metrics": {"enabled": False}},
    "models-from-nfs": {
        "modelRepository": {
            "source": "volume",
            "volume": {"nfs": {"server": "nfs.example", "path": "/models"}},
            "subPath": "ganserve",
        }
    },
    "tls-without-client-auth": {"tls": {"enabled": True, "secretName": "ganserve-tls"}},
    "hpa-on-inflight-only": {
        "autoscaling": {
            "enabled": True,
            "targetCPUUtilizationPercentage": None,
            "customMetric": {"enabled": True, "name": "ganserve_inflight_requests"},
        }
    },
    "existing-secrets-and-accounts": {
        "auth": {"enabled": True, "existingSecret": "tokens", "secretKey": "ganserve"},
        "serviceAccount": {"create": False, "name": "inference"},
        "podDisruptionBudget": {"minAvailable": 1},
        "gpu": {"enabled": True, "engineCache": {"existingClaim": "trt-engines"}},
    },
    "recreate-rollout": {"strategy": {"type": "Recreate"}},
    "ipv6-bind": {"config": {"host": "[::]", "metrics_host": "::"}},
    "pdb-percentage": {"podDisruptionBudget": {"maxUnavailable": "25%"}},
    "pdb-min-percentage-leaves-one-to-evict": {
        "replicaCount": 3,
        "podDisruptionBudget": {"minAvailable": "60%"},
    },
    "longest-name": {"fullnameOverride": "g" * 63, "service": {"headless": {"enabled": True}}},
    "hpa-behavior-and-resources": {
        "autoscaling": {
            "enabled": True,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 30,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Pods", "value": 4, "periodSeconds": 60},
                        {"type": "Percent", "value": 100, "periodSeconds": 60},
                    ],
                },
                "scaleDown": {"selectPolicy": "Disabled"},
            },
        },
        "resources": {
            "requests": {"cpu": 0.5, "memory": "512Mi", "ephemeral-storage": "1G"},
            "limits": {"memory": 2147483648, "example.com/fpga": 1},
        },
    },
    "admin-behind-a-token": {"config": {"admin": True}, "auth": {"enabled": True, "token": TOKEN}},
    "numbers-past-a-million": {
        "tmpSizeLimit": 268435456,
        "config": {"cache_bytes": 2**40, "max_queue_size": 10_000_000},
        "probes": {"startup": {"failureThreshold": 10_000}},
        "autoscaling": {"enabled": True, "maxReplicas": 100_000},
    },
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=list(VARIANTS))
def test_variants_lint_and_match_the_kubernetes_schemas(
    chart: helm.Chart, values: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    report = helm.lint(CHART, copy.deepcopy(values), strict=True)
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"])
    objects, _ = render(chart, values)
    for obj in objects.values():
        kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)
    if not values.get("tls") and not values.get("auth"):
        _dry_run(config_file(objects), tmp_path)


def test_full_values_render_every_optional_object(full: Manifests) -> None:
    assert {
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "Secret",
        f"Service/{RELEASE}-ganserve-headless",
    } <= set(full)


def test_defaults_render_no_optional_object(default: Manifests) -> None:
    assert not {"HorizontalPodAutoscaler", "ServiceMonitor", "Secret"} & set(default)
    assert default["Deployment"]["spec"]["replicas"] == 2


def test_recreate_strategy_has_no_rolling_update(chart: helm.Chart) -> None:
    """The API server rejects rollingUpdate beside type Recreate; the default has one."""
    objects, _ = render(chart, VARIANTS["recreate-rollout"])
    assert objects["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}


def test_object_names_fit_in_63_characters(chart: helm.Chart) -> None:
    objects, notes = render(chart, VARIANTS["longest-name"])
    names = {obj["metadata"]["name"] for obj in objects.values()}
    headless = "g" * 54 + "-headless"
    assert headless in names and max(map(len, names)) == 63
    assert f"dns:///{headless}.{NAMESPACE}.svc" in notes


def test_numbers_past_a_million_render_as_integers(
    chart: helm.Chart, tmp_path: pathlib.Path
) -> None:
    """Helm holds numbers as float64 and prints 1e+06 unless a template says int."""
    objects, _ = render(chart, VARIANTS["numbers-past-a-million"])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    # YAML would read 2.68435456e+08 as a float equal to it, so check the type too.
    size = tmp["emptyDir"]["sizeLimit"]
    assert size == 268435456 and type(size) is int
    assert objects["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 100_000
    assert container(objects)["startupProbe"]["failureThreshold"] == 10_000
    resolved = _dry_run(config_file(objects), tmp_path)
    assert resolved["cache_bytes"] == 2**40
    assert resolved["batching"]["max_queue_size"] == 10_000_000


def test_service_monitor_takes_compound_durations(chart: helm.Chart) -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True, "interval": "1m30s"}}}
    values["metrics"]["serviceMonitor"]["scrapeTimeout"] = "1m30s"  # as long as the interval
    (endpoint,) = render(chart, values)[0]["ServiceMonitor"]["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("1m30s", "1m30s")


def test_pod_labels_join_the_chart_labels(chart: helm.Chart) -> None:
    """Extra labels are added and may replace the chart's informational ones (each key once);
    the selector's are refused (REFUSED below)."""
    values = {"podLabels": {"team": "gen", "app.kubernetes.io/version": "pinned"}}
    text = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    # Once in the Deployment's labels, once in the pod's: no duplicate keys.
    assert text["ganserve/templates/deployment.yaml"].count("app.kubernetes.io/version:") == 2
    objects, _ = render(chart, values)
    spec = objects["Deployment"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert labels["team"] == "gen" and labels["app.kubernetes.io/version"] == "pinned"
    assert spec["selector"]["matchLabels"].items() <= labels.items()


# --- values.schema.json -------------------------------------------------------------------------

BAD_VALUES = {
    "negative-replicas": ({"replicaCount": -1}, "/replicaCount"),
    "digest-not-sha256": ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    "tag-with-a-fraction": ({"image": {"tag": 1.5}}, "/image/tag"),
    "unknown-backend": ({"config": {"backend": "bogus"}}, "/config/backend"),
    "unknown-model-backend": ({"models": {"digits": {"backend": "bogus"}}}, "/models/digits"),
    "unknown-config-key": ({"config": {"max_batch": 8}}, "max_batch"),
    "batch-size-out-of-range": ({"config": {"max_batch_size": 0}}, "/config/max_batch_size"),
    "short-token": ({"auth": {"enabled": True, "token": "short"}}, "/auth/token"),
    "unknown-metric": (
        {"autoscaling": {"enabled": True, "customMetric": {"enabled": True, "name": "cpu"}}},
        "/autoscaling/customMetric/name",
    ),
    # The server reads at most 4096 bytes of token file.
    "long-token": ({"auth": {"enabled": True, "token": "a" * 4097}}, "/auth/token"),
    # UID 65532 without capabilities cannot bind below 1024; service.port takes 80 and 443.
    "privileged-grpc-port": ({"ports": {"grpc": 443}}, "/ports/grpc"),
    "privileged-metrics-port": ({"ports": {"metrics": 80}}, "/ports/metrics"),
    # Kubelet probes and Prometheus connect to the pod IP, not to loopback.
    "loopback-host": ({"config": {"host": "127.0.0.1"}}, "/config/host"),
    "loopback-metrics-host": ({"config": {"metrics_host": "localhost"}}, "/config/metrics_host"),
    # Printed as 1e+06 (Kubernetes wants an integer) or past what a grace period can hold.
    "replicas-over-maximum": ({"replicaCount": 1_000_000}, "/replicaCount"),
    "hpa-max-over-maximum": (
        {"autoscaling": {"enabled": True, "maxReplicas": 1_000_000}},
        "/autoscaling/maxReplicas",
    ),
    "hpa-target-average-not-a-quantity": (
        {
            "autoscaling": {
                "enabled": True,
                "customMetric": {"enabled": True, "targetAverageValue": "four"},
            }
        },
        "/autoscaling/customMetric/targetAverageValue",
    ),
    "hpa-target-average-zero": (
        {
            "autoscaling": {
                "enabled": True,
                "customMetric": {"enabled": True, "targetAverageValue": "0"},
            }
        },
        "/autoscaling/customMetric/targetAverageValue",
    ),
    "pdb-not-a-percentage": (
        {"podDisruptionBudget": {"maxUnavailable": "half"}},
        "/podDisruptionBudget/maxUnavailable",
    ),
    "pdb-over-100-percent": (
        {"podDisruptionBudget": {"minAvailable": "150%"}},
        "/podDisruptionBudget/minAvailable",
    ),
    "pdb-negative": ({"podDisruptionBudget": {"maxUnavailable": -1}}, "/podDisruptionBudget"),
    "tmp-size-not-a-quantity": ({"tmpSizeLimit": "256 MB"}, "/tmpSizeLimit"),
    "engine-cache-size-not-a-quantity": (
        {"gpu": {"enabled": True, "engineCache": {"sizeLimit": "4 GB"}}},
        "/gpu/engineCache/sizeLimit",
    ),
    "gpu-resource-without-domain": ({"gpu": {"enabled": True, "resource": "gpu"}}, "/gpu/resource"),
    "service-annotation-not-a-string": (
        {"service": {"annotations": {"example.com/internal": True}}},
        "/service/annotations",
    ),
    "service-account-annotation-not-a-string": (
        {"serviceAccount": {"annotations": {"example.com/role": 1}}},
        "/serviceAccount/annotations",
    ),
    "pod-label-value-with-space": ({"podLabels": {"team": "gen serve"}}, "/podLabels/team"),
    "secret-key-with-slash": (
        {"auth": {"enabled": True, "token": TOKEN, "secretKey": "bad key/x"}},
        "/auth/secretKey",
    ),
    "image-repository-with-tag": (
        {"image": {"repository": "ghcr.io/acme/ganserve:1.2.0"}},
        "/image/repository",
    ),
    "image-tag-with-digest": ({"image": {"tag": "0.1.0@sha256:" + "a" * 64}}, "/image/tag"),
    "fullname-starting-with-digit": ({"fullnameOverride": "1gan"}, "/fullnameOverride"),
    "fullname-over-63": ({"fullnameOverride": "a" * 64}, "/fullnameOverride"),
    "name-with-space": ({"nameOverride": "Gan Serve"}, "/nameOverride"),
    "tls-secret-name": (
        {"tls": {"enabled": True, "secretName": "Bad_Name"}},
        "/tls/secretName",
    ),
    "auth-secret-name": (
        {"auth": {"enabled": True, "existingSecret": "Bad_Name"}},
        "/auth/existingSecret",
    ),
    "claim-name": (
        {"modelRepository": {"source": "persistentVolumeClaim", "claimName": "Models!"}},
        "/modelRepository/claimName",
    ),
    "service-account-name": ({"serviceAccount": {"name": "Bad_SA"}}, "/serviceAccount/name"),
    "priority-class-name": ({"priorityClassName": "High Priority"}, "/priorityClassName"),
    "strategy-type": ({"strategy": {"type": "BlueGreen"}}, "/strategy/type"),
    "scrape-interval-not-a-duration": (
        {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15 seconds"}}},
        "/metrics/serviceMonitor/interval",
    ),
    # Kubernetes would refuse these at install time, or (a misspelt key) ignore them.
    "resources-misspelt-requests": ({"resources": {"request": {"cpu": "1"}}}, "/resources"),
    "resources-not-a-quantity": (
        {"resources": {"requests": {"cpu": "2 cores"}}},
        "/resources/requests/cpu",
    ),
    "resources-negative": ({"resources": {"limits": {"memory": -1}}}, "/resources/limits/memory"),
    "hpa-window-as-a-duration": (
        {"autoscaling": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": "5m"}}}},
        "/autoscaling/behavior/scaleDown/stabilizationWindowSeconds",
    ),
    "hpa-window-over-an-hour": (
        {"autoscaling": {"behavior": {"scaleUp": {"stabilizationWindowSeconds": 3601}}}},
        "/autoscaling/behavior/scaleUp/stabilizationWindowSeconds",
    ),
    "hpa-policy-type": (
        {
            "autoscaling": {
                "behavior": {
                    "scaleUp": {"policies": [{"type": "Pod", "value": 1, "periodSeconds": 60}]}
                }
            }
        },
        "/autoscaling/behavior/scaleUp/policies/0/type",
    ),
    "hpa-policy-without-period": (
        {"autoscaling": {"behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 1}]}}}},
        "missing property 'periodSeconds'",
    ),
    "hpa-policy-period-over-30-minutes": (
        {
            "autoscaling": {
                "behavior": {
                    "scaleDown": {
                        "policies": [{"type": "Percent", "value": 10, "periodSeconds": 3600}]
                    }
                }
            }
        },
        "/autoscaling/behavior/scaleDown/policies/0/periodSeconds",
    ),
    "hpa-select-policy": (
        {"autoscaling": {"behavior": {"scaleDown": {"selectPolicy": "Maximum"}}}},
        "/autoscaling/behavior/scaleDown/selectPolicy",
    ),
    "hpa-behavior-unknown-direction": (
        {"autoscaling": {"behavior": {"scaleOut": {"stabilizationWindowSeconds": 0}}}},
        "/autoscaling/behavior",
    ),
    "run-as-user-not-a-number": (
        {"securityContext": {"runAsUser": "root"}},
        "/securityContext/runAsUser",
    ),
    # null removes a value from the chart's defaults; what the templates need is required.
    "tls-null": ({"tls": None}, "missing property 'tls'"),
    "service-port-null": ({"service": {"port": None}}, "missing property 'port'"),
    "secret-key-null": (
        {"auth": {"enabled": True, "token": TOKEN, "secretKey": None}},
        "missing property 'secretKey'",
    ),
    "metrics-enabled-null": ({"metrics": {"enabled": None}}, "missing property 'enabled'"),
}


@pytest.mark.parametrize(("values", "where"), BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    report = helm.lint(CHART, values, strict=True)
    assert any(where in error for error in report["errors"]), report


def test_schema_backends_are_the_servers(chart: helm.Chart) -> None:
    schema = chart.schema
    backends = [b.value for b in Backend]
    assert schema["properties"]["config"]["properties"]["backend"]["enum"] == backends
    model = schema["properties"]["models"]["additionalProperties"]
    assert model["properties"]["backend"]["enum"] == backends


def test_schema_config_keys_are_the_servers_config_file_keys(chart: helm.Chart) -> None:
    """Every key the server's config file takes is in the schema or set by the chart itself,
    and the schema offers no key the server would refuse."""
    offered = set(chart.schema["properties"]["config"]["properties"])
    assert offered <= FILE_KEYS
    assert offered | CHART_MANAGED_KEYS == FILE_KEYS, (
        f"new server settings {sorted(FILE_KEYS - offered - CHART_MANAGED_KEYS)}: add them to "
        "values.schema.json (config) or to CHART_MANAGED_KEYS"
    )


# Values the schema cannot judge alone: each would be rejected by Kubernetes, crash-loop the
# server, or be silently ignored. The template refuses them, naming the values to change.
REFUSED = {
    # Incomplete.
    "tls-secret": ({"tls": {"enabled": True}}, "tls.enabled needs tls.secretName"),
    "auth-token": ({"auth": {"enabled": True}}, "auth.existingSecret"),
    "claim": ({"modelRepository": {"source": "persistentVolumeClaim"}}, "claimName"),
    "volume": ({"modelRepository": {"source": "volume"}}, "modelRepository.volume"),
    "hpa-metric": (
        {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}},
        "customMetric",
    ),
    "grace-period": ({"terminationGracePeriodSeconds": 25}, "terminationGracePeriodSeconds"),
    # Covers the drain but not the ~3 s the server needs after it to close and exit.
    "grace-period-without-time-to-exit": (
        {"terminationGracePeriodSeconds": 29},
        "terminationGracePeriodSeconds (29) must be at least preStopSleepSeconds + "
        "config.shutdown_delay + config.drain_grace + 5 (30)",
    ),
    "pdb-without-a-budget": (
        {"podDisruptionBudget": {"maxUnavailable": None}},
        "podDisruptionBudget.enabled needs podDisruptionBudget.maxUnavailable or "
        "podDisruptionBudget.minAvailable",
    ),
    # Allows no eviction: every node drain would wait forever.
    "pdb-keeps-every-pod": (
        {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}},
        "podDisruptionBudget.minAvailable (2) keeps all 2 pods (replicaCount) up",
    ),
    "pdb-percentage-keeps-every-pod": (
        {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": "70%"}},
        "podDisruptionBudget.minAvailable (70%) keeps all 3 pods (replicaCount) up",
    ),
    "pdb-keeps-every-autoscaled-pod": (
        {
            "autoscaling": {"enabled": True, "minReplicas": 2},
            "podDisruptionBudget": {"minAvailable": 3},
        },
        "podDisruptionBudget.minAvailable (3) keeps all 2 pods (autoscaling.minReplicas) up",
    ),
    "pdb-evicts-none": (
        {"podDisruptionBudget": {"maxUnavailable": "0%"}},
        "podDisruptionBudget.maxUnavailable (0%) allows no pod to be evicted",
    ),
    # The server would refuse to start.
    "ports-collide": (
        {"ports": {"grpc": 8000, "metrics": 8000}},
        "ports.grpc and ports.metrics are both 8000",
    ),
    "preferred-batch-above-max": (
        {"config": {"max_batch_size": 8, "preferred_batch_sizes": [8, 16]}},
        "config.preferred_batch_sizes holds 16, above config.max_batch_size (8)",
    ),
    "preferred-batch-above-server-default": (
        {"config": {"max_batch_size": None, "preferred_batch_sizes": [128]}},
        "config.preferred_batch_sizes holds 128, above config.max_batch_size (64)",
    ),
    "gpu-backend-on-cpu": (
        {"config": {"backend": "onnxruntime-cuda"}},
        "config.backend onnxruntime-cuda needs a GPU, but gpu.enabled is false",
    ),
    "gpu-model-backend-on-cpu": (
        {"models": {"digits": {"backend": "tensorrt"}}},
        "models.digits.backend tensorrt needs a GPU, but gpu.enabled is false",
    ),
    "env-overrides-port": (
        {"extraEnv": [{"name": "GANSERVE_PORT", "value": "9000"}]},
        "extraEnv sets GANSERVE_PORT, which would override the chart's setting of it: set "
        "ports.grpc instead",
    ),
    "env-overrides-config": (
        {"extraEnv": [{"name": "GANSERVE_SHUTDOWN_DELAY", "value": "600"}]},
        "set config.shutdown_delay instead",
    ),
    "env-sets-the-token": (
        {"extraEnv": [{"name": "GANSERVE_AUTH_TOKEN", "value": "0123456789abcdef-t"}]},
        "set auth.existingSecret (or auth.token) instead",
    ),
    # Anyone who reaches the port could list and reload models.
    "admin-without-auth": (
        {"config": {"admin": True}},
        "config.admin is true but auth.enabled is false, so anyone who reaches the gRPC port "
        "could list and reload models: set auth.enabled true",
    ),
    # The kubelet would refuse to start the container (runAsNonRoot with UID 0).
    "root-container-must-be-non-root": (
        {"securityContext": {"runAsUser": 0}},
        "securityContext.runAsUser is 0 (root) but securityContext.runAsNonRoot is true",
    ),
    "root-pod-must-be-non-root": (
        {"podSecurityContext": {"runAsUser": 0}, "securityContext": {"runAsUser": None}},
        "podSecurityContext.runAsUser is 0 (root) but securityContext.runAsNonRoot is true",
    ),
    "root-container-in-a-non-root-pod": (
        {"securityContext": {"runAsUser": 0, "runAsNonRoot": None}},
        "securityContext.runAsUser is 0 (root) but podSecurityContext.runAsNonRoot is true",
    ),
    # Kubernetes or Prometheus would reject the objects.
    "service-ports-collide": (
        {"service": {"port": 8000, "metricsPort": 8000}},
        "service.port and service.metricsPort are both 8000",
    ),
    "hpa-min-above-max": (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (2)",
    ),
    "hpa-cpu-without-cpu-request": (
        {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
        "autoscaling.targetCPUUtilizationPercentage is a percentage of the CPU request, but "
        "resources.requests.cpu is not set",
    ),
    "pod-label-replaces-selector": (
        {"podLabels": {"app.kubernetes.io/name": "other"}},
        "podLabels sets app.kubernetes.io/name",
    ),
    "pod-label-replaces-instance": (
        {"podLabels": {"app.kubernetes.io/instance": "other"}},
        "podLabels sets app.kubernetes.io/instance",
    ),
    "pod-annotation-replaces-checksum": (
        {"podAnnotations": {"checksum/config": "pinned"}},
        "podAnnotations sets checksum/config",
    ),
    "scrape-timeout-over-interval": (
        {"metrics": {"serviceMonitor": {"enabled": True, "interval": "5s", "scrapeTimeout": "1m"}}},
        "metrics.serviceMonitor.scrapeTimeout (1m) is longer than "
        "metrics.serviceMonitor.interval (5s)",
    ),
    "scrape-interval-zero": (
        {"metrics": {"serviceMonitor": {"enabled": True, "interval": "0s"}}},
        'metrics.serviceMonitor.interval "0s" must be longer than 0',
    ),
    "rollout-that-cannot-progress": (
        {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}},
        "strategy.rollingUpdate.maxSurge and maxUnavailable are both 0",
    ),
    "sub-path-outside-the-volume": (
        {
            "modelRepository": {
                "source": "persistentVolumeClaim",
                "claimName": "m",
                "subPath": "../x",
            }
        },
        'modelRepository.subPath "../x" must be a relative path',
    ),
    "sub-path-absolute": (
        {"modelRepository": {"source": "persistentVolumeClaim", "claimName": "m", "subPath": "/m"}},
        'modelRepository.subPath "/m" must be a relative path',
    ),
    # Silently ignored.
    "claim-with-bundled-models": (
        {"modelRepository": {"claimName": "models"}},
        "modelRepository.claimName is set but modelRepository.source is bundled",
    ),
    "volume-with-a-claim": (
        {
            "modelRepository": {
                "source": "persistentVolumeClaim",
                "claimName": "models",
                "volume": {"nfs": {"server": "nfs.example", "path": "/models"}},
            }
        },
        "modelRepository.volume is set but modelRepository.source is persistentVolumeClaim",
    ),
    "sub-path-with-bundled-models": (
        {"modelRepository": {"subPath": "ganserve"}},
        "modelRepository.subPath is set but modelRepository.source is bundled",
    ),
    "engine-cache-claim-without-gpu": (
        {"gpu": {"engineCache": {"existingClaim": "trt-engines"}}},
        "gpu.engineCache.existingClaim is set but gpu.enabled is false",
    ),
    "service-monitor-without-metrics": (
        {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
        "metrics.serviceMonitor.enabled needs metrics.enabled",
    ),
    "client-auth-without-tls": (
        {"tls": {"clientAuth": True}},
        "tls.clientAuth is set but tls.enabled is false",
    ),
    "tls-secret-without-tls": (
        {"tls": {"secretName": "ganserve-tls"}},
        "tls.secretName is set but tls.enabled is false",
    ),
    "token-without-auth": (
        {"auth": {"token": TOKEN}},
        "auth.token is set but auth.enabled is false",
    ),
    "secret-without-auth": (
        {"auth": {"existingSecret": "tokens"}},
        "auth.existingSecret is set but auth.enabled is false",
    ),
    "secret-and-token": (
        {"auth": {"enabled": True, "existingSecret": "tokens", "token": TOKEN}},
        "auth.existingSecret and auth.token are both set",
    ),
}


@pytest.mark.parametrize(("values", "message"), REFUSED.values(), ids=list(REFUSED))
def test_values_that_cannot_work_fail_with_a_message(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    # `helm install` and `helm template` stop here; `helm lint` only logs a template's `fail`.
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def test_extra_env_refuses_exactly_the_servers_settings_and_names_a_real_value(
    chart: helm.Chart,
) -> None:
    """Every `ganserve serve` variable is refused, with advice the schema then accepts (a
    config key or a value the chart has); variables the server does not read pass."""
    template = (CHART / "templates" / "_validate.tpl").read_text()
    listed = set(re.search(r"\$configKeys := list (.*?) }}", template)[1].replace('"', "").split())
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    assert listed == set(schema["config"]["properties"])
    server = {p.envvar for p in cli.serve.params if p.envvar} | {"GANSERVE_AUTH_TOKEN"}
    for name in sorted(server):
        with pytest.raises(helm.HelmRenderError) as info:
            render(chart, {"extraEnv": [{"name": name, "value": "1"}]})
        instead = re.search(r"set (\S+)(?: \(or \S+\))? instead", str(info.value))[1]
        top, _, key = instead.partition(".")
        assert top in schema, (name, instead)
        if top == "config" and key:
            assert key in schema["config"]["properties"], (name, instead)
    for name in ("GANSERVE_TARGET", "OTHER"):
        objects, _ = render(chart, {"extraEnv": [{"name": name, "value": "1"}]})
        assert {"name": name, "value": "1"} in container(objects)["env"]


@pytest.mark.parametrize(
    "token",
    [" " + TOKEN, TOKEN + "\n", "\t" * 20, "ünïcødé-tøken-1234567", "0123456789abcdef\n-token"],
    ids=["leading-space", "trailing-newline", "tabs", "non-ascii", "inner-newline"],
)
def test_token_the_server_would_refuse_fails_without_showing_it(
    chart: helm.Chart, token: str
) -> None:
    """The server strips the token file and needs printable ASCII; the message says so, and
    keeps the token itself out of logs."""
    with pytest.raises(helm.HelmRenderError, match=r"auth\.token must be printable ASCII") as error:
        chart.render({"auth": {"enabled": True, "token": token}}, name=RELEASE, namespace=NAMESPACE)
    secret = token.strip()
    assert not secret or secret not in str(error.value)


def test_root_is_refused_only_where_the_kubelet_refuses_it(chart: helm.Chart) -> None:
    """The container's runAsNonRoot false wins over the pod's true: the kubelet starts it as
    root, so the chart does too (REFUSED has the combinations it refuses)."""
    values = {"securityContext": {"runAsUser": 0, "runAsNonRoot": False}}
    security = container(render(chart, values)[0])["securityContext"]
    assert (security["runAsUser"], security["runAsNonRoot"]) == (0, False)


def test_extra_env_docs_name_the_variables_that_pass(chart: helm.Chart) -> None:
    """values.yaml's comment said every other GANSERVE_* variable is refused, but only the
    `ganserve serve` ones of settings the chart sets are: each variable it names as refused is,
    and each it names as passing (gan-client's GANSERVE_TARGET among them) renders."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    end = lines.index("extraEnv: []")
    start = max(i for i in range(end) if not lines[i].startswith("#")) + 1
    comment = " ".join(line.lstrip("# ") for line in lines[start:end])
    said: dict[str, set[str]] = {"refused": set(), "pass": set()}
    for sentence in comment.split(". "):
        for verdict, names in said.items():
            if verdict in sentence:
                # GANSERVE_TLS_* stands for each TLS variable: one of them.
                names |= {
                    n.replace("_*", "_CERT") for n in re.findall(r"GANSERVE_\w+\*?", sentence)
                }
    assert "GANSERVE_TARGET" in said["pass"] and len(said["refused"]) >= 3, said
    for name in said["refused"]:
        with pytest.raises(helm.HelmRenderError, match=f"extraEnv sets {name}"):
            render(chart, {"extraEnv": [{"name": name, "value": "1"}]})
    for name in said["pass"]:
        objects, _ = render(chart, {"extraEnv": [{"name": name, "value": "1"}]})
        assert {"name": name, "value": "1"} in container(objects)["env"]
    readme = (CHART / "README.md").read_text()
    assert "GANSERVE_TARGET" in readme and "`GANSERVE_*` variable\n  but" not in readme


# --- the chart matches the server ---------------------------------------------------------------


def test_ports_are_the_servers_defaults(chart: helm.Chart, rendered: Manifests) -> None:
    assert chart.values["ports"] == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    ports = {p["name"]: p["containerPort"] for p in container(rendered)["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    service = rendered[f"Service/{RELEASE}-ganserve"]["spec"]["ports"]
    by_name = {p["name"]: p for p in service}
    assert by_name["grpc"]["appProtocol"] == "grpc"
    assert by_name["grpc"]["targetPort"] == "grpc" and by_name["metrics"]["targetPort"] == "metrics"
    assert f"port = {GRPC_PORT}\n" in config_file(rendered)
    assert f"metrics_port = {METRICS_PORT}\n" in config_file(rendered)


def test_pods_get_no_service_link_variables(chart: helm.Chart) -> None:
    """Release `ganserve` names its Service ganserve, and Kubernetes' service links would set
    GANSERVE_PORT=tcp://<ip>:50051 in every pod of the namespace: the server's --port variable
    (test_server_refuses_a_service_link_port shows it refusing one)."""
    objects, _ = render(chart, DEFAULT, release="ganserve")
    assert "Service/ganserve" in objects
    assert objects["Deployment"]["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_server_refuses_a_service_link_port(default: Manifests, tmp_path: pathlib.Path) -> None:
    """Why the pods get no service links: the variable a Service named ganserve injects."""
    path = tmp_path / "ganserve.toml"
    path.write_text(config_file(default))
    env = {k: None for k in os.environ if k.startswith("GANSERVE_")}
    env["GANSERVE_PORT"] = "tcp://10.96.0.12:50051"
    result = CliRunner().invoke(cli.main, ["serve", "--dry-run", "--config", str(path)], env=env)
    assert result.exit_code == 2, result.output
    assert "GANSERVE_PORT" in result.output and "tcp://10.96.0.12:50051" in result.output


def test_hpa_custom_metric_is_a_per_pod_gauge_of_the_server(
    chart: helm.Chart, full: Manifests
) -> None:
    families = {f.name: f.type for f in ServerMetrics(max_batch_size=8).registry.collect()}
    (pods,) = [m for m in full["HorizontalPodAutoscaler"]["spec"]["metrics"] if m["type"] == "Pods"]
    assert families[pods["pods"]["metric"]["name"]] == "gauge"
    allowed = chart.schema["properties"]["autoscaling"]["properties"]["customMetric"]
    for name in allowed["properties"]["name"]["enum"]:
        assert families.get(name) == "gauge", name


def test_hpa_defaults_to_cpu_and_owns_the_replica_count(chart: helm.Chart) -> None:
    objects, _ = render(chart, {"autoscaling": {"enabled": True}})
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objects["Deployment"]["metadata"]["name"],
    }
    assert "replicas" not in objects["Deployment"]["spec"]


def test_service_monitor_scrapes_the_metrics_port(full: Manifests) -> None:
    monitor = full["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selected = [
        obj
        for key, obj in full.items()
        if key.startswith("Service/")
        and monitor["spec"]["selector"]["matchLabels"].items() <= obj["metadata"]["labels"].items()
    ]
    # Both Services match; only the main one has a metrics port, so each pod is scraped once.
    assert [s["metadata"]["name"] for s in selected if "metrics" in _port_names(s)] == [
        f"{RELEASE}-ganserve"
    ]


def _port_names(service: dict[str, Any]) -> set[str]:
    return {p["name"] for p in service["spec"]["ports"]}


def test_headless_service_is_headless_grpc_only(full: Manifests) -> None:
    spec = full[f"Service/{RELEASE}-ganserve-headless"]["spec"]
    assert spec["clusterIP"] == "None" and _port_names({"spec": spec}) == {"grpc"}


def test_pod_annotations_point_prometheus_at_metrics(default: Manifests) -> None:
    annotations = default["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(
    ("metrics", "annotated"),
    [
        ({}, True),
        # A Prometheus that reads both would scrape each pod twice.
        ({"serviceMonitor": {"enabled": True}}, False),
        ({"podAnnotations": None, "serviceMonitor": {"enabled": True}}, False),
        ({"podAnnotations": True, "serviceMonitor": {"enabled": True}}, True),
        ({"podAnnotations": False}, False),
    ],
    ids=["default", "with-service-monitor", "null-with-service-monitor", "both-asked-for", "off"],
)
def test_pod_annotations_default_off_beside_a_service_monitor(
    chart: helm.Chart, metrics: dict[str, Any], annotated: bool
) -> None:
    values = {"metrics": metrics}
    service_monitor = bool(metrics.get("serviceMonitor"))
    objects, notes = render(chart, values)
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert ("prometheus.io/scrape" in annotations) is annotated
    assert ("ServiceMonitor" in objects) is service_monitor
    assert ("pods carry prometheus.io/scrape" in notes) is (annotated and not service_monitor)
    if not annotated:  # the annotations are the user's to set then
        values["podAnnotations"] = {"prometheus.io/scrape": "false"}
        objects, _ = render(chart, values)
        annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "false"


def _dry_run(config_text: str, tmp_path: pathlib.Path) -> dict[str, Any]:
    """The server's own CLI (`ganserve serve --dry-run --config FILE`) on the rendered file."""
    path = tmp_path / "ganserve.toml"
    path.write_text(config_text)
    env = {k: None for k in os.environ if k.startswith("GANSERVE_")}
    result = CliRunner().invoke(cli.main, ["serve", "--dry-run", "--config", str(path)], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_default_config_file_is_accepted_by_the_server(
    default: Manifests, chart: helm.Chart, tmp_path: pathlib.Path
) -> None:
    resolved = _dry_run(config_file(default), tmp_path)
    config = chart.values["config"]
    assert resolved["model_repository"] == "/models"
    assert (resolved["port"], resolved["metrics_port"]) == (GRPC_PORT, METRICS_PORT)
    assert resolved["batching"]["max_batch_size"] == config["max_batch_size"]
    assert resolved["shutdown_delay_s"] == config["shutdown_delay"]
    assert resolved["drain_grace_s"] == config["drain_grace"]
    assert resolved["log_format"] == "json" and resolved["backend"] == "auto"
    assert resolved["tls"] is None and resolved["auth_token"] is None


def test_full_config_file_is_accepted_by_the_server(
    full: Manifests, tmp_path: pathlib.Path
) -> None:
    """TLS and token paths point into the pod's Secret mounts; here they point at real files."""
    tls_dir, auth_dir = tmp_path / "tls", tmp_path / "auth"
    write_certificates(tls_dir)
    auth_dir.mkdir()
    (auth_dir / "token").write_text(TOKEN + "\n")
    text = config_file(full)
    text = text.replace('"/etc/ganserve/tls/', f'"{tls_dir}/').replace(
        '"/etc/ganserve/auth/', f'"{auth_dir}/'
    )
    resolved = _dry_run(text, tmp_path)
    assert resolved["batching"]["preferred_batch_sizes"] == [8, 32, 64]
    assert resolved["shutdown_delay_s"] == 2.5
    assert resolved["engine_cache_dir"] == "/var/cache/ganserve"
    assert resolved["models"]["digits"] == {
        "backend": "onnxruntime-cuda",
        "versions": [1, 2],
        "precision": "fp16",
    }
    assert resolved["tls"]["client_ca_file"] == str(tls_dir / "ca.crt")
    assert resolved["auth_token"] == "<redacted>"


def test_config_file_paths_are_where_the_secrets_and_volumes_are_mounted(
    full: Manifests, tmp_path: pathlib.Path
) -> None:
    mounts = {m["name"]: m for m in container(full)["volumeMounts"]}
    volumes = {v["name"]: v for v in full["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    text = config_file(full)
    assert mounts["tls"]["mountPath"] == "/etc/ganserve/tls"
    assert volumes["tls"]["secret"]["secretName"] == "ganserve-tls"
    for key, name in (("tls_cert", "tls.crt"), ("tls_key", "tls.key"), ("tls_client_ca", "ca.crt")):
        assert f'{key} = "/etc/ganserve/tls/{name}"' in text
    assert 'auth_token_file = "/etc/ganserve/auth/token"' in text
    assert mounts["auth"]["mountPath"] == "/etc/ganserve/auth"
    assert volumes["auth"]["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert full["Secret"]["stringData"] == {"token": TOKEN}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "ganserve-models"
    assert mounts["engine-cache"]["mountPath"] == "/var/cache/ganserve"
    config_mount = mounts["config"]["mountPath"]
    assert container(full)["args"] == ["--config", f"{config_mount}/ganserve.toml"]


def test_bundled_models_need_no_volume(default: Manifests) -> None:
    mounts = {m["mountPath"] for m in container(default)["volumeMounts"]}
    assert "/models" not in mounts
    assert 'model_repository = "/models"' in config_file(default)


def test_gpu_values_pick_the_gpu_image_and_request_a_gpu(full: Manifests) -> None:
    spec = full["Deployment"]["spec"]["template"]["spec"]
    assert container(full)["image"] == "ganserve:0.1.0-gpu"
    assert container(full)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]


def test_cpu_values_pick_the_cpu_image(default: Manifests) -> None:
    assert container(default)["image"] == "ganserve:0.1.0"
    assert "nvidia.com/gpu" not in str(container(default)["resources"])


# Volume sources Kubernetes always mounts read-only.
READ_ONLY_SOURCES = {"configMap", "secret", "downwardAPI", "projected"}
LOCKED_DOWN = {
    **VALUES,
    "engine-cache-claim-and-models-over-nfs": {
        "gpu": {"enabled": True, "engineCache": {"existingClaim": "trt-engines"}},
        "modelRepository": VARIANTS["models-from-nfs"]["modelRepository"],
    },
}


def _writable_paths(objects: Manifests) -> set[str]:
    """Mount paths the container can write to: a mount not marked readOnly, of a volume that is
    not read-only itself (emptyDir, a claim without readOnly, nfs, hostPath, ...)."""
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    writable = set()
    for mount in container(objects)["volumeMounts"]:
        (source, spec), *_ = [(k, v) for k, v in volumes[mount["name"]].items() if k != "name"]
        read_only = source in READ_ONLY_SOURCES or (spec or {}).get("readOnly", False)
        if not (mount.get("readOnly") or read_only):
            writable.add(mount["mountPath"])
    return writable


@pytest.mark.parametrize("values", LOCKED_DOWN.values(), ids=list(LOCKED_DOWN))
def test_pod_is_locked_down(chart: helm.Chart, values: dict[str, Any]) -> None:
    """Issue 7's checklist: non-root, read-only root, no privilege escalation, no capabilities,
    the runtime's seccomp profile, no API token."""
    rendered, _ = render(chart, values)
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(rendered)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable paths: /tmp (HOME and TMPDIR in the image) and, on GPU, the engine cache
    # (an emptyDir or gpu.engineCache.existingClaim); the models' claim or volume is read-only.
    writable = _writable_paths(rendered)
    assert "/tmp" in writable <= {"/tmp", "/var/cache/ganserve"}
    assert ("/var/cache/ganserve" in writable) is bool(values.get("gpu"))


def test_image_writes_only_where_the_chart_mounts_volumes(default: Manifests) -> None:
    stages = {s.name: s for s in dockerfile_lint.stages((ROOT / "Dockerfile").read_text())}
    env = stages["cpu"].env()
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert any(m["mountPath"] == "/tmp" for m in container(default)["volumeMounts"])


def test_pdb_keeps_pods_during_voluntary_disruptions(default: Manifests) -> None:
    pdb = default["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"] == default["Deployment"]["spec"]["selector"]


def test_notes_say_how_to_call_the_service(chart: helm.Chart) -> None:
    _, notes = render(chart, DEFAULT)
    assert f"port-forward service/{RELEASE}-ganserve {GRPC_PORT}:{GRPC_PORT}" in notes
    assert f"gan-client --target localhost:{GRPC_PORT} generate" in notes
    assert "grpcurl -plaintext" in notes and "ganserve.v1.Generator/Generate" in notes
    _, notes = render(chart, FULL)
    assert "--tls-ca ca.crt" in notes and "--token-file token" in notes
    assert f"dns:///{RELEASE}-ganserve-headless.{NAMESPACE}.svc:{GRPC_PORT}" in notes


def test_the_notes_client_commands_work_against_mutual_tls_and_a_token(
    chart: helm.Chart,
    start_server: Callable[..., ServerThread],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gan-client lines NOTES prints, run as printed (through a port-forward to localhost)
    against a server with the chart's TLS name, client certificates and token."""
    _, notes = render(chart, FULL)
    write_certificates(tmp_path, name=f"{RELEASE}-ganserve.{NAMESPACE}.svc")
    shutil.copy(tmp_path / "tls.crt", tmp_path / "client.crt")
    shutil.copy(tmp_path / "tls.key", tmp_path / "client.key")
    (tmp_path / "token").write_text(TOKEN)
    tls = TlsConfig(
        cert_file=tmp_path / "tls.crt",
        key_file=tmp_path / "tls.key",
        client_ca_file=tmp_path / "ca.crt",
    )
    port = start_server(tls=tls, auth_token=TOKEN).server.port
    monkeypatch.chdir(tmp_path)
    commands = [line.split()[1:] for line in notes.splitlines() if "  gan-client " in line]
    assert len(commands) == 2
    for argv in commands:
        argv = [a.replace(f"localhost:{GRPC_PORT}", f"localhost:{port}") for a in argv]
        result = CliRunner().invoke(client_cli.main, argv)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "seven.png").is_file()


def test_notes_grpcurl_lines_send_the_token_reflection_needs(
    chart: helm.Chart, start_server: Callable[..., ServerThread]
) -> None:
    """grpcurl asks server reflection for a method before calling it, and reflection is not
    exempt from auth (only grpc.health.v1.Health is): under auth.enabled the health check line
    needs the bearer header as much as the Generate line. Run here as grpcurl would, with the
    header the line passes, against a real server with a token."""
    _, notes = render(chart, {"auth": {"enabled": True, "token": TOKEN}})
    lines = [line for line in notes.splitlines() if line.lstrip().startswith("grpcurl ")]
    assert len(lines) == 2 and any("grpc.health.v1.Health/Check" in line for line in lines)
    for line in lines:
        assert '-H "authorization: Bearer $(cat token)"' in line, line
    header = re.search(r'-H "(\S+): Bearer \$\(cat token\)"', lines[-1])[1]
    server = start_server(auth_token=TOKEN)
    with grpc.insecure_channel(server.target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")
        with pytest.raises(grpc.RpcError) as refused:
            list(reflection.ServerReflectionInfo(iter([ask]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = ((header, f"Bearer {TOKEN}"),)
        (answer,) = reflection.ServerReflectionInfo(iter([ask]), metadata=metadata, timeout=10)
        assert answer.file_descriptor_response.file_descriptor_proto
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_notes_name_the_port_a_headless_name_resolves_to(chart: helm.Chart) -> None:
    """A headless name resolves to pod IPs: clients reach the container's port, whatever
    service.port is."""
    values = {"service": {"port": 443, "headless": {"enabled": True}}}
    objects, notes = render(chart, values)
    (port,) = objects[f"Service/{RELEASE}-ganserve-headless"]["spec"]["ports"]
    assert port["port"] == GRPC_PORT and port["targetPort"] == "grpc"
    assert f"dns:///{RELEASE}-ganserve-headless.{NAMESPACE}.svc:{GRPC_PORT}" in notes
    assert f"call {RELEASE}-ganserve.{NAMESPACE}.svc:443" in notes


def test_notes_read_a_secret_key_holding_dots(chart: helm.Chart) -> None:
    values = {"auth": {"enabled": True, "existingSecret": "api", "secretKey": "api.token"}}
    _, notes = render(chart, values)
    assert "jsonpath='{.data.api\\.token}'" in notes


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({"tag": 20240101}, "ganserve:20240101"),  # --set or a values file turns it into a number
        ({"tag": "v1.2"}, "ganserve:v1.2"),
        (
            {"repository": "r.example/ganserve", "digest": "sha256:" + "a" * 64},
            "r.example/ganserve@sha256:" + "a" * 64,
        ),
    ],
)
def test_images_by_numeric_tag_or_digest(chart: helm.Chart, image: dict, expected: str) -> None:
    objects, _ = render(chart, {"image": image})
    assert container(objects)["image"] == expected


def test_readme_documents_every_top_level_value(chart: helm.Chart) -> None:
    rows = [line for line in (CHART / "README.md").read_text().splitlines() if line[:1] == "|"]
    missing = [key for key in chart.values if not any(f"`{key}" in row for row in rows)]
    assert missing == []


def test_names_that_read_as_numbers_or_booleans_stay_strings(chart: helm.Chart) -> None:
    """Unquoted, YAML retyped them: a subPath of 2024 became an int (the API server refuses
    it), `on` became true, and `models #2` was cut at the `#` (another folder, in silence)."""
    values = {
        "nameOverride": "123",
        "priorityClassName": "on",
        "modelRepository": {"source": "persistentVolumeClaim", "claimName": "yes"},
        "tls": {"enabled": True, "secretName": "123"},
        "auth": {"enabled": True, "token": TOKEN, "secretKey": "1"},
    }
    for sub_path in ("2024", "models #2", "on"):
        values["modelRepository"]["subPath"] = sub_path
        objects, _ = render(chart, values)
        pod = objects["Deployment"]["spec"]["template"]["spec"]
        (models,) = [m for m in container(objects)["volumeMounts"] if m["mountPath"] == "/models"]
        assert models["subPath"] == sub_path
        sources = [(k, v) for volume in pod["volumes"] for k, v in volume.items() if k != "name"]
        assert any(k == "persistentVolumeClaim" and v["claimName"] == "yes" for k, v in sources)
        assert any(k == "secret" and v["secretName"] == "123" for k, v in sources)
        assert pod["priorityClassName"] == "on"
        assert objects["Deployment"]["metadata"]["labels"]["app.kubernetes.io/name"] == "123"
        secret = next(o for k, o in objects.items() if k.startswith("Secret"))
        assert list(secret["stringData"]) == ["1"]
