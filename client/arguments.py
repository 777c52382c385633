"""Checks of the client's arguments before anything is sent: each raises ValueError or
TypeError naming the argument, for values the wire or gRPC cannot carry. Range checks that
depend on the model stay with the server, whose messages list the choices."""

from __future__ import annotations

import math
import numbers
import operator
import re

import numpy as np

from ganserve.v1 import generator_pb2

# gRPC's name schemes whose addresses are host:port, as `dns:[//authority/]host:port` and
# `ipv4:addr:port[,addr:port...]` (`ipv6:[addr]:port,...`): each address is checked as a
# plain target. Other schemes (unix:, a custom resolver's) pass unchecked.
_SCHEME = re.compile(r"(?i)(dns):(?://[^/]*/)?|(ipv4|ipv6):")


def check_target(target: str) -> None:
    """Raise ValueError for a target gRPC cannot dial: empty, not UTF-8, a host without a
    port (gRPC would dial 443), or a host:port whose port is out of range (gRPC would wrap
    99999 around to another port, 99999 - 65536, instead of failing), also behind a dns:,
    ipv4: or ipv6: scheme. Other target forms pass unchecked."""
    target = text("target", target)  # TypeError for a target that is not a string
    if not target.strip():
        raise ValueError("the target is empty; give host:port")
    scheme = _SCHEME.match(target)
    if scheme is None:
        _check_address(target, target)
    elif scheme[1]:
        _check_address(target[scheme.end() :], target)
    else:
        for address in target[scheme.end() :].split(","):
            _check_address(address, target)


def _check_address(target: str, given: str) -> None:
    """One host:port of ``given`` (the whole --target, for the messages)."""
    if not target.strip():
        raise ValueError(f"the target {given!r} has no address; give host:port")
    if re.fullmatch(r"(\[[^\]]*\]|[^:/\[\]]+):?", target):
        # gRPC would dial port 443 in silence.
        raise ValueError(f"the target {given!r} has no port; give host:port")
    if re.fullmatch(r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*", target):
        # An IPv6 address alone: gRPC reads no port in it and dials 443.
        raise ValueError(f"the target {given!r} has no port; write an IPv6 host as [addr]:port")
    match = re.fullmatch(r"(\[[^\]]*\]|[^:/\[\]]*):(\s*[+-]?\s*\d+\s*)", target)
    if match and not re.fullmatch(r"[0-9]+", match[2]):
        # gRPC reads "+121537" as 121537, wrapped around to 56001, and "-1" as 65535.
        raise ValueError(f"port {match[2][:12]!r} in {given!r} is not a number; write it as digits")
    if match and not (len(match[2].lstrip("0")) <= 5 and 1 <= int(match[2]) <= 65535):
        raise ValueError(
            f"port {match[2][:12]}{'...' if len(match[2]) > 12 else ''} is not in 1..65535"
        )


# Wire ranges of the proto fields: (low, high, how a message writes the range).
UINT64 = (0, 2**64 - 1, "0..2**64-1")
INT32 = (-(2**31), 2**31 - 1, "-2**31..2**31-1")
# gRPC turns a deadline into nanoseconds since the Unix epoch in an int64, which overflows ~7.4e9
# s from now, and then fails the call at once with DEADLINE_EXCEEDED. 1e9 s (31 years) is far
# below that and far above any real deadline.
MAX_TIMEOUT_S = 1e9  # messages write it as 1e9
# gRPC's retry policy: maxAttempts counts the first attempt, must be >= 2 and is clamped (with
# an error log line) above 5; backoffs are Durations it truncates to whole milliseconds and must
# be > 0 after that; a Duration's seconds may not pass 315576000000 (10000 years).
MAX_ATTEMPTS = (2, 5)
MIN_BACKOFF_S = 0.001
MAX_DURATION_S = 315_576_000_000


def as_int(name: str, value: object, what: str = "an int") -> int:
    """``value`` as an int: ints and numpy integers pass, bools and floats do not."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {value!r}") from None


def integer(name: str, value: object, wire: tuple[int, int, str]) -> int:
    """``value`` as an int in the wire range of its proto field."""
    number = as_int(name, value)
    low, high, text = wire
    if not low <= number <= high:
        raise ValueError(f"{name} {number} is out of range {text}")
    return number


def optional_label(name: str, value: object) -> int | None:
    if value is None:
        return None
    as_int(name, value, "an int or None")
    return integer(name, value, INT32)


def batch_items(items: object) -> list[generator_pb2.BatchItem]:
    try:
        pairs = list(items)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"items must be an iterable of (seed, class_label) pairs, got {items!r}"
        ) from None
    checked = []
    for index, item in enumerate(pairs):
        try:
            seed, class_label = item
        except (TypeError, ValueError):
            raise TypeError(
                f"items[{index}] must be a (seed, class_label) pair, got {item!r}"
            ) from None
        checked.append(
            generator_pb2.BatchItem(
                seed=integer(f"items[{index}].seed", seed, UINT64),
                class_label=optional_label(f"items[{index}].class_label", class_label),
            )
        )
    return checked


def real(name: str, value: object, what: str = "a number") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return float(value)


def float32(value: float) -> float:
    """What a 32-bit float (proto ``float``) makes of ``value``: inf past 3.4e38, 0 below 1e-45."""
    with np.errstate(over="ignore", under="ignore"):
        return float(np.float32(value))


def text(name: str, value: object) -> str:
    """A proto string field: str (None is the empty default), encodable as UTF-8."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid UTF-8 text, got {value!r}") from None
    return value


def truncation(value: object) -> float | None:
    """The server owns the range (0..2); the client refuses what is not a finite 32-bit float
    (the wire type), so the server never reads inf where the caller passed 1e40."""
    if value is None:
        return None
    psi = real("truncation", value)
    if not math.isfinite(float32(psi)):
        raise ValueError(
            f"truncation must be a finite number that fits a 32-bit float (the wire type), "
            f"got {value!r}"
        )
    return psi


def encoding(value: object) -> int:
    """Any int32 passes: the server answers unknown encodings with the list of known ones."""
    if isinstance(value, str):
        raise TypeError(f"encoding must be an ImageEncoding, got {value!r}")
    return integer("encoding", value, INT32)


def timeout(value: object) -> float:
    seconds = real("timeout", value, "a number of seconds")
    if not (0 < seconds <= MAX_TIMEOUT_S):  # also False for nan
        raise ValueError(f"timeout {value!r} is out of range: use 0 < timeout <= 1e9 (seconds)")
    return seconds


def metadata_value(name: str, value: object) -> str:
    """gRPC sends ASCII metadata values as HTTP/2 header values: printable ASCII only. Anything
    else fails every call with INTERNAL "Invalid metadata". Only the offending character is
    echoed: the value may be a secret."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    for index, char in enumerate(value):
        if not " " <= char <= "~":
            raise ValueError(
                f"{name} holds a character gRPC metadata cannot carry ({char!r} at index "
                f"{index}); use printable ASCII (0x20-0x7E)"
            )
    return value


def server_name(value: object) -> str:
    """A DNS name or address to check the server's certificate against."""
    name = text("server_name", value)
    if not name or not name.isascii() or not all(c.isalnum() or c in ".-:[]" for c in name):
        raise ValueError(
            f"server_name {value!r} is not a host name or address (IDNA-encode an "
            "international name)"
        )
    return name


def duration(seconds: float) -> str:
    """A google.protobuf.Duration in JSON, as gRPC parses it: decimal seconds, at most 9
    fractional digits, an "s" suffix, no exponent and no bare trailing point (not "1e-05s")."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
