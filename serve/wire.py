"""Malformed request bytes become INVALID_ARGUMENT, not INTERNAL.

gRPC Python answers a request it cannot parse with INTERNAL ("Exception deserializing
request!"), which tells the caller the server is at fault. Here every handler's deserializer is
wrapped at registration: bytes that do not parse arrive as a `Malformed` value, and the handler
answers INVALID_ARGUMENT naming the message type, before any servicer code runs. The wrapping
happens once per method when the services are added, so the hot path pays one isinstance check.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterable

import grpc

from ganserve.serve.logs import request_id_metadata


@dataclasses.dataclass(frozen=True, slots=True)
class Malformed:
    """A request whose bytes did not parse as ``message``."""

    message: str
    error: str

    def status_message(self) -> str:
        return f"the request is not a valid {self.message} message ({self.error}); fix the client"


def _message_name(deserializer: Callable[[bytes], object]) -> str:
    cls = getattr(deserializer, "__self__", None)  # a message class's FromString
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")


def _safe(deserializer: Callable[[bytes], object]) -> Callable[[bytes], object]:
    name = _message_name(deserializer)

    def parse(data: bytes) -> object:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, invalid UTF-8 in a string field, ...
            return Malformed(name, str(exc) or type(exc).__name__)

    return parse


async def _refuse(
    request: Malformed, context: grpc.aio.ServicerContext, refused: Callable[[], None]
) -> None:
    """Count the unparsable request and end the call with INVALID_ARGUMENT naming its type."""
    refused()
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        request.status_message(),
        trailing_metadata=request_id_metadata(context),
    )


def _guard_unary(behavior: Callable, refused: Callable[[], None]) -> Callable:
    @functools.wraps(behavior)
    async def handler(request: object, context: grpc.aio.ServicerContext) -> object:
        if isinstance(request, Malformed):
            await _refuse(request, context, refused)
        return await behavior(request, context)

    return handler


def _guard_stream(behavior: Callable, refused: Callable[[], None]) -> Callable:
    @functools.wraps(behavior)
    async def handler(request: object, context: grpc.aio.ServicerContext):
        if isinstance(request, Malformed):
            await _refuse(request, context, refused)
        async for response in behavior(request, context):
            yield response

    return handler


def _guard_bidi(behavior: Callable, refused: Callable[[], None]) -> Callable:
    """Requests streamed in (server reflection) are checked one by one as the servicer reads
    them: the first that did not parse ends the call with INVALID_ARGUMENT."""

    @functools.wraps(behavior)
    async def handler(requests: AsyncIterator[object], context: grpc.aio.ServicerContext):
        async def checked() -> AsyncIterator[object]:
            async for request in requests:
                if isinstance(request, Malformed):
                    await _refuse(request, context, refused)
                yield request

        async for response in behavior(checked(), context):
            yield response

    return handler


def _nothing() -> None:
    pass


def guard(
    handler: grpc.RpcMethodHandler, refused: Callable[[], None] = _nothing
) -> grpc.RpcMethodHandler:
    """The same method handler, answering unparsable requests with INVALID_ARGUMENT (after
    calling ``refused``, which counts them)."""
    if handler is None or handler.request_deserializer is None:
        return handler
    if handler.request_streaming:
        bidi = handler.stream_stream
        # Only a servicer that iterates its requests can be checked on the way in (one that
        # reads with context.read() would get the Malformed values); this server has one such
        # method, reflection's, and no client-streaming ones of its own.
        if bidi is None or not inspect.isasyncgenfunction(bidi):
            return handler
        return handler._replace(
            request_deserializer=_safe(handler.request_deserializer),
            stream_stream=_guard_bidi(bidi, refused),
        )
    if handler.unary_unary is not None:
        return handler._replace(
            request_deserializer=_safe(handler.request_deserializer),
            unary_unary=_guard_unary(handler.unary_unary, refused),
        )
    stream = handler.unary_stream
    # A streaming handler is an async generator, or a coroutine that calls context.write().
    wrap = _guard_stream if inspect.isasyncgenfunction(stream) else _guard_unary
    return handler._replace(
        request_deserializer=_safe(handler.request_deserializer), unary_stream=wrap(stream, refused)
    )


class _GuardedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, refused: Callable[[str], None]) -> None:
        self._inner = inner
        self._refused = refused
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is None:
            cached = guard(
                self._inner.service(handler_call_details),
                functools.partial(self._refused, method),
            )
            if cached is not None:  # unknown method names are not remembered
                self._cache[method] = cached
        return cached


class GuardedRegistrar:
    """Stands in for a grpc.aio.Server in the generated ``add_*_to_server`` functions."""

    def __init__(
        self, server: grpc.aio.Server, refused: Callable[[str], None] = lambda method: None
    ) -> None:
        """``refused(method)`` is called with "/service/Method" for each unparsable request."""
        self._server = server
        self._refused = refused
        self.registered: dict[str, grpc.RpcMethodHandler] = {}  # "/service/Method" -> handler

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedGeneric(h, self._refused) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        guarded = {
            name: guard(h, functools.partial(self._refused, f"/{service}/{name}"))
            for name, h in handlers.items()
        }
        self._server.add_registered_method_handlers(service, guarded)
        self.registered.update((f"/{service}/{name}", h) for name, h in guarded.items())
