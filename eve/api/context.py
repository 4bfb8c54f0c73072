"""The part of ``grpc.ServicerContext`` the servicers use, for calls that do not come over gRPC:
the HTTP/JSON API (``eve.api.http``) and the metrics scrape (``eve.api.metrics``) call the very
servicers the gRPC server runs, so both read the numbers and follow the rules the API has."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import grpc

__all__ = ["CallAborted", "LocalCallContext"]

log = logging.getLogger("eve.api.context")


class CallAborted(Exception):
    """``context.abort(code, details)`` of a servicer, raised the way grpc raises it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class LocalCallContext:
    """One call's context: active until ``end()`` (the caller went away, or the reply was sent),
    which runs the callbacks registered with ``add_callback`` once, as grpc does when an RPC
    ends, cancelled or not (a direct call's connection is shut then)."""

    def __init__(self, method: str, metadata: Sequence[tuple[str, str]] = (), peer: str = "") -> None:
        self.method = method
        self._metadata = tuple(metadata)
        self._peer = peer
        self._lock = threading.Lock()
        self._active = True
        self._callbacks: list[Callable[[], None]] = []

    def is_active(self) -> bool:
        return self._active

    def time_remaining(self) -> float | None:
        return None  # HTTP carries no deadline; a direct call is still bounded by its timeout_seconds

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._active:
                self._callbacks.append(callback)
                return True
        return False  # like grpc: the call already ended, the callback will not run

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise CallAborted(code, details)

    # The generated servicer base classes answer an rpc they do not implement with these.
    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return getattr(self, "_code", None)

    def details(self) -> str:
        return getattr(self, "_details", "")

    def end(self) -> None:
        with self._lock:
            if not self._active:
                return
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one failed callback must not keep the others from running
                log.exception("callback of %s failed", self.method)
