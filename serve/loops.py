"""The event loop the server runs on: uvloop's when it is installed, else asyncio's own.

With the accept line gone (`ganserve.serve.accept`), asyncio's pure-Python loop machinery
(`_run_once`, `call_soon`, handles) was about an eighth of the event loop's time at 64 calls in
flight; uvloop does the same work in C. Unary throughput at c=64 rose 8-12 % and p99 fell
~10 % over three alternating rounds on a 2-core VM (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ganserve.serve.config import EventLoop


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new event loop of the kind ``choice`` names: ``auto`` takes uvloop
    when it can be imported. ValueError when ``uvloop`` is asked for and missing."""
    if choice is EventLoop.ASYNCIO:
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice is EventLoop.UVLOOP:
            raise ValueError(
                "event_loop is uvloop, but uvloop is not installed: pip install uvloop, or "
                "choose --event-loop asyncio"
            ) from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """ "uvloop" or "asyncio", for the start-up log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
