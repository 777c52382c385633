"""Bearer-token authentication for every RPC except health checks.

Callers send ``authorization: Bearer <token>`` metadata. A missing or wrong token is answered
with UNAUTHENTICATED before the handler runs. Health stays open so load balancers and
Kubernetes probes need no secret.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

import grpc

from ganserve.serve.logs import REQUEST_ID, request_id_of

LOGGER = logging.getLogger(__name__)
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _denying_handler(
    handler: grpc.RpcMethodHandler, reason: str, rid: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only aborts with UNAUTHENTICATED, its
    trailer carrying request id ``rid``."""
    message = f"{reason} bearer token: send metadata 'authorization: Bearer <token>'"

    async def deny(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, message, trailing_metadata=(("x-request-id", rid),)
        )

    async def deny_stream(request_or_iterator: object, context: grpc.aio.ServicerContext):
        await deny(request_or_iterator, context)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the configured bearer token (constant-time comparison)."""

    def __init__(self, token: str, on_failure: Callable[[], None] | None = None) -> None:
        self.token = token
        self._on_failure = on_failure

    @property
    def token(self) -> str:
        return self._expected.decode()

    @token.setter
    def token(self, token: str) -> None:  # swapped whole: a call sees the old or the new one
        self._expected = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        sent = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
        scheme, _, credentials = str(sent).partition(" ")
        # Auth schemes are case-insensitive (RFC 9110 11.1): "bearer" is as good as "Bearer".
        if (
            sent is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(credentials.encode(), self._expected)
        ):
            return handler
        if self._on_failure is not None:
            self._on_failure()
        reason = "missing" if sent is None else "invalid"
        # Logged here, before any request message arrives (one that never does is refused all
        # the same), under the id the trailer will carry.
        rid = request_id_of(details.invocation_metadata)
        token = REQUEST_ID.set(rid)
        try:
            LOGGER.warning("refused %s: %s bearer token", details.method, reason)
        finally:
            REQUEST_ID.reset(token)
        return _denying_handler(handler, reason, rid)
