"""Several pending accepts per method, so calls do not queue behind grpcio's accept loop.

grpcio's asyncio server keeps one request for a new call pending per method, and re-arms it
only after its serving task has run on the event loop for the call before: a hop from gRPC's
poller thread to the loop, then a task step or two. Under load every call waits its turn in
that line, before any handler runs, while the loop and the cores are partly idle. With 32 more
pending accepts per method the digits model's unary throughput at 64 calls in flight rose from
2,050-2,350 to about 3,550 requests/s on a 2-core VM (docs/benchmarks.md, "Where the time
goes").

The extra accepts use grpcio's own Cython entry points, the ones its serving loop calls, so a
call accepted here is handled exactly as any other (interceptors, status mapping, cancellation,
shutdown). Those entry points are private: `supported` checks that they exist with the
signatures this module was written against, and the server falls back to grpcio's loop alone
(with a warning) when they do not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping, Sequence

import grpc

try:
    from grpc._cython import cygrpc
except ImportError:  # a grpcio laid out differently: supported() says so
    cygrpc = None

LOGGER = logging.getLogger(__name__)

# grpcio's private entry points and their parameters, as of grpcio 1.85.
_EXPECTED = {
    "_handle_rpc": (
        "method_name",
        "method_resolver",
        "interceptors",
        "rpc_state",
        "loop",
        "concurrency_exceeded",
    ),
    "_schedule_rpc_coro": ("rpc_coro", "rpc_state", "loop", "method_name"),
    "_MethodResolver": None,
    "_RequestCallError": None,
}


def supported() -> str | None:
    """None when this grpcio has the entry points this module calls, else why not."""
    if cygrpc is None:
        return f"grpcio {grpc.__version__} has no grpc._cython.cygrpc"
    for name, params in _EXPECTED.items():
        target = getattr(cygrpc, name, None)
        if target is None:
            return f"grpcio {grpc.__version__} has no cygrpc.{name}"
        if params is not None:
            try:
                found = tuple(inspect.signature(target).parameters)
            except (TypeError, ValueError):
                return f"grpcio {grpc.__version__}: cannot read cygrpc.{name}'s signature"
            if found != params:
                return f"grpcio {grpc.__version__}: cygrpc.{name} takes {found}"
    try:
        found = tuple(inspect.signature(cygrpc.AioServer._request_registered_call).parameters)
    except (AttributeError, TypeError, ValueError):
        return f"grpcio {grpc.__version__} has no readable AioServer._request_registered_call"
    if found != ("self", "method"):
        return f"grpcio {grpc.__version__}: AioServer._request_registered_call takes {found}"
    return None


class ConcurrentAccepts:
    """``depth`` more pending accepts for each of ``handlers`` (full method name -> the
    handler registered for it) on a started ``server``. They end when the server stops."""

    def __init__(
        self,
        server: grpc.aio.Server,
        handlers: Mapping[str, grpc.RpcMethodHandler],
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        depth: int,
    ) -> None:
        self._aio = server._server  # the cygrpc.AioServer behind grpc.aio.Server
        self._methods = list(handlers)
        self._resolver = cygrpc._MethodResolver([], dict(handlers))
        self._interceptors = tuple(interceptors)
        self._depth = depth
        self._tasks: set[asyncio.Task[None]] = set()
        self._rpcs: set[asyncio.Task[None]] = set()
        self.accepted = 0  # calls that came in through these accepts (tests read it)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for method in self._methods:
            for _ in range(self._depth):
                task = loop.create_task(self._accept(method), name=f"accept {method}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        """Accept loops still running (0 once the server has stopped)."""
        return len(self._tasks)

    async def _accept(self, method: str) -> None:
        # Never cancelled while the server runs: gRPC would complete a pending accept into a
        # cancelled future and the call would be lost. Stopping the server fails every pending
        # accept, which ends these loops.
        aio, loop, name = self._aio, asyncio.get_running_loop(), method.encode()
        while aio.is_running():
            try:
                # Awaited here, not wrapped in a task as grpcio's loop does: one task and
                # one event-loop turn less per call.
                state = await aio._request_registered_call(name)
            except Exception as exc:
                if not aio.is_running():
                    return
                if isinstance(exc, cygrpc._RequestCallError):
                    continue  # a failed accept while serving; grpcio's own loop re-arms too
                LOGGER.exception("extra accepts for %s stopped; grpcio's own loop goes on", method)
                return
            self.accepted += 1
            handle = cygrpc._handle_rpc(
                method, self._resolver, self._interceptors, state, loop, False
            )
            rpc = loop.create_task(cygrpc._schedule_rpc_coro(handle, state, loop, method))
            self._rpcs.add(rpc)  # the loop keeps only a weak reference to tasks
            rpc.add_done_callback(self._rpcs.discard)
