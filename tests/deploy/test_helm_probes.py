"""The chart's probes and shutdown timing: native gRPC health probes on the server's port, the
image's own health check under TLS (run here against a real mutual-TLS server), and a grace
period that outlasts the drain."""

from __future__ import annotations

import copy
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import dockerfile_lint
import helm_python as helm
import pytest
from chart_render import (
    CHART,
    DEFAULT,
    FULL,
    GRPC_PORT,
    NAMESPACE,
    RELEASE,
    TOKEN,
    Manifests,
    container,
    render,
)

from conftest import ROOT, ServerThread, write_certificates
from ganserve.serve.config import TlsConfig


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def full(chart: helm.Chart) -> Manifests:
    return render(chart, FULL)[0]


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Manifests:
    return render(chart, DEFAULT)[0]


def test_probes_are_native_grpc_health_checks_on_the_grpc_port(default: Manifests) -> None:
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        action = container(default)[probe]
        assert set(action) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}
        # service "" (left out): the whole server's health, which the server reports.
        assert action["grpc"] == {"port": GRPC_PORT}


def test_tls_probes_run_the_images_healthcheck_command(full: Manifests) -> None:
    """Kubelet's gRPC probe has no TLS, so under TLS the probes exec the image's HEALTHCHECK."""
    stages = {s.name: s for s in dockerfile_lint.stages((ROOT / "Dockerfile").read_text())}
    image_command = dockerfile_lint.healthcheck_argv(stages["gpu"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(full)[probe]["exec"]["command"] == image_command


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (DEFAULT, 5 + 20 + 5),
        (FULL, 31),  # preStop 3 + shutdown_delay 2.5 + drain_grace 20 + 5, rounded up
        ({"terminationGracePeriodSeconds": 60}, 60),
        # The least accepted: the drain and 5 s to close and exit (29 is refused).
        ({"terminationGracePeriodSeconds": 30}, 30),
    ],
    ids=["default", "full", "explicit", "explicit-least"],
)
def test_termination_grace_outlasts_the_drain(
    chart: helm.Chart, values: dict[str, Any], expected: int
) -> None:
    objects, _ = render(chart, values)
    spec = objects["Deployment"]["spec"]["template"]["spec"]
    merged = chart.merge_values(copy.deepcopy(values))
    drain = (
        merged["preStopSleepSeconds"]
        + merged["config"]["shutdown_delay"]
        + merged["config"]["drain_grace"]
    )
    assert spec["terminationGracePeriodSeconds"] == expected >= drain + 5


@pytest.mark.parametrize(
    ("values", "budget_s"),
    [
        (DEFAULT, 180),
        # TensorRT builds engines at start-up (minutes each, on every restart with an emptyDir
        # engine cache): 3 minutes would kill GPU pods in the middle of a build.
        ({"gpu": {"enabled": True}}, 600),
        ({"gpu": {"enabled": True}, "probes": {"startup": {"failureThreshold": 60}}}, 120),
        ({"probes": {"startup": {"failureThreshold": 150}}}, 300),
    ],
    ids=["cpu", "gpu", "gpu-explicit", "cpu-explicit"],
)
def test_startup_probe_allows_gpu_pods_longer(
    chart: helm.Chart, values: dict[str, Any], budget_s: int
) -> None:
    probe = container(render(chart, values)[0])["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == budget_s


def test_longest_drain_still_fits_the_grace_period(chart: helm.Chart) -> None:
    """The schema's maximums: 3600 s each for the preStop sleep, shutdown_delay, drain_grace."""
    values = {"preStopSleepSeconds": 3600, "config": {"shutdown_delay": 3600, "drain_grace": 3600}}
    objects, _ = render(chart, values)
    assert objects["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == (
        3 * 3600 + 5
    )
    assert container(objects)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "3600"]


BAD_TIMING = {
    # Kubernetes: successThreshold must be 1 for liveness and startup probes.
    "liveness-success-threshold": (
        {"probes": {"liveness": {"successThreshold": 2}}},
        "/probes/liveness/successThreshold",
    ),
    "startup-success-threshold": (
        {"probes": {"startup": {"successThreshold": 3}}},
        "/probes/startup/successThreshold",
    ),
    # Kubernetes: a readiness probe has no terminationGracePeriodSeconds.
    "readiness-grace-period": (
        {"probes": {"readiness": {"terminationGracePeriodSeconds": 5}}},
        "additional properties 'terminationGracePeriodSeconds' not allowed",
    ),
    "probe-null": ({"probes": {"liveness": None}}, "missing property 'liveness'"),
    "probe-period-huge": (
        {"probes": {"readiness": {"periodSeconds": 1_000_000}}},
        "/probes/readiness/periodSeconds",
    ),
    # Past 3600 s each; 1e300 used to overflow terminationGracePeriodSeconds.
    "shutdown-delay-huge": ({"config": {"shutdown_delay": 1e300}}, "/config/shutdown_delay"),
    "drain-grace-over-an-hour": ({"config": {"drain_grace": 3601}}, "/config/drain_grace"),
    "pre-stop-over-an-hour": ({"preStopSleepSeconds": 1_000_000}, "/preStopSleepSeconds"),
    # Under a second: a GOAWAY storm (the server refuses it too).
    "connection-age-sub-second": (
        {"config": {"max_connection_age": 0.5}},
        "/config/max_connection_age",
    ),
}


@pytest.mark.parametrize(("values", "where"), BAD_TIMING.values(), ids=list(BAD_TIMING))
def test_schema_rejects_bad_probe_and_shutdown_timing(
    chart: helm.Chart, values: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def test_pre_stop_sleeps_when_asked(full: Manifests, default: Manifests) -> None:
    assert container(full)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "3"]
    assert "lifecycle" not in container(default)


# --- the TLS probe, run for real ----------------------------------------------------------------


def run_probe(
    objects: Manifests, server: ServerThread, tls_dir: pathlib.Path, **env_overrides: str | None
) -> subprocess.CompletedProcess[bytes]:
    """Run the rendered readiness probe's command with the container's environment (its
    /etc/ganserve/tls paths pointed at ``tls_dir``, GANSERVE_PORT at the test server), changed
    by ``env_overrides`` (None removes a variable)."""
    spec = container(objects)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    for item in spec["env"]:
        env[item["name"]] = item["value"].replace("/etc/ganserve/tls", str(tls_dir))
    env.update(GANSERVE_PORT=str(server.server.port), **env_overrides)
    env = {k: v for k, v in env.items() if v is not None}
    python, *args = spec["readinessProbe"]["exec"]["command"]
    assert python == "python"
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("tls")
    write_certificates(folder, name=f"{RELEASE}-ganserve.{NAMESPACE}.svc")
    return folder


@pytest.fixture(scope="module")
def mtls_server(
    start_server_module: Callable[..., ServerThread], tls_dir: pathlib.Path
) -> ServerThread:
    tls = TlsConfig(
        cert_file=tls_dir / "tls.crt",
        key_file=tls_dir / "tls.key",
        client_ca_file=tls_dir / "ca.crt",
    )
    return start_server_module(tls=tls, auth_token=TOKEN)


def test_tls_probe_passes_against_a_mutual_tls_server(
    full: Manifests, mtls_server: ServerThread, tls_dir: pathlib.Path
) -> None:
    result = run_probe(full, mtls_server, tls_dir)
    assert result.returncode == 0, result.stderr.decode()


def test_tls_probe_fails_without_a_client_certificate(
    full: Manifests, mtls_server: ServerThread, tls_dir: pathlib.Path
) -> None:
    result = run_probe(
        full, mtls_server, tls_dir, GANSERVE_HEALTH_CERT=None, GANSERVE_HEALTH_KEY=None
    )
    # 1 and the gRPC code: the server turned the handshake down (2 would be the probe's own
    # settings, a crash anything else).
    assert result.returncode == 1, result.stderr.decode()
    assert "health check failed: UNAVAILABLE" in result.stderr.decode()


def test_tls_probe_fails_for_a_certificate_of_another_name(
    full: Manifests, mtls_server: ServerThread, tls_dir: pathlib.Path
) -> None:
    result = run_probe(full, mtls_server, tls_dir, GANSERVE_HEALTH_SERVER_NAME="other.example")
    assert result.returncode == 1, result.stderr.decode()
    assert "health check failed: UNAVAILABLE" in result.stderr.decode()
