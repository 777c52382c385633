"""A real Prometheus server (Debian's `prometheus`, 2.42) scrapes ganserve's /metrics.

Everything is asserted through Prometheus's query API, so the test proves more than that
/metrics renders: the exposition parses, the target is up, and the histograms work in PromQL.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import pytest

from conftest import ServerThread, generator_stub
from ganserve.v1 import generator_pb2 as pb

SCRAPE_INTERVAL_S = 1
WAIT_S = 30.0  # bound on every wait for Prometheus: startup, first scrape, fresh values
POLL_S = 0.25
OK_REQUESTS = 5
INVALID_REQUESTS = 3

T = TypeVar("T")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def prometheus_binary() -> str:
    """Path of the `prometheus` binary; a failure in CI (make test installs it), else a skip."""
    path = shutil.which("prometheus")
    if path is None:
        if _in_ci():
            pytest.fail("the prometheus binary is missing: `make test` should have installed it")
        pytest.skip("Debian's prometheus is not installed (make test installs it)")
    return path


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    """A Prometheus subprocess on a loopback port, and a client for its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: pathlib.Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def _get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets", state="active")["activeTargets"]

    def query(self, promql: str) -> float | None:
        """Value of an instant query that yields one sample, or None while it yields none."""
        data = self._get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        assert len(data["result"]) <= 1, data["result"]
        return float(data["result"][0]["value"][1]) if data["result"] else None

    def wait_for(self, what: str, fetch: Callable[[], T], done: Callable[[T], bool]) -> T:
        """Poll ``fetch`` until ``done`` holds for its value; fail after WAIT_S showing the last."""
        deadline = time.monotonic() + WAIT_S
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                last = fetch()
            except (urllib.error.URLError, ConnectionError) as exc:
                last = exc  # not listening yet
            else:
                if done(last):
                    return last
            time.sleep(POLL_S)
        pytest.fail(
            f"timed out after {WAIT_S:.0f} s waiting for {what}; last: {last!r}\n{self.log_tail()}"
        )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def start_prometheus(
    prometheus_binary: str, tmp_path: pathlib.Path
) -> Iterator[Callable[[int], Prometheus]]:
    """Factory: start_prometheus(metrics_port) -> Prometheus scraping 127.0.0.1:metrics_port."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        # JSON is YAML; it spares the test a YAML dependency.
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                        "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                        "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                    },
                    "scrape_configs": [
                        {
                            "job_name": "ganserve",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                        }
                    ],
                }
            )
        )
        (tmp_path / "tsdb").mkdir()
        listen = f"127.0.0.1:{_free_loopback_port()}"
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    prometheus_binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address={listen}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        processes.append(process)
        return Prometheus(process, f"http://{listen}", log)

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _send_requests(server: ServerThread) -> None:
    with generator_stub(server.target) as stub:
        for seed in range(OK_REQUESTS):
            stub.Generate(pb.GenerateRequest(seed=seed, class_label=3), timeout=30)
        for seed in range(INVALID_REQUESTS):
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(pb.GenerateRequest(seed=seed, class_label=42), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()


def test_prometheus_scrapes_request_counts_and_histograms(
    start_server: Callable[..., ServerThread],
    start_prometheus: Callable[[int], Prometheus],
) -> None:
    server = start_server()
    prometheus = start_prometheus(server.server.metrics_port)

    prometheus.wait_for(
        "the ganserve target to be up",
        lambda: [(t["labels"]["job"], t["health"], t["lastError"]) for t in prometheus.targets()],
        lambda targets: targets == [("ganserve", "up", "")],
    )
    assert prometheus.query('up{job="ganserve"}') == 1

    _send_requests(server)

    ok = 'sum(ganserve_requests_total{code="OK",method="Generate"})'
    invalid = 'sum(ganserve_requests_total{code="INVALID_ARGUMENT",method="Generate"})'
    # Counters are absolute, so a scrape after the requests shows exactly what was sent.
    prometheus.wait_for(
        f"{OK_REQUESTS} OK and {INVALID_REQUESTS} INVALID_ARGUMENT requests to be scraped",
        lambda: (prometheus.query(ok), prometheus.query(invalid)),
        lambda counts: counts == (OK_REQUESTS, INVALID_REQUESTS),
    )
    assert prometheus.query(ok) == OK_REQUESTS
    assert prometheus.query(invalid) == INVALID_REQUESTS
    assert (prometheus.query("sum(ganserve_batch_size_count)") or 0) > 0

    median = prometheus.query(
        "histogram_quantile(0.5, sum by (le) (ganserve_request_duration_seconds_bucket))"
    )
    assert median is not None and math.isfinite(median) and median > 0, median
    assert prometheus.query('up{job="ganserve"}') == 1
