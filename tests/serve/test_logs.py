"""Structured logs: JSON lines carrying the caller's request id, and the optional access log."""

from __future__ import annotations

import io
import json
import logging

from conftest import generator_stub
from ganserve.serve import logs
from ganserve.serve.config import LogFormat
from ganserve.v1 import generator_pb2 as pb


def test_access_log_writes_one_json_line_per_request_with_the_request_id(start_server) -> None:
    server = start_server(access_log=True)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs._RequestIdFilter())
    handler.setFormatter(logs.JsonFormatter())
    logs.ACCESS_LOGGER.addHandler(handler)
    logs.ACCESS_LOGGER.setLevel(logging.INFO)
    try:
        with generator_stub(server.target) as stub:
            stub.Generate(
                pb.GenerateRequest(seed=1, class_label=1),
                timeout=30,
                metadata=[("x-request-id", "rid-7")],
            )
    finally:
        logs.ACCESS_LOGGER.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["request_id"] == "rid-7" and record["logger"] == "ganserve.access"
    assert (record["method"], record["model"], record["version"], record["code"]) == (
        "Generate",
        "digits",
        "2",
        "OK",
    )
    assert record["duration_ms"] > 0 and record["peer"].startswith("ipv4:127.0.0.1")


def test_a_request_id_is_bounded_and_cannot_forge_a_log_line(bundled_server) -> None:
    """A client's id is written on every log line about its call: a 5,000-character id, or
    one with spaces and brackets ('a] Generate digits v2 OK 0.1ms [b'), once went in whole."""
    cases = {
        "a] Generate digits v2 OK 0.1ms [b": "a__Generate_digits_v2_OK_0.1ms__b",
        "x" * 5000: "x" * 128,
        "0af7651916cd43dd8448eb211c80319c": "0af7651916cd43dd8448eb211c80319c",
    }
    with generator_stub(bundled_server.target) as stub:
        for sent, kept in cases.items():
            _, call = stub.Generate.with_call(
                pb.GenerateRequest(seed=1, class_label=1),
                timeout=30,
                metadata=[("x-request-id", sent)],
            )
            assert dict(call.trailing_metadata())["x-request-id"] == kept


def test_access_log_is_off_by_default(bundled_server, caplog) -> None:
    with (
        caplog.at_level(logging.INFO, logger="ganserve.access"),
        generator_stub(bundled_server.target) as stub,
    ):
        stub.Generate(pb.GenerateRequest(seed=1, class_label=1), timeout=30)
    assert [r for r in caplog.records if r.name == "ganserve.access"] == []


def test_configure_json_writes_parseable_lines(capsys) -> None:
    try:
        logs.configure("INFO", LogFormat.JSON)
        token = logs.REQUEST_ID.set("abc")
        logging.getLogger("ganserve.test").warning("hello %s", "world")
        logs.REQUEST_ID.reset(token)
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["message"] == "hello world" and record["request_id"] == "abc"
    assert record["level"] == "WARNING" and record["ts"].endswith("Z")
