"""gan-bench runs against a real server and reports sane, non-empty figures. No timing is
asserted: speed is published by `make bench`, not tested."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import pathlib

import pytest
from click.testing import CliRunner

from conftest import ServerThread
from ganserve.bench import report
from ganserve.bench.cli import main
from ganserve.bench.load import Windows, measure

QUICK = ["--warmup", "0.2", "--window", "0.3", "--max-windows", "3"]


@pytest.fixture(scope="module")
def server(start_server_module) -> ServerThread:
    return start_server_module()


def bench(*args: str) -> dict:
    result = CliRunner().invoke(main, ["run", *args, *QUICK])
    assert result.exit_code == 0, result.output
    return result


def sane(row: dict) -> None:
    assert row["requests_per_s"] > 0 and row["images_per_s"] > 0
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["errors"] == 0 and row["client_cpu"] >= 0


def test_concurrency_sweep_writes_table_json_csv_and_plot(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    metrics = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "png")}
    result = bench(
        "--target",
        server.target,
        "--concurrency",
        "1,4",
        "--metrics-url",
        metrics,
        "--json",
        str(paths["json"]),
        "--csv",
        str(paths["csv"]),
        "--plot",
        str(paths["png"]),
    )
    assert "req/s" in result.output and "c=4" in result.output
    rows = json.loads(paths["json"].read_text())["points"]
    assert [r["load"] for r in rows] == [1, 4]
    for row in rows:
        sane(row)
        assert row["server_mean_batch"] >= 1 and row["server_mean_queue_ms"] >= 0
    with paths["csv"].open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_generate_batch_counts_images_per_call(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "batch.json"
    bench(
        "--target",
        server.target,
        "--rpc",
        "batch",
        "--items",
        "8",
        "--encoding",
        "png",
        "--concurrency",
        "2",
        "--json",
        str(out),
    )
    (row,) = json.loads(out.read_text())["points"]
    sane(row)
    assert row["images_per_s"] == pytest.approx(8 * row["requests_per_s"], rel=0.01)


def test_poisson_rate_mode_reports_a_point(server: ServerThread, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "rate.json"
    bench("--target", server.target, "--rate", "100", "--poisson", "--json", str(out))
    (row,) = json.loads(out.read_text())["points"]
    sane(row)
    assert row["mode"] == "rate" and row["load"] == 100


def test_unreachable_server_is_one_line(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "--target", "127.0.0.1:1", "--concurrency", "1", *QUICK]
    )
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output
    assert "Traceback" not in result.output


def test_failed_calls_are_counted_by_status_not_raised() -> None:
    class Refused(Exception):
        def code(self):
            return type("Code", (), {"name": "RESOURCE_EXHAUSTED"})()

    async def call(i: int) -> int:
        await asyncio.sleep(0.001)
        if i % 2:
            raise Refused
        return 1

    point = asyncio.run(
        measure(
            call,
            label="half refused",
            concurrency=2,
            windows=Windows(warmup_s=0.1, window_s=0.2, max_windows=3),
        )
    )
    assert point.errors["RESOURCE_EXHAUSTED"] > 0 and point.requests_per_s > 0
    assert "half refused" in report.table([point])
