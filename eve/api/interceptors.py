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
    StorageError,
    StorageFullError,
    UnavailableError,
)

__all__ = ["STATUS_CODES", "ErrorInterceptor", "TokenInterceptor", "status_for", "failure", "bearer_matches",
           "TOKEN_REQUIRED"]

log = logging.getLogger("eve.api")

# Most specific class first: the first isinstance match wins.
STATUS_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (StateError, grpc.StatusCode.FAILED_PRECONDITION),
    (AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
    (EveError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
]

TOKEN_REQUIRED = "missing or invalid token: send metadata 'authorization: Bearer <token>'"


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def failure(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for ``exc`` raised by ``method``, over gRPC or HTTP.
    Anything unexpected is logged with its traceback and said as INTERNAL without details."""
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("unexpected error in %s", method, exc_info=exc)
        return code, f"internal error in {method}: {type(exc).__name__} (see the coordinator log)"
    return code, str(exc) or code.name


def bearer_matches(token: str, authorization: object) -> bool:
    """``authorization`` (a metadata or header value) is ``Bearer <token>``; compared in constant time."""
    return isinstance(authorization, str) and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


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
                context.abort(*failure(exc, method))

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
        self._token = token

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        if bearer_matches(self._token, metadata.get("authorization", "")):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        message = TOKEN_REQUIRED

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
