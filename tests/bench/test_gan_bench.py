"""gan-bench runs against a real server and reports sane, non-empty figures. No timing is
asserted: speed is published by `make bench`, not tested."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import http.server
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import click.testing
import grpc
import pytest
from click.testing import CliRunner

from conftest import ServerThread
from ganserve.bench import report, targets
from ganserve.bench.cli import main
from ganserve.bench.compare import Results, _stage, targets_met, triton
from ganserve.bench.engine import best_window, engine_throughput, parallel_engine_throughput
from ganserve.bench.load import (
    NO_REPLY,
    Point,
    Windows,
    agree,
    keeping_up,
    measure,
    server_figures_between,
)
from ganserve.bench.reliability import QueueSampler, overload_passed, soak_passed
from ganserve.serve.errors import ModelLoadError

LOG = pathlib.Path("/dev/null")
BUNDLED = pathlib.Path(__file__).resolve().parents[2] / "models"
BIN = pathlib.Path(sys.executable).parent
QUICK = ["--warmup", "0.2", "--window", "0.3", "--max-windows", "3"]


@pytest.fixture(scope="module")
def server(start_server_module) -> ServerThread:
    return start_server_module()


def bench(*args: str) -> dict:
    result = CliRunner().invoke(main, ["run", *args, *QUICK])
    assert result.exit_code == 0, result.output
    return result


def sane(row: dict) -> None:
    """A point's row (0 errors) or its JSON record (errors by code: none)."""
    assert row["requests_per_s"] > 0 and row["images_per_s"] > 0
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert not row["errors"]


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
    written = json.loads(paths["json"].read_text())
    rows = written["points"]
    assert [r["load"] for r in rows] == [1, 4]
    for row in rows:
        sane(row)
        # The model measured is filtered on by its name, asked of the server: a wrong name
        # (or none) would leave these out.
        assert row["server_mean_batch"] >= 1 and row["server_mean_queue_ms"] >= 0
    # What made the points travels with them, as with `compare`.
    assert written["run"]["target"] == server.target
    assert written["run"]["concurrency"] == [1, 4] and written["run"]["rpc"] == "generate"
    assert written["run"]["windows"]["window_s"] == 0.3
    assert written["machine"]["cpus"] == str(len(os.sched_getaffinity(0)))
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


def test_a_run_that_fails_after_some_points_writes_them(
    server: ServerThread, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later point's failure (here the metrics endpoint going away) lost the points already
    measured; only Ctrl-C wrote them."""
    from ganserve.bench import cli

    measured: list[Point] = []

    async def second_fails(call, **settings) -> Point:
        if measured:
            raise RuntimeError("cannot scrape metrics from http://127.0.0.1:1/metrics: refused")
        measured.append(await measure(call, **settings))
        return measured[-1]

    monkeypatch.setattr(cli, "measure", second_fails)
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "png")}
    args = ["--concurrency", "1,4", *(f"--{k}={v}" for k, v in paths.items())]
    args = [a.replace("--png", "--plot") for a in args]
    result = CliRunner().invoke(main, ["run", "--target", server.target, *args, *QUICK])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Error: cannot scrape metrics from http://127.0.0.1:1/metrics" in result.output
    assert "failed: the 1 point(s) measured are written" in result.output
    (row,) = json.loads(paths["json"].read_text())["points"]
    assert row["label"] == "ganserve digits generate raw c=1" and row["requests_per_s"] > 0
    with paths["csv"].open() as f:
        assert len(list(csv.DictReader(f))) == 1
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


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
        (
            ["--server", "triton", "--model", "digits", "--encoding", "png"],
            "--encoding png: Triton answers with raw uint8 tensors",
        ),
    ],
)
def test_settings_that_would_run_forever_or_fail_at_the_end_are_refused_first(
    args: list[str], message: str
) -> None:
    """Checked before any load is sent: no server is running here."""
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output


def test_a_triton_python_without_pytriton_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It failed minutes into the run, as "Triton exited with code 1 before it was ready"."""
    from ganserve.bench import compare as compare_module

    monkeypatch.setattr(compare_module, "run_compare", lambda *a, **k: pytest.fail("ran"))
    result = CliRunner().invoke(main, ["compare", "--triton-python", sys.executable])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert f"{sys.executable} cannot import pytriton (ModuleNotFoundError" in result.output


def test_a_triton_python_named_without_a_folder_is_the_file_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """A bare name was looked up on PATH: "No such file or directory" for a file that exists."""
    from ganserve.bench import compare as compare_module

    monkeypatch.setattr(compare_module, "run_compare", lambda *a, **k: pytest.fail("ran"))
    monkeypatch.chdir(tmp_path)
    pathlib.Path("python").write_text("#!/bin/sh\necho no pytriton here >&2\nexit 3\n")
    pathlib.Path("python").chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    result = CliRunner().invoke(main, ["compare", "--triton-python", "python"])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'python'} cannot import pytriton (no pytriton here)" in result.output


def test_a_reliability_run_whose_server_does_not_start_is_one_line_naming_its_log(
    tmp_path: pathlib.Path,
) -> None:
    """A broken model under --out made a RuntimeError traceback; the cause was only in the
    server's log, which nothing named."""
    version = tmp_path / "models" / "dcgan64" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"not an ONNX model")
    result = CliRunner().invoke(main, ["overload", "--calls", "100", "--out", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    log = tmp_path / "overload-server.log"
    assert line.startswith("Error: ganserve exited with code ") and f"see {log}" in line


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


class FakeTriton:
    """A real gRPC server answering Triton's ServerReady and ModelReady (ready: one model, as
    Triton says) and failing every ModelInfer; counts the ModelInfer calls. No Triton here:
    PyTriton lives in its own environment, which `make bench` builds."""

    def __init__(self, model: str = "digits") -> None:
        from ganserve.kserve.v2 import predict_pb2

        self.infers = 0

        def infer(request, context):
            self.infers += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'seed'")

        handlers = {
            "ServerReady": grpc.unary_unary_rpc_method_handler(
                lambda request, context: predict_pb2.ServerReadyResponse(ready=True),
                request_deserializer=predict_pb2.ServerReadyRequest.FromString,
                response_serializer=predict_pb2.ServerReadyResponse.SerializeToString,
            ),
            "ModelReady": grpc.unary_unary_rpc_method_handler(
                lambda request, context: targets.ModelReadyResponse(ready=request.name == model),
                request_deserializer=targets.ModelReadyRequest.FromString,
                response_serializer=targets.ModelReadyResponse.SerializeToString,
            ),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                infer,
                request_deserializer=predict_pb2.ModelInferRequest.FromString,
                response_serializer=predict_pb2.ModelInferResponse.SerializeToString,
            ),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),)
        )
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


@pytest.fixture
def fake_triton() -> Iterator[FakeTriton]:
    fake = FakeTriton()
    yield fake
    fake.server.stop(None)


def test_a_run_where_no_call_succeeded_exits_1_after_writing(
    fake_triton: FakeTriton, tmp_path: pathlib.Path
) -> None:
    """A Triton whose every call fails. The run used to exit 0 with a table of zeros, which a
    script took for a result. The JSON carries the errors by status code, with the first
    call's details; the CSV keeps its flat columns."""
    out, table = tmp_path / "failed.json", tmp_path / "failed.csv"
    args = ["--server", "triton", "--model", "digits", "--concurrency", "1"]
    args += ["--json", str(out), "--csv", str(table)]
    result = CliRunner().invoke(main, ["run", "--target", fake_triton.target, *args, *QUICK])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no call succeeded at triton digits c=1" in result.output
    (row,) = json.loads(out.read_text())["points"]
    assert row["requests_per_s"] == 0 and list(row["errors"]) == ["INVALID_ARGUMENT"]
    assert row["errors"]["INVALID_ARGUMENT"] > 0
    assert row["error_details"] == {"INVALID_ARGUMENT": "unexpected shape for input 'seed'"}
    with table.open() as f:
        (flat,) = csv.DictReader(f)
    assert flat["error_codes"] == f"INVALID_ARGUMENT={row['errors']['INVALID_ARGUMENT']}"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("nope", "model 'nope' is not ready on Triton at {target}: check --model"),
        ("digits", None),
    ],
)
def test_triton_and_its_model_are_checked_ready_before_any_load(
    fake_triton: FakeTriton, model: str, message: str | None
) -> None:
    """A wrong --model burned ~17 s per concurrency level of failing calls before."""
    args = ["run", "--target", fake_triton.target, "--server", "triton", "--model", model]
    result = CliRunner().invoke(main, [*args, "--concurrency", "1", *QUICK])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    if message is None:  # ready: the load runs (and fails, as this Triton fails every call)
        assert fake_triton.infers > 0
    else:
        assert message.format(target=fake_triton.target) in result.output
        assert fake_triton.infers == 0


def test_ganserve_measured_as_triton_is_told_apart(server: ServerThread) -> None:
    args = ["run", "--target", server.target, "--server", "triton", "--model", "digits"]
    result = CliRunner().invoke(main, [*args, "--concurrency", "1", *QUICK])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "does not serve Triton's GRPCInferenceService" in result.output
    assert "no call succeeded" not in result.output  # refused before any load


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


def test_a_client_that_cannot_keep_up_with_a_fixed_rate_marks_its_point() -> None:
    """Offered 1870/s, sent 1055/s with a send lag p99 of 1.2 s, and reported as any other
    point. Here each call blocks the client's event loop for 10 ms while calls are due every
    5 ms: it can send at most 100 of the 200 calls/s, whatever the machine's speed."""

    async def call(i: int) -> int:
        time.sleep(0.010)  # blocks the loop: this client cannot keep up
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
    assert point.send_lag_ms is not None and point.send_lag_ms >= 0
    assert "send_lag_p99_ms" in point.row()
    assert not point.stable
    assert any(
        n.startswith("fell behind: sent") and "of the 200/s offered" in n for n in point.notes
    )
    assert "late client: fell behind: sent" in report.table([point])


@pytest.mark.parametrize(
    ("offered", "sent", "lag_ms", "p99_ms", "behind"),
    [
        # The review's Triton point: 1055 of 1870/s sent, lag p99 1.2 s, p99 458 ms.
        (1870.0, 1055.0, 1203.0, 458.0, ["sent 1055 calls/s of the 1870/s", "send lag p99"]),
        (1870.0, 1844.0, 4.3, 24.1, []),  # the same run's ganserve point: kept up
        (1000.0, 900.0, 2.0, 5.0, []),  # 90 %: kept up, as perf_analyzer's limit
        (1000.0, 899.0, 2.0, 5.0, ["sent 899 calls/s"]),
        (1000.0, 1000.0, 6.0, 5.0, ["send lag p99 6.00 ms is above the p99 latency 5.00 ms"]),
        (1000.0, 1000.0, 6.0, math.nan, []),  # no successful call: no p99 to compare with
    ],
)
def test_a_fixed_rate_point_fell_behind_by_calls_sent_or_send_lag(
    offered: float, sent: float, lag_ms: float, p99_ms: float, behind: list[str]
) -> None:
    notes = keeping_up(offered, sent, lag_ms, p99_ms)
    assert len(notes) == len(behind)
    for note, part in zip(notes, behind, strict=True):
        assert note.startswith("fell behind: ") and part in note


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stable_windows": 0}, "Windows.stable_windows is 0: give 1 or more"),
        ({"window_s": -1.0}, "Windows.window_s is -1.0"),
        ({"window_s": 0.0}, "Windows.window_s is 0.0"),
        ({"warmup_s": math.nan}, "Windows.warmup_s is nan"),
        ({"tolerance": -0.1}, "Windows.tolerance is -0.1"),
        ({"max_windows": 2}, "Windows.max_windows is 2: give at least stable_windows (3)"),
    ],
)
def test_windows_that_cannot_measure_a_point_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Windows(**settings)


def test_server_figures_treat_a_counter_that_went_down_as_reset() -> None:
    """A restarted server's counters start again from 0: after - before gave a mean batch of
    -34. Prometheus' rule: a counter that went down counts from 0 since."""
    figures, notes = server_figures_between(
        {"batch_sum": 2000, "batch_count": 100, "queue_sum": 5.0, "queue_count": 100},
        {"batch_sum": 300, "batch_count": 150, "queue_sum": 6.0, "queue_count": 150},
    )
    assert figures["mean_batch"] == pytest.approx(2.0)  # 300 / 150: the histogram reset
    assert figures["mean_queue_ms"] == pytest.approx(20.0)  # (6 - 5) / 50: it did not
    assert len(notes) == 1 and "mean_batch" in notes[0] and "reset" in notes[0]
    figures, notes = server_figures_between(
        {"batch_sum": 300, "batch_count": 150}, {"batch_sum": 500, "batch_count": 200}
    )
    assert figures == {"mean_batch": pytest.approx(4.0)} and notes == []


def test_the_table_gives_client_cpu_to_the_hundredth() -> None:
    row = report.table([_point("cpu", client_cpu=0.4)]).splitlines()[1]
    assert " 0.40 " in row


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
    with QueueSampler("http://127.0.0.1:1/metrics", model="digits", every_s=0.01) as sampler:
        time.sleep(0.2)
    assert sampler.samples == 0
    assert sampler.error is not None and "cannot scrape metrics from" in sampler.error
    verdict = {"queue_size": 64, "max_depth": sampler.max_depth, "samples": sampler.samples}
    assert not overload_passed({}, **verdict, sampling_error=sampler.error)


# A run that passes the overload verdict, then each way to fail it.
SOUND_OVERLOAD = {"queue_size": 64, "max_depth": 64.0, "samples": 50, "sampling_error": None}


@pytest.mark.parametrize(
    ("undocumented", "change"),
    [
        ({"DEADLINE_EXCEEDED": 3}, {}),
        ({}, {"sampling_error": "cannot scrape metrics from http://127.0.0.1:1/metrics"}),
        ({}, {"samples": 0}),
        ({}, {"max_depth": 65.0}),
    ],
    ids=["undocumented-code", "scrape-failed", "no-samples", "queue-over-its-size"],
)
def test_the_overload_verdict_fails_on_anything_it_cannot_vouch_for(
    undocumented: dict[str, int], change: dict[str, object]
) -> None:
    assert overload_passed({}, **SOUND_OVERLOAD)  # a full queue is within its bound
    assert not overload_passed(undocumented, **(SOUND_OVERLOAD | change))


# A soak run that passes its verdict, then each way to fail it.
SOUND_SOAK = {"ended": 6000, "calls": 6000, "growth_mb": 50.0, "budget_mb": 50.0}


@pytest.mark.parametrize(
    ("undocumented", "change"),
    [
        ({"INTERNAL": 1}, {}),
        ({}, {"ended": 5999}),
        ({}, {"growth_mb": 50.1}),
    ],
    ids=["undocumented-code", "a-call-never-ended", "memory-over-budget"],
)
def test_the_soak_verdict_fails_on_anything_it_cannot_vouch_for(
    undocumented: dict[str, int], change: dict[str, object]
) -> None:
    assert soak_passed({}, **SOUND_SOAK)  # growth up to the budget itself is within it
    assert not soak_passed(undocumented, **(SOUND_SOAK | change))


def test_a_server_that_does_not_start_fails_its_stage_and_keeps_the_rest(
    tmp_path: pathlib.Path,
) -> None:
    """`gan-bench compare` lost every figure to a traceback when one server (a broken Triton
    environment, say) did not start after minutes of measuring. The message names the log,
    and the server's own last line there, not an earlier server's."""
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pytriton'\"\nexit 1\n"
    )
    python.chmod(0o755)
    log = tmp_path / "servers.log"
    log.write_text("an earlier server's last line\n")
    results = Results()
    with _stage(results), triton(python, pathlib.Path("."), log, 8, 1):
        pytest.fail("the server cannot have started")
    with _stage(results):
        results.notes.append("the next stage ran")
    assert results.failed == [
        f"Triton exited with code 1 before it was ready: see {log} "
        "(last line: ModuleNotFoundError: No module named 'pytriton')"
    ]
    assert results.notes == ["the next stage ran"]


def _point(label: str, **figures: float) -> Point:
    latency = {k: figures.get(k, 1.0) for k in ("p50", "p90", "p95", "p99", "max")}
    rps = figures.get("requests_per_s", 100.0)
    cpu = figures.get("client_cpu", 0.1)
    return Point(label, "concurrency", 64, rps, rps, latency, {}, True, 3, cpu)


def test_targets_from_a_stage_where_no_call_succeeded_are_unmeasured_not_a_crash() -> None:
    """Triton answering nothing (0 req/s, no p99) divided by zero and lost a whole `compare`
    run's files at the very end."""
    results = Results(
        points=[
            _point("ganserve Generate raw c=64", requests_per_s=3000.0, p99=20.0),
            _point("triton ModelInfer c=64", requests_per_s=0.0, p99=math.nan),
            _point("ganserve batching off c=64", requests_per_s=1000.0),
        ],
        engine={"digits": {1: {"images_per_s": 8000.0, "median_ms": 0.12}}},
        parallel={"digits": {"images_per_s": 16000.0}},
    )
    met = {t.name: t for t in targets_met(results)}
    vs_triton = met["Generate c=64 req/s vs Triton"]
    assert math.isnan(vs_triton.value) and vs_triton.met is None
    assert met["Generate c=64 p99 vs Triton"].met is None
    assert met["batching on vs off, c=64 img/s"].value == pytest.approx(3.0)
    results.points[1] = _point("triton ModelInfer c=64", requests_per_s=1500.0, p99=50.0)
    met = {t.name: t for t in targets_met(results)}
    assert met["Generate c=64 req/s vs Triton"].met is True  # 2.0x: the goal is inclusive
    assert met["Generate c=64 p99 vs Triton"].met is True  # 0.4x


def test_a_server_above_its_engine_alone_is_not_judged_against_that_ceiling() -> None:
    """A ceiling measured low on a busy machine gave a server 1.11x its own engine, marked met.
    The server cannot beat the engine it calls: the ceiling is what was wrong."""
    results = Results(
        points=[_point("ganserve GenerateBatch(64) raw c=2", requests_per_s=150.0)],
        engine={"digits": {64: {"images_per_s": 135.0, "median_ms": 470.0}}},
    )
    (batch,) = targets_met(results)
    assert batch.value == pytest.approx(150 / 135) and batch.met is None
    assert batch.note.startswith("ceiling invalid: 150 img/s through the server")
    results.engine["digits"][64]["images_per_s"] = 160.0
    (batch,) = targets_met(results)
    assert batch.met is True and batch.note == ""  # 0.94


@pytest.mark.parametrize(
    ("rates", "best", "windows", "stable"),
    [
        ([40.0, 100.0, 98.0, 101.0], 101.0, 4, True),  # a busy first window is not the ceiling
        ([100.0, 99.0, 101.0, 5.0], 101.0, 3, True),  # stops once the last 3 agree
        ([10.0, 50.0, 100.0, 20.0, 60.0, 30.0, 99.0], 100.0, 6, False),  # gives up at 6
    ],
)
def test_the_engine_ceiling_is_the_best_of_windows_until_they_agree(
    rates: list[float], best: float, windows: int, stable: bool
) -> None:
    samples = iter(rates)
    figures = best_window(lambda: (next(samples), 1.0))
    assert figures["images_per_s"] == best
    assert figures["windows"] == windows and figures["stable"] is stable


def test_compare_measures_the_engine_alone_in_several_windows() -> None:
    from ganserve.bench.compare import CEILING

    (figures,) = engine_throughput(BUNDLED, "digits", [4], seconds=0.02, **CEILING).values()
    assert figures["windows"] >= 3 and figures["images_per_s"] > 0
    parallel = parallel_engine_throughput(BUNDLED, "digits", 4, 2, seconds=0.02, **CEILING)
    assert parallel["windows"] >= 3 and parallel["images_per_s"] > 0


@pytest.fixture
def quick_compare(
    server: ServerThread, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., click.testing.Result]:
    """`gan-bench compare` in seconds: every ganserve stage is the test server (one digits
    model), Triton does not start, the digits engine alone is a stand-in of ``digits_ceiling``
    images/s, and the dcgan64 model is a broken file (the engine stage loads it for real)."""
    from ganserve.bench import compare as compare_module
    from ganserve.bench.compare import Server, ServerStartError
    from ganserve.bench.models import DCGAN64

    real_engine = compare_module.engine_throughput

    def ensure_model(repo: pathlib.Path, name: str, **kwargs: object) -> pathlib.Path:
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        metadata = json.loads((BUNDLED / "digits" / "1" / "metadata.json").read_text())
        (version / "metadata.json").write_text(json.dumps({**metadata, "name": name}))
        (version / "model.onnx").write_bytes(b"not an ONNX model")
        return repo

    def engine(repo: pathlib.Path, name: str, sizes: list[int], **kwargs: object) -> dict:
        if name == DCGAN64:
            return real_engine(repo, name, sizes, **kwargs)
        return {64: {"images_per_s": ceiling["digits"], "median_ms": 1.0, "threads": 1}}

    @contextlib.contextmanager
    def ganserve(*args: object, **kwargs: object) -> Iterator[Server]:
        yield Server(server.target, f"http://127.0.0.1:{server.server.metrics_port}/metrics", None)

    @contextlib.contextmanager
    def triton(*args: object, **kwargs: object) -> Iterator[Server]:
        raise ServerStartError("Triton exited with code 1 before it was ready: see servers.log")
        yield  # a generator, as a context manager must be

    ceiling = {"digits": 1e9}
    monkeypatch.setattr(compare_module, "ensure_model", ensure_model)
    monkeypatch.setattr(compare_module, "engine_throughput", engine)
    monkeypatch.setattr(compare_module, "parallel_engine_throughput", lambda *a, **k: {})
    monkeypatch.setattr(compare_module, "ganserve", ganserve)
    monkeypatch.setattr(compare_module, "triton", triton)
    python = tmp_path / "python"  # a Python that imports pytriton, as far as gan-bench asks
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)

    def run(*args: str, digits_ceiling: float = 1e9) -> click.testing.Result:
        ceiling["digits"] = digits_ceiling
        out = ["--out", str(tmp_path / "out"), "--triton-python", str(python)]
        windows = ["--warmup", "0.05", "--window", "0.1", "--max-windows", "3"]
        return CliRunner().invoke(main, ["compare", *out, *windows, *args])

    return run


def test_a_compare_whose_model_the_engine_cannot_load_fails_that_stage_and_writes(
    quick_compare: Callable[..., click.testing.Result], tmp_path: pathlib.Path
) -> None:
    """A broken model made the engine-alone stage raise, a traceback that lost the run."""
    result = quick_compare("--concurrency", "1,64")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    failed = written["failed"]
    assert any(f.startswith("engine alone, dcgan64: ") for f in failed), failed
    assert any(f.startswith("Triton exited") for f in failed), failed
    assert "ganserve dcgan64 RGB Generate raw c=64" in [p["label"] for p in written["points"]]
    assert "part of the run failed: engine alone, dcgan64: " in result.output
    # Every level the targets need was measured: no note says otherwise.
    assert not [n for n in written["notes"] if "not judged" in n], written["notes"]


def test_a_compare_says_which_targets_its_levels_leave_out_and_where_its_rate_came_from(
    quick_compare: Callable[..., click.testing.Result], tmp_path: pathlib.Path
) -> None:
    """--concurrency 8: the Poisson rate fell back to 500/s unseen and the targets table came
    out (nearly) empty with no word why; a low ceiling was judged as met."""
    result = quick_compare("--concurrency", "8", digits_ceiling=1.0)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    notes = written["notes"]
    assert "--concurrency 8 has no 1: the c=1 targets" in " ".join(notes)
    assert "--concurrency 8 has no 64: the c=64 targets" in " ".join(notes)
    assert any(n.startswith("Poisson rate 500/s: a fixed fallback") for n in notes), notes
    assert "ganserve Generate raw @500/s poisson" in [p["label"] for p in written["points"]]
    (batch,) = [t for t in written["targets"] if t["name"].startswith("GenerateBatch(64)")]
    assert batch["met"] is None and batch["note"].startswith("ceiling invalid")
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| >= 0.85 | not judged |" in summary and "ceiling invalid" in summary
    assert result.exit_code == 1  # Triton's stage failed, as the fixture has it


def test_the_gpu_protocol_says_which_targets_its_levels_leave_out(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server is started here: only the notes are under test."""
    from ganserve.bench import compare as compare_module
    from ganserve.bench.compare import ServerStartError, run_accelerator
    from ganserve.serve.backends import Backend

    @contextlib.contextmanager
    def no_server(*args: object, **kwargs: object) -> Iterator[None]:
        raise ServerStartError("ganserve exited with code 1 before it was ready: see the log")
        yield  # a generator, as a context manager must be

    monkeypatch.setattr(compare_module, "ensure_model", lambda *a, **k: BUNDLED)
    monkeypatch.setattr(compare_module, "engine_throughput", lambda *a, **k: {})
    monkeypatch.setattr(compare_module, "parallel_engine_throughput", lambda *a, **k: {})
    monkeypatch.setattr(compare_module, "ganserve", no_server)
    results = run_accelerator(
        tmp_path,
        backend=Backend.ONNXRUNTIME_CPU,
        windows=Windows(warmup_s=0.05, window_s=0.05, max_windows=3),
        concurrency=[1],
        instances=1,
        log=lambda point: None,
        model="digits",
    )
    assert results.notes == [
        "--concurrency 1 has no 64: the c=64 targets (p99, batching on vs off) not judged"
    ]
    assert len(results.failed) == 2  # both servers' stages, each recorded


def test_a_compare_stopped_part_way_writes_what_it_measured(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C or SIGTERM after minutes of `compare` used to write nothing at all."""
    from ganserve.bench import compare as compare_module

    def stopped_after_one_point(out: pathlib.Path, *, results: Results, **settings) -> None:
        results.engine["digits"] = {1: {"images_per_s": 8000.0, "median_ms": 0.12, "threads": 1}}
        results.points.append(_point("ganserve Generate raw c=1", requests_per_s=700.0))
        raise KeyboardInterrupt  # what Ctrl-C, or SIGTERM via _stop_like_ctrl_c, raises

    monkeypatch.setattr(compare_module, "run_compare", stopped_after_one_point)
    result = CliRunner().invoke(main, ["compare", "--out", str(tmp_path)])
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert f"stopped: what was measured is written to {tmp_path}/*.partial.*" in result.output
    written = json.loads((tmp_path / "results.partial.json").read_text())
    assert [row["label"] for row in written["points"]] == ["ganserve Generate raw c=1"]
    assert written["failed"] == ["stopped by SIGINT before the run ended"]
    assert "ganserve Generate raw c=1" in (tmp_path / "summary.partial.md").read_text()
    assert (tmp_path / "results.partial.csv").is_file()
    assert (tmp_path / "latency.partial.png").is_file()
    assert not (tmp_path / "results.json").exists()  # a finished run's files are left alone


def test_reliability_figures_with_nothing_measured_are_strict_json(tmp_path: pathlib.Path) -> None:
    """overload.json held a bare NaN (no call shed, so no shed latency): invalid JSON."""
    report.dump_json({"shed_latency_ms": {50: math.nan, 99: math.inf}}, tmp_path / "o.json")
    assert json.loads((tmp_path / "o.json").read_text()) == {
        "shed_latency_ms": {"50": None, "99": None}
    }


def test_calls_a_hung_server_never_answers_are_counted_as_no_reply() -> None:
    """A stopped server made a point of 0 req/s and no errors at all."""

    async def call(i: int) -> int:
        await asyncio.Event().wait()  # never answered
        return 1

    point = asyncio.run(
        measure(call, label="hung", concurrency=3, windows=Windows(warmup_s=0.05, window_s=0.05))
    )
    assert point.requests_per_s == 0 and point.errors == {NO_REPLY: 3}
    assert "no reply" in point.error_details[NO_REPLY]


def test_calls_slower_than_a_window_but_answered_are_not_no_reply() -> None:
    async def call(i: int) -> int:
        await asyncio.sleep(0.03)
        return 1

    point = asyncio.run(
        measure(call, label="slow", concurrency=4, windows=Windows(warmup_s=0.05, window_s=0.1))
    )
    assert NO_REPLY not in point.errors and point.requests_per_s > 0


@pytest.fixture
def http_page(tmp_path: pathlib.Path) -> Iterator[Callable[[str], str]]:
    """Serve a text as /metrics on loopback; yields page(text) -> its URL."""
    body = {"text": ""}

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body["text"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def page(text: str) -> str:
        body["text"] = text
        return f"http://127.0.0.1:{httpd.server_port}/metrics"

    yield page
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html><body>a dashboard</body></html>\n", "not Prometheus text"),
        ("ganserve_batch_size_sum\n", "not Prometheus text"),
        ("# TYPE nv_inference_count counter\nnv_inference_count 3\n", "no ganserve_batch_size"),
    ],
)
def test_a_metrics_url_that_is_not_ganserves_is_one_line(
    http_page: Callable[[str], str], text: str, message: str
) -> None:
    """An HTML page or Triton's metrics passed unseen (blank columns, exit 0); a line with no
    value was 'list index out of range'."""
    with pytest.raises(RuntimeError, match=message):
        targets.ganserve_scraper(http_page(text), model="digits")()


def test_the_scraper_reads_labels_and_timestamps_as_prometheus_does(
    http_page: Callable[[str], str],
) -> None:
    """Only the model measured: `run --model digits` against a server also answering another
    model mixed that one's batches into its figures."""
    text = (
        "# TYPE ganserve_batch_size histogram\n"
        'ganserve_batch_size_sum{model="a",version="1"} 30 1700000000000\n'
        'ganserve_batch_size_count{model="a",version="1"} 10\n'
        'ganserve_batch_size_sum{model="b",version="2"} 2\n'
        'ganserve_batch_size_count{model="b",version="2"} 1\n'
        "# TYPE ganserve_queue_depth gauge\n"
        'ganserve_queue_depth{model="a"} 4\n'
    )
    figures = targets.ganserve_scraper(http_page(text), model="a")()
    assert figures["batch_sum"] == 30 and figures["batch_count"] == 10
    assert figures["queue_depth"] == 4 and figures["queue_count"] == 0
    figures = targets.ganserve_scraper(http_page(text), model="b")()
    assert figures["batch_sum"] == 2 and figures["batch_count"] == 1
    assert figures["queue_depth"] == 0


def test_a_grpc_server_that_is_not_ganserve_is_told_apart() -> None:
    """'UNIMPLEMENTED: Method not found!' did not say what to fix."""
    from grpc_health.v1 import health, health_pb2_grpc

    bare = grpc.server(futures.ThreadPoolExecutor(1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), bare)
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        result = CliRunner().invoke(
            main, ["run", "--target", f"127.0.0.1:{port}", "--concurrency", "1", *QUICK]
        )
    finally:
        bare.stop(None)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "does not serve ganserve's Generator API" in result.output
    assert "--server triton --model NAME" in result.output


def test_a_rate_too_low_for_one_call_a_window_is_refused() -> None:
    result = CliRunner().invoke(main, ["run", "--rate", "0.5", "--window", "0.5"])
    assert result.exit_code == 2 and "holds less than one call" in result.output


def test_an_out_folder_that_cannot_be_made_is_refused_even_for_root() -> None:
    """os.access said yes to root for /proc: a traceback after the server had started."""
    result = CliRunner().invoke(main, ["soak", "--out", "/proc/gan-bench-out"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "cannot write in folder /proc/gan-bench-out" in result.output


def test_a_terminated_run_writes_the_points_it_measured(
    server: ServerThread, tmp_path: pathlib.Path
) -> None:
    """SIGTERM (kill, timeout, a cancelled CI job) lost every point; Ctrl-C lost them too."""
    out = tmp_path / "partial.json"
    args = ["run", "--target", server.target, "--concurrency", "1,1,1,1,1,1", "--json", str(out)]
    proc = subprocess.Popen(
        [str(BIN / "gan-bench"), *args, *QUICK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "ganserve digits generate raw c=1" in proc.stderr.readline()  # one point done
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "point(s) measured are written" in err
    rows = json.loads(out.read_text())["points"]
    assert 1 <= len(rows) < 6 and rows[0]["requests_per_s"] > 0


def _children(pid: int) -> list[int]:
    tasks = pathlib.Path(f"/proc/{pid}/task")
    return [
        int(child) for task in tasks.iterdir() for child in (task / "children").read_text().split()
    ]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whichever process adopted it to reap it."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_killed_gan_bench_leaves_no_server_behind(tmp_path: pathlib.Path) -> None:
    """kill -9 (or the OOM killer) runs no `finally`: its servers used to live on under PID 1."""
    command = [str(BIN / "gan-bench"), "soak", "--calls", "10000000", "--out", str(tmp_path)]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (children := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children, "the soak's server did not start"
        time.sleep(3)  # the server has exec'd and is serving the soak
        argv = pathlib.Path(f"/proc/{children[0]}/cmdline").read_text().split("\0")
        assert argv[1].endswith("ganserve"), argv  # not the wrapper (python -c ...) any more
    finally:
        proc.kill()
        proc.wait(30)
    deadline = time.monotonic() + 60  # SIGTERM: the server drains, then exits
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [child for child in children if _alive(child)]
    for child in left:
        os.kill(child, signal.SIGKILL)
    assert not left, "the server outlived a SIGKILLed gan-bench"


def test_a_terminated_soak_stops_the_server_it_started(tmp_path: pathlib.Path) -> None:
    """A killed compare, soak or overload left its ganserve running under PID 1."""
    command = [str(BIN / "gan-bench"), "soak", "--calls", "10000000", "--out", str(tmp_path)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (children := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children, "the soak's server did not start"
        time.sleep(3)  # serving, and the soak under way
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM: the servers this run started are stopped" in err
    assert "Traceback" not in err
    for child in children:
        assert not pathlib.Path(f"/proc/{child}").exists(), "the server outlived gan-bench"
