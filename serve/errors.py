"""The one exception hierarchy of the serving path, and its mapping to gRPC status codes."""

from __future__ import annotations

import math

import grpc


class GanServeError(Exception):
    """Base class: an error with a gRPC status code and a message meant for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def trailers(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata the status carries besides the request id."""
        return ()


class InvalidArgumentError(GanServeError):
    """A request field is invalid; the message names the field and the valid values."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(GanServeError):
    """The requested model is not in the repository."""

    code = grpc.StatusCode.NOT_FOUND


class QueueFullError(GanServeError):
    """The model's queue is at capacity; the caller should back off and retry.

    ``retry_after_s``: about how long until the queue has room for the refused images (None
    when unknown), sent as gRPC's ``grpc-retry-pushback-ms`` so that a client whose retry
    policy retries RESOURCE_EXHAUSTED waits that long instead of its own backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailers(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_s is None:
            return ()
        return (("grpc-retry-pushback-ms", str(math.ceil(self.retry_after_s * 1000))),)


class UnavailableError(GanServeError):
    """The server cannot take work right now (starting or draining); retry elsewhere or later."""

    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDownError(UnavailableError):
    """The server is draining and accepts no new work; retry on another replica."""


class DeadlineExceededError(GanServeError):
    """The client's deadline passed before the request reached the engine."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class EngineTimeoutError(DeadlineExceededError):
    """The engine did not finish this request's batch within the engine timeout."""


class EngineError(GanServeError):
    """The engine failed on the batch holding this request (details are in the server log)."""

    code = grpc.StatusCode.INTERNAL


class ModelLoadError(GanServeError):
    """A model folder could not be loaded: missing files, bad metadata, or an unreadable ONNX."""

    code = grpc.StatusCode.FAILED_PRECONDITION


INTERNAL_MESSAGE = "internal error; see the server log"
SHOWN_CHARS = 64


def shown(value: str) -> str:
    """A caller-supplied string for an error message: quoted, escaped, at most SHOWN_CHARS
    characters of it (a megabyte-long model name must not come back as a megabyte trailer)."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (code, message) sent to the caller.

    Known errors keep their message; anything else becomes INTERNAL with a generic message
    (the caller logs the traceback).
    """
    if isinstance(exc, GanServeError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
