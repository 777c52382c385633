"""Logging set-up for the server: text or JSON lines, each carrying the request id.

The request id comes from the caller's ``x-request-id`` metadata when present, else is made
up; it is returned to the caller in trailing metadata and attached to every log record written
while the request is handled (a ContextVar follows the asyncio task).
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import re
import time
from typing import Any

from ganserve.serve.config import LogFormat

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


MAX_REQUEST_ID = 128
# What ids look like (UUIDs, hex, base64, trace ids): anything else, spaces and brackets
# included, could forge a text log line, so it is replaced.
_NOT_ID = re.compile(r"[^A-Za-z0-9._:/+=@-]")


def request_id(context: Any) -> str:
    """The caller's ``x-request-id`` (the first, if several; at most 128 characters, others
    than ``A-Za-z0-9._:/+=@-`` made ``_``), or a fresh random one."""
    return request_id_of(context.invocation_metadata())


def request_id_of(metadata: Any) -> str:
    """`request_id` from a call's invocation metadata (an interceptor has no context)."""
    metadata = metadata or ()
    sent = next((v for k, v in metadata if k == "x-request-id" and v), None)
    if sent is None:
        return f"{random.getrandbits(64):016x}"
    sent = sent[:MAX_REQUEST_ID]
    return _NOT_ID.sub("_", sent) if _NOT_ID.search(sent) else sent


def request_id_metadata(context: Any) -> tuple[tuple[str, str], ...]:
    """Trailing metadata echoing the request id, for replies sent outside a servicer call."""
    return (("x-request-id", request_id(context)),)


ACCESS_LOGGER = logging.getLogger("ganserve.access")
# Fields that access-log records carry as `extra`; JSON lines write them as keys.
ACCESS_FIELDS = ("method", "model", "version", "code", "duration_ms", "peer", "items")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and access fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for field in ACCESS_FIELDS:
            if hasattr(record, field):
                out[field] = getattr(record, field)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def configure(level: str, log_format: LogFormat) -> None:
    """Entry points only: route every record through one handler with the request id."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
