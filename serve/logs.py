"""Logging set-up for the server: text or JSON lines, each carrying the request id.

The request id comes from the caller's ``x-request-id`` metadata when present, else is made
up; it is returned to the caller in trailing metadata and attached to every log record written
while the request is handled (a ContextVar follows the asyncio task).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

from ganserve.serve.config import LogFormat

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
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
