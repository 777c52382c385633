"""gan-bench runs against a real server and reports sane, non-empty figures. No timing is
asserted: speed is published by `make bench`, not tested."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import pathlib
import time

import pytest
from click.testing import CliRunner

from conftest import ServerThread
from ganserve.bench import report
from ganserve.bench.cli import main
from ganserve.bench.compare import Results, _stage, triton
from ganserve.bench.engine import engine_throughput
from ganserve.bench.load import Windows, agree, measure
from ganserve.bench.reliability import QueueSampler
from ganserve.serve.errors import ModelLoadError

LOG = pathlib.Path("/dev/null")
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


def test_labels_say_how_the_load_was_made(server: ServerThread) -> None:
    """Runs with other settings used to write identical-looking labels."""
    result = bench("--target", server.target, "--rpc", "batch", "--items", "2", "--rate", "50")
    assert "ganserve digits batch(2) raw @50/s constant" in result.output


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
    assert 0 <= row["send_lag_p99_ms"] < math.inf


def test_unreachable_server_is_one_line(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "--target", "127.0.0.1:1", "--concurrency", "1", *QUICK]
    )
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "inf"], "Invalid value for '--rate': inf is not in the range 0<x<=1000000"),
        (["--rate", "nan"], "Invalid value for '--rate': nan is not a finite number"),
        (["--window", "inf"], "Invalid value for '--window'"),
        (["--concurrency", "1000000"], "concurrency levels must be in 1..65536"),
        (["--target", "127.0.0.1:99999"], "port 99999 is not in 1..65535"),
        (["--json", "/nonexistent/dir/out.json"], "folder /nonexistent/dir does not exist"),
        (["--plot", "/nonexistent/dir/out.png"], "folder /nonexistent/dir does not exist"),
        (["--plot", "out.xyz"], "out.xyz: end it in one of"),
        (["--metrics-url", "localhost:8000"], "'localhost:8000' is not an http:// or https://"),
        (["--json", "/proc/out.json"], "cannot write /proc/out.json: No such file"),
        (["--poisson", "--concurrency", "1"], "--poisson shapes the arrivals of --rate"),
        (["--items", "8"], "--items is the images of one GenerateBatch call: add --rpc batch"),
    ],
)
def test_settings_that_would_run_forever_or_fail_at_the_end_are_refused_first(
    args: list[str], message: str
) -> None:
    """Checked before any load is sent: no server is running here."""
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("soak", ["--rss-budget-mb", "nan"], "nan is not a finite number"),
        ("overload", ["--factor", "nan"], "nan is not a finite number"),
        ("soak", ["--out", "{file}/sub"], "is a file"),
        ("overload", ["--out", "{file}/sub"], "is a file"),
        ("compare", ["--out", "{file}"], "is a file"),
        ("compare", ["--triton-python", "{file}.missing"], "results.bin.missing is not a file"),
    ],
)
def test_reliability_and_compare_settings_are_refused_first(
    tmp_path: pathlib.Path, command: str, args: list[str], message: str
) -> None:
    file = tmp_path / "results.bin"
    file.write_bytes(b"")
    args = [a.format(file=file) for a in args]
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-classes", "0"], "--num-classes 0 does not fit model 'digits', which has 10"),
        (["--num-classes", "11"], "--num-classes 11 does not fit model 'digits'"),
        (["--rpc", "batch", "--items", "4096"], "--items 4096 is over model 'digits'"),
        (["--metrics-url", "http://127.0.0.1:1/metrics"], "cannot scrape metrics from http"),
        (["--metrics-url", "http://{target}/metrics"], "cannot scrape metrics from http"),
    ],
)
def test_settings_the_server_shows_to_be_wrong_are_one_line(
    server: ServerThread, args: list[str], message: str
) -> None:
    args = [a.format(target=server.target) for a in args]  # the gRPC port answers no HTTP
    result = CliRunner().invoke(
        main, ["run", "--target", server.target, "--concurrency", "1", *args, *QUICK]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert message in result.output


def test_a_run_where_no_call_succeeded_exits_1_after_writing(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    """Triton's protocol against ganserve: every call is UNIMPLEMENTED. The run used to exit 0
    with a table of zeros, which a script took for a result."""
    out = tmp_path / "failed.json"
    args = ["--server", "triton", "--model", "digits", "--concurrency", "1", "--json", str(out)]
    result = CliRunner().invoke(main, ["run", "--target", server.target, *args, *QUICK])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no call succeeded at triton digits c=1" in result.output
    (row,) = json.loads(out.read_text())["points"]
    assert row["requests_per_s"] == 0 and "UNIMPLEMENTED" in row["error_codes"]


def test_points_never_reuse_seeds_so_a_response_cache_cannot_answer_them() -> None:
    """Every point started again from call 0: against a server with its response cache on,
    a later point was answered from the cache (+34 % req/s in the review)."""
    seen: list[int] = []

    async def call(i: int) -> int:
        seen.append(i)
        await asyncio.sleep(0)
        return 1

    windows = Windows(warmup_s=0.02, window_s=0.02, max_windows=3)
    for _ in range(2):
        asyncio.run(measure(call, label="seeds", concurrency=2, windows=windows))
    assert len(seen) == len(set(seen)) > 0


@pytest.mark.parametrize(
    ("values", "stable"),
    [
        ([100.0, 105.0, 110.0], True),  # max / min = 1.10: perf_analyzer's limit, inclusive
        # Within 10 % of their mean ((max - min) / mean = 0.0998), but max / min = 1.105:
        # perf_analyzer keeps measuring, and so does gan-bench.
        ([100.0, 105.0, 110.5], False),
        ([0.0, 0.0, 0.0], False),  # windows with no successful call
        ([math.inf, 1.0, 1.0], False),  # a window whose p99 had no call
        ([math.inf, math.inf, math.inf], False),
    ],
)
def test_windows_are_stable_by_perf_analyzers_max_over_min_rule(
    values: list[float], stable: bool
) -> None:
    assert agree(values, 0.10) is stable


def test_a_point_of_only_failures_is_not_stable_and_writes_valid_json(
    tmp_path: pathlib.Path,
) -> None:
    """Stability is judged on the calls the point reports (OK ones): a server that refuses
    everything at a steady pace once looked 'stable', and its NaN latencies made invalid JSON."""

    async def call(i: int) -> int:
        await asyncio.sleep(0.001)
        raise RuntimeError("refused")

    point = asyncio.run(
        measure(
            call,
            label="all refused",
            concurrency=2,
            windows=Windows(warmup_s=0.05, window_s=0.1, max_windows=3),
        )
    )
    assert not point.stable and point.requests_per_s == 0 and point.errors["RuntimeError"] > 0
    report.write_json([point], tmp_path / "p.json")
    row = json.loads((tmp_path / "p.json").read_text())["points"][0]  # strict JSON: no NaN
    assert row["p99_ms"] is None


def test_failed_calls_are_counted_by_status_not_raised() -> None:
    class Refused(Exception):
        def code(self):
            return type("Code", (), {"name": "RESOURCE_EXHAUSTED"})()

        def details(self):
            return "queue is full"

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
    table = report.table([point])
    n = point.errors["RESOURCE_EXHAUSTED"]
    assert f"half refused: {n} RESOURCE_EXHAUSTED (first: queue is full)" in table


def test_a_fixed_rate_reports_how_late_the_client_started_calls() -> None:
    """Open-loop load is only as good as the client's timing: when the client falls behind
    (here each call blocks its event loop for 10 ms while calls are due every 5 ms), its
    send lag says so, while the calls themselves still take 10 ms."""
    blocked_s = 0.010

    async def call(i: int) -> int:
        time.sleep(blocked_s)  # blocks the loop: this client cannot keep up
        return 1

    point = asyncio.run(
        measure(
            call,
            label="late client",
            rate=200,
            windows=Windows(warmup_s=0.05, window_s=0.2, max_windows=3),
        )
    )
    assert point.mode == "rate" and point.requests_per_s > 0
    assert point.send_lag_ms is not None and point.send_lag_ms > 2 * blocked_s * 1e3
    assert point.latency_ms["p50"] >= blocked_s * 1e3
    assert "send_lag_p99_ms" in point.row()


def test_the_gpu_protocol_runs_end_to_end_with_the_cpu_standing_in(tmp_path: pathlib.Path) -> None:
    """`gan-bench compare --backend <gpu>` is `run_accelerator`. No GPU here, so the protocol
    runs on ONNX Runtime CPU with the tiny model: every series and target must come out."""
    from ganserve.bench.compare import accelerator_targets, run_accelerator
    from ganserve.bench.models import TINY
    from ganserve.serve.backends import Backend

    results = run_accelerator(
        tmp_path,
        backend=Backend.ONNXRUNTIME_CPU,
        windows=Windows(warmup_s=0.1, window_s=0.2, max_windows=3),
        concurrency=[1, 64],
        instances=1,
        log=lambda point: None,
        model=TINY,
        engine_seconds=0.05,
    )
    assert sorted(results.engine[TINY]) == [1, 8, 16, 32, 64]
    assert results.parallel[TINY]["images_per_s"] > 0
    name = f"ganserve {TINY} onnxruntime-cpu"
    labels = {point.label for point in results.points}
    assert labels == {
        "grpc round trip (health) c=1",
        f"{name} Generate raw c=1",
        f"{name} Generate raw c=64",
        *(f"{name} GenerateBatch(64) raw c={n}" for n in (1, 2, 4)),
        f"{name} batching off c=1",
        f"{name} batching off c=64",
    }
    for point in results.points:
        if "health" not in point.label:
            sane(point.row())
    targets = {t.name: t for t in accelerator_targets(results, TINY)}
    assert sorted(targets) == [
        "Generate c=1 p50, ms",
        "Generate c=64 p99, ms",
        "GenerateBatch(64) img/s vs engine best",
        "batching on vs off, c=64 img/s",
    ]
    assert all(math.isfinite(t.value) and t.value > 0 for t in targets.values())


def test_a_gpu_backend_that_cannot_run_here_is_one_line() -> None:
    from ganserve.bench.compare import accelerator_unavailable
    from ganserve.serve.backends import Backend

    if accelerator_unavailable(Backend.ONNXRUNTIME_CUDA) is None:
        pytest.skip("this machine has ONNX Runtime CUDA")
    result = CliRunner().invoke(main, ["compare", "--backend", "onnxruntime-cuda"])
    assert result.exit_code != 0
    assert "--backend onnxruntime-cuda cannot run here" in result.output
    assert "Traceback" not in result.output


def test_engine_alone_times_the_version_asked_for() -> None:
    repo = pathlib.Path(__file__).resolve().parents[2] / "models"
    for version in (None, 1):
        rates = engine_throughput(repo, "digits", [1], seconds=0.1, version=version)
        assert rates[1]["images_per_s"] > 0
    with pytest.raises(ModelLoadError, match="digits/9"):
        engine_throughput(repo, "digits", [1], seconds=0.1, version=9)


def test_a_queue_sampler_that_cannot_scrape_fails_the_overload_verdict() -> None:
    """One failed scrape ended the sampler's thread unseen, and the overload verdict (the
    queue never passed its bound) passed on zero samples."""
    with QueueSampler("http://127.0.0.1:1/metrics", every_s=0.01) as sampler:
        time.sleep(0.2)
    assert sampler.samples == 0
    assert sampler.error is not None and "cannot scrape metrics from" in sampler.error


def test_a_server_that_does_not_start_fails_its_stage_and_keeps_the_rest() -> None:
    """`gan-bench compare` lost every figure to a traceback when one server (a broken Triton
    environment, say) did not start after minutes of measuring."""
    results = Results()
    with _stage(results), triton(pathlib.Path("/bin/false"), pathlib.Path("."), LOG, 8, 1):
        pytest.fail("the server cannot have started")
    with _stage(results):
        results.notes.append("the next stage ran")
    assert results.failed == ["Triton exited with code 1 before it was ready"]
    assert results.notes == ["the next stage ran"]
