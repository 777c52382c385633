"""The Python client checks its arguments before anything goes on the wire: a value gRPC or
protobuf cannot carry raises ValueError or TypeError naming the argument, instead of a protobuf
error that names nothing, a client-side status that looks like a server refusal, or a
different value on the wire. Real server: the bundled digits model (conditional, 10 classes)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from conftest import ServerThread
from ganserve.client.client import (
    GeneratedImage,
    GeneratorClient,
    ImageEncoding,
    ReplyError,
    RetryPolicy,
)
from ganserve.v1 import generator_pb2


@pytest.fixture(scope="module")
def server(start_server_module: Callable[..., ServerThread]) -> ServerThread:
    return start_server_module()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[GeneratorClient]:
    with GeneratorClient(server.target, timeout=10) as c:
        yield c


# --- RetryPolicy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 1}, "max_attempts 1 is out of range: use 2..5"),
        ({"max_attempts": 6}, "max_attempts 6 is out of range: use 2..5"),
        ({"initial_backoff_s": 1e-5}, r"initial_backoff_s 1e-05 is out of range: use 0.001\.\."),
        ({"initial_backoff_s": 0}, "initial_backoff_s 0 is out of range"),
        ({"initial_backoff_s": 0.0009}, "initial_backoff_s 0.0009 is out of range"),
        ({"initial_backoff_s": float("nan")}, "initial_backoff_s nan is out of range"),
        ({"max_backoff_s": -1}, "max_backoff_s -1 is out of range"),
        ({"max_backoff_s": float("inf")}, "max_backoff_s inf is out of range"),
        ({"max_backoff_s": 315_576_000_001}, "max_backoff_s 315576000001 is out of range"),
        ({"multiplier": 0}, "multiplier 0 is out of range: use a finite number > 0"),
        ({"multiplier": -2.0}, "multiplier -2.0 is out of range"),
        ({"multiplier": 1e-300}, "multiplier 1e-300 is out of range"),  # 0 as a 32-bit float
        ({"multiplier": float("inf")}, "multiplier inf is out of range"),
    ],
)
def test_retry_policy_refuses_what_grpc_would_refuse(fields: dict, message: str) -> None:
    """gRPC would fail every call of the channel with INVALID_ARGUMENT "Failed to create
    channel" (or clamp max_attempts to 5 in silence)."""
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 2.5}, "max_attempts must be an int, got 2.5"),
        ({"max_attempts": True}, "max_attempts must be an int, got True"),
        ({"initial_backoff_s": "1s"}, "initial_backoff_s must be a number, got '1s'"),
    ],
)
def test_retry_policy_refuses_wrong_types(fields: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        RetryPolicy(**fields)


@pytest.mark.parametrize(
    ("seconds", "duration"),
    [
        (0.05, "0.05s"),
        (1.0, "1s"),
        (2, "2s"),
        (0.001, "0.001s"),
        (1 / 3, "0.333333333s"),
        (0.1 + 0.2, "0.3s"),  # str() gives 0.30000000000000004: too many digits for gRPC
        (123.0000005, "123.0000005s"),
        (315_576_000_000, "315576000000s"),
    ],
)
def test_retry_policy_writes_durations_as_grpc_parses_them(seconds: float, duration: str) -> None:
    """Decimal seconds, at most 9 fractional digits, no exponent, no bare trailing point."""
    config = json.loads(
        RetryPolicy(initial_backoff_s=seconds, max_backoff_s=seconds).service_config()
    )
    (method,) = config["methodConfig"]
    assert method["retryPolicy"]["initialBackoff"] == duration
    assert method["retryPolicy"]["maxBackoff"] == duration


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 2},
        {"max_attempts": np.int64(5)},
        {"initial_backoff_s": 0.001, "max_backoff_s": 0.001},
        {"initial_backoff_s": 1 / 3, "max_backoff_s": 0.1 + 0.2},
        {"max_backoff_s": 315_576_000_000},
        {"multiplier": 1e-45},
        {"multiplier": np.float32(1.5)},
    ],
    ids=str,
)
def test_every_retry_policy_accepted_is_one_grpc_accepts(
    server: ServerThread, fields: dict
) -> None:
    """A call through the policy's channel succeeds: gRPC parsed the service config."""
    with GeneratorClient(server.target, retry=RetryPolicy(**fields), timeout=10) as c:
        assert c.model_info().name == "digits"


# --- timeouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1, 0.0, float("nan"), float("inf"), 1e12])
def test_a_call_timeout_that_is_not_a_usable_deadline_is_refused(
    client: GeneratorClient, timeout: float
) -> None:
    """timeout=0 used to become the default in silence; -1 and 1e12 (past gRPC's int64
    nanosecond clock) failed at once with DEADLINE_EXCEEDED."""
    with pytest.raises(ValueError, match=r"timeout .* is out of range: use 0 < timeout <= 1e9"):
        client.generate(1, 1, timeout=timeout)


@pytest.mark.parametrize("timeout", [0, -5, float("nan"), float("inf"), 1e12])
def test_a_client_timeout_that_is_not_a_usable_deadline_is_refused(
    server: ServerThread, timeout: float
) -> None:
    with pytest.raises(ValueError, match=r"timeout .* is out of range"):
        GeneratorClient(server.target, timeout=timeout)


def test_a_timeout_that_is_not_a_number_is_a_type_error(client: GeneratorClient) -> None:
    with pytest.raises(TypeError, match="timeout must be a number of seconds, got '5'"):
        client.model_info(timeout="5")


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.model_info(timeout=5),
        lambda c: c.generate(1, 1, timeout=1e9),
        lambda c: c.list_models(timeout=np.float32(5)),
        lambda c: c.reload_models(timeout=60),
    ],
    ids=["model_info", "generate-1e9", "list_models-float32", "reload_models"],
)
def test_a_positive_finite_timeout_is_accepted(client: GeneratorClient, call: Callable) -> None:
    call(client)


# --- request arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.generate(-1, 1), ValueError, r"seed -1 is out of range 0\.\.2\*\*64-1"),
        (lambda c: c.generate(2**64, 1), ValueError, f"seed {2**64} is out of range"),
        (lambda c: c.generate(1.0, 1), TypeError, "seed must be an int, got 1.0"),
        (lambda c: c.generate(True, 1), TypeError, "seed must be an int, got True"),
        (lambda c: c.generate(1, "a"), TypeError, "class_label must be an int or None, got 'a'"),
        (lambda c: c.generate(1, 2**31), ValueError, f"class_label {2**31} is out of range"),
        (
            lambda c: c.generate(1, 1, model_version=2),
            TypeError,
            "model_version must be a str, got 2",
        ),
        (lambda c: c.generate(1, 1, model=b"digits"), TypeError, "model must be a str"),
        (lambda c: c.generate(1, 1, model="\ud800"), ValueError, "model must be valid UTF-8"),
        (
            lambda c: c.generate(1, 1, encoding="png"),
            TypeError,
            "encoding must be an ImageEncoding, got 'png'",
        ),
        (
            lambda c: c.generate(1, 1, style_mix_seed=-1),
            ValueError,
            "style_mix_seed -1 is out of range",
        ),
        (
            lambda c: c.generate(1, 1, style_mix_layer=2**31),
            ValueError,
            "style_mix_layer 2147483648 is out of range",
        ),
        (
            lambda c: c.generate_batch([1, 2]),
            TypeError,
            r"items\[0\] must be a \(seed, class_label\) pair, got 1",
        ),
        (
            lambda c: c.generate_batch([(1, 1), (1, 2, 3)]),
            TypeError,
            r"items\[1\] must be a \(seed, class_label\) pair",
        ),
        (
            lambda c: c.generate_batch([(1, 1), (-1, 1)]),
            ValueError,
            r"items\[1\]\.seed -1 is out of range",
        ),
        (
            lambda c: c.generate_batch([(1, "x")]),
            TypeError,
            r"items\[0\]\.class_label must be an int or None",
        ),
        (lambda c: c.generate_batch(5), TypeError, "items must be an iterable of"),
        (lambda c: c.model_info(7), TypeError, "model must be a str, got 7"),
    ],
)
def test_an_argument_the_wire_cannot_carry_is_named(
    client: GeneratorClient, call: Callable, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(client)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 2, 3, 1), "seed_start -1 is out of range"),
        ((1, 2**64, 3, 1), "seed_end 18446744073709551616 is out of range"),
        ((1, 2, 2**31, 1), "frames 2147483648 is out of range"),
        ((1, 2, 3, 1.5), "class_label must be an int or None, got 1.5"),
    ],
)
def test_interpolate_checks_its_arguments_before_returning_the_iterator(
    client: GeneratorClient, args: tuple, message: str
) -> None:
    """No next() here: the error comes from the call itself, not the first frame."""
    with pytest.raises((ValueError, TypeError), match=message):
        client.interpolate(*args)


@pytest.mark.parametrize("psi", [float("nan"), float("inf"), -float("inf"), 1e40, -1e39])
def test_a_truncation_that_is_not_a_finite_32_bit_float_is_refused(
    client: GeneratorClient, psi: float
) -> None:
    """1e40 would reach the server as inf: the wire type is a 32-bit float."""
    with pytest.raises(ValueError, match="truncation must be a finite number"):
        client.generate(1, 1, truncation=psi)
    with pytest.raises(ValueError, match="truncation must be a finite number"):
        client.generate_batch([(1, 1)], truncation=psi)
    with pytest.raises(ValueError, match="truncation must be a finite number"):
        client.interpolate(1, 2, 3, 1, truncation=psi)


def test_a_truncation_in_float_range_is_left_to_the_server(client: GeneratorClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.generate(1, 1, truncation=2.5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "truncation 2.5 is out of range" in info.value.details()


def test_numpy_seeds_labels_and_truncation_work_like_python_numbers(
    client: GeneratorClient,
) -> None:
    expected = client.generate(46, 7, truncation=0.5).response.image
    got = client.generate(np.uint64(46), np.int64(7), truncation=np.float32(0.5))
    assert got.response.image == expected
    (batch,) = client.generate_batch([(np.uint64(46), np.int32(7))], truncation=np.float64(0.5))
    assert batch.response.image == expected
    frames = list(client.interpolate(np.uint64(46), np.int8(3), np.int16(2), np.uint8(7)))
    assert frames[0].response.image == client.generate(46, 7).response.image


def test_an_unknown_encoding_number_is_left_to_the_server(client: GeneratorClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.generate(1, 1, encoding=7)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert client.generate(1, 1, encoding=1).response.encoding == ImageEncoding.RAW_UINT8


# --- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"request_id": "\u00e9"}, r"request_id holds a character gRPC metadata cannot carry"),
        ({"request_id": "a\nb"}, r"request_id holds .*'\\n' at index 1"),
        ({"token": "t\u00f6ken"}, r"token holds a character gRPC metadata cannot carry"),
        ({"token": "secret\n"}, r"token holds .*\(0x20-0x7E\)"),
        ({"token": "a\x7fb"}, "token holds a character"),
    ],
)
def test_metadata_grpc_cannot_send_is_refused_by_the_constructor(
    server: ServerThread, fields: dict, message: str
) -> None:
    """gRPC would fail every call with INTERNAL "Invalid metadata"."""
    with pytest.raises(ValueError, match=message):
        GeneratorClient(server.target, **fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"server_name": "ganserve.serving.svc"}, "it needs TLS"),
        ({"server_name": "x y", "root_certificates": b"pem"}, "is not a host name or address"),
        ({"server_name": 5, "root_certificates": b"pem"}, "server_name must be a str"),
    ],
)
def test_a_server_name_gRPC_cannot_use_is_refused_by_the_constructor(
    server: ServerThread, fields: dict, message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        GeneratorClient(server.target, **fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"client_key": b"k"}, "client_certificate and client_key go together"),
        ({"client_certificate": b"c", "root_certificates": b"r"}, "go together"),
        ({"client_certificate": "c", "client_key": b"k"}, "client_certificate must be non-empty"),
        ({"client_certificate": b"c", "client_key": b""}, "client_key must be non-empty PEM"),
        ({"root_certificates": "pem"}, "root_certificates must be non-empty PEM bytes, got str"),
        ({"retry": 3}, "retry must be a RetryPolicy or None, got 3"),
    ],
)
def test_credentials_gRPC_cannot_use_are_refused_by_the_constructor(
    server: ServerThread, fields: dict, message: str
) -> None:
    """Half a client pair aborted the whole process inside gRPC (a failed CHECK), a key alone
    made a plaintext channel, and a str or a bad retry failed inside gRPC unnamed."""
    with pytest.raises((ValueError, TypeError), match=message):
        GeneratorClient(server.target, **fields)


def test_metadata_errors_do_not_echo_the_token(server: ServerThread) -> None:
    with pytest.raises(ValueError) as info:
        GeneratorClient(server.target, token="s3cret-\u00e9")
    assert "s3cret" not in str(info.value)


def test_printable_ascii_metadata_is_sent(server: ServerThread) -> None:
    """The id reaches the server, which echoes it with the characters its logs refuse made _."""
    with GeneratorClient(server.target, request_id="job 42: ~all printable!", timeout=10) as c:
        result = c.generate(1, 1)
    assert result.response.class_label == 1
    assert result.request_id == "job_42:__all_printable_"


def test_each_call_names_its_request_id(server: ServerThread) -> None:
    """A call's own id wins over the client's; without either, each call gets a fresh one. The
    results carry the id the server echoed, and so does a failed call's RpcError."""
    with GeneratorClient(server.target, timeout=10) as c:
        fresh = {c.generate(1, 1).request_id for _ in range(3)}
        assert len(fresh) == 3 and all(len(rid) == 16 for rid in fresh)
        assert c.generate(1, 1, request_id="call-1").request_id == "call-1"
        images = c.generate_batch([(1, 1), (2, 2)], request_id="batch-1")
        assert [image.request_id for image in images] == ["batch-1", "batch-1"]
        frames = list(c.interpolate(1, 2, 3, 4, request_id="walk-1"))
        assert {frame.request_id for frame in frames} == {"walk-1"}
        with pytest.raises(grpc.RpcError) as info:
            c.generate(1, 12, request_id="bad class")
        assert info.value.request_id == "bad_class"  # as the server echoed it
        with pytest.raises(grpc.RpcError) as info:
            list(c.interpolate(1, 2, 1, 4, request_id="walk-2"))
        assert info.value.request_id == "walk-2"
        with pytest.raises(ValueError, match="request_id holds"):
            c.generate(1, 1, request_id="\u00e9")
    with GeneratorClient(server.target, request_id="job-7", timeout=10) as c:
        assert c.generate(1, 1).request_id == "job-7"
        assert c.generate(1, 1, request_id="call-2").request_id == "call-2"


def test_an_image_the_reply_cannot_be_read_as_is_a_reply_error() -> None:
    """It was Pillow's OSError, which the CLI could not tell from a failed write."""
    for encoding, data in ((ImageEncoding.PNG, b"not a png"), (ImageEncoding.RAW_UINT8, b"abc")):
        response = generator_pb2.GenerateResponse(
            image=data, encoding=encoding, height=2, width=2, channels=1
        )
        with pytest.raises(ReplyError, match="cannot read an image in the reply as 2x2x1"):
            GeneratedImage(response).to_pil()


@pytest.mark.parametrize(("target", "error"), [(None, ValueError), (52401, TypeError)])
def test_a_target_that_is_not_a_string_is_refused_as_documented(target, error) -> None:
    """It was AttributeError: .strip() ran before the type check."""
    with pytest.raises(error, match="target"):
        GeneratorClient(target)
