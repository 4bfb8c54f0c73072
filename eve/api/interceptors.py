"""The server's interceptors: Eve's errors mapped to gRPC status codes in exactly one place
(``STATUS_CODES``), and the bearer token every call needs when one is configured."""

from __future__ import annotations

import hmac
import logging
from typing import Callable

import grpc

from eve.core.errors import (
    AlreadyExistsError,
    AuthError,
    ConfigError,
    EveError,
    NotFoundError,
    StateError,
    UnavailableError,
)

__all__ = ["STATUS_CODES", "ErrorInterceptor", "TokenInterceptor", "status_for"]

log = logging.getLogger("eve.api")

# Most specific class first: the first isinstance match wins.
STATUS_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (StateError, grpc.StatusCode.FAILED_PRECONDITION),
    (AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (EveError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
]

def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
    return handler  # Eve has no client-streaming calls; reflection's stream is left as is.


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turns Eve's errors into status codes; anything unexpected is logged and INTERNAL."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap(behavior):
            def fail(exc: BaseException, context: grpc.ServicerContext):
                code = status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("unexpected error in %s", method)
                    context.abort(code, f"internal error in {method}: {type(exc).__name__} (see the coordinator log)")
                context.abort(code, str(exc) or code.name)

            if handler.unary_stream:
                def stream(request, context):
                    try:
                        yield from behavior(request, context)
                    except Exception as exc:
                        if context.code() is not None:  # already aborted on purpose
                            raise
                        fail(exc, context)
                return stream

            def unary(request, context):
                try:
                    return behavior(request, context)
                except Exception as exc:
                    if context.code() is not None:  # already aborted on purpose
                        raise
                    fail(exc, context)
            return unary

        return _wrap_handler(handler, wrap)


class TokenInterceptor(grpc.ServerInterceptor):
    """With a token configured, every call needs ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        message = "missing or invalid token: send metadata 'authorization: Bearer <token>'"

        def deny(behavior):
            def unary(request, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            return unary

        if handler.stream_stream or handler.stream_unary:
            def deny_stream(request_iterator, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            if handler.stream_stream:
                return grpc.stream_stream_rpc_method_handler(
                    deny_stream, handler.request_deserializer, handler.response_serializer)
            return grpc.stream_unary_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer)
        return _wrap_handler(handler, deny)
