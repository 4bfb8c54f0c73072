"""The bulk path's connection: pre-encoded pipelines parsed by hiredis.

Scanners and restorers send thousands of DUMP/PTTL/RESTORE commands per batch;
building them with redis-py costs more than the servers spend on them. Commands
here are encoded once into one buffer, written with one ``sendall`` and the
replies parsed in C. Error replies come back as ``hiredis.ReplyError`` values in
the reply list (one failed key never fails a batch); transport failures raise
``UnavailableError``.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable, Sequence

import hiredis

from eve.core.errors import EndpointError, UnavailableError
from eve.redis.connections import Connection, transport_error

__all__ = ["FastConnection", "ReplyError", "pack", "pack_many"]

ReplyError = hiredis.ReplyError
_CRLF = b"\r\n"


def _arg(value: bytes | str | int | float) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"cannot send {type(value).__name__} as a command argument")


def pack(*args: bytes | str | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pack_many(commands: Iterable[Sequence[bytes | str | int | float]]) -> bytes:
    return b"".join(pack(*command) for command in commands)


class FastConnection(Connection):
    """A RESP2 connection for pipelines. Not thread-safe; one per worker.

    Opened on first use (``pipeline``), and reopened there after it was closed.
    """

    default_timeout = 30.0  # a pipeline of thousands of RESTOREs takes a while

    def __enter__(self) -> "FastConnection":
        self.open()
        return self

    def _new_reader(self) -> hiredis.Reader:
        return hiredis.Reader()

    def _roundtrip(self, *args: Any) -> Any:
        return self.execute(*args)

    @staticmethod
    def _error_text(reply: Any) -> bytes | None:
        return _error_bytes(reply)

    def select(self, db: int) -> None:
        if db != self.db:
            reply = self.execute("SELECT", db)
            if isinstance(reply, ReplyError):
                raise EndpointError(f"SELECT {db} failed on {self.spec.address}: {reply}")
            self.db = db

    def execute(self, *args: bytes | str | int | float) -> Any:
        return self.pipeline(pack(*args), 1)[0]

    def pipeline(self, packed: bytes, count: int) -> list[Any]:
        """Send ``count`` pre-encoded commands and return their ``count`` replies."""
        self.send(packed)
        return self.replies(count)

    def send(self, packed: bytes) -> None:
        """The first half of ``pipeline``: send pre-encoded commands, read nothing yet (the caller
        does something else while the server works, then ``replies``). Until their replies
        are read the connection carries nothing else; ``close`` if they never will be."""
        if self._sock is None:
            self.open()
        sock = self._sock
        assert sock is not None
        try:
            sock.sendall(packed)
        except OSError as exc:
            raise self._lost(exc) from exc

    def replies(self, count: int) -> list[Any]:
        """The second half of ``pipeline``: the next ``count`` replies."""
        sock = self._sock
        if sock is None:
            raise UnavailableError(f"connection to {self.spec.address} is closed")
        try:
            replies: list[Any] = []
            reader = self._reader
            while len(replies) < count:
                reply = reader.gets()
                if reply is False:
                    self._feed(sock.recv(1 << 18))
                    continue
                replies.append(reply)
            return replies
        except (OSError, hiredis.ProtocolError) as exc:
            raise self._lost(exc) from exc

    def receive(self, wait: float) -> list[Any]:
        """What the server sent unasked (Pub/Sub messages after a SUBSCRIBE): the replies that
        arrive within ``wait`` seconds of waiting for the first bytes, [] when none did."""
        sock = self._sock
        if sock is None:
            raise UnavailableError(f"connection to {self.spec.address} is closed")
        try:
            replies = self._replies()
            if not replies:
                sock.settimeout(wait)
                try:
                    self._feed(sock.recv(1 << 18))
                except socket.timeout:
                    return []
                finally:
                    sock.settimeout(self.timeout)
                replies = self._replies()
            return replies
        except (OSError, hiredis.ProtocolError) as exc:
            raise self._lost(exc) from exc

    def _feed(self, data: bytes) -> None:
        if not data:
            self.close()
            raise UnavailableError(f"{self.spec.address} closed the connection")
        self._reader.feed(data)

    def _replies(self) -> list[Any]:
        """Every complete reply the reader holds."""
        replies = []
        reader = self._reader
        while (reply := reader.gets()) is not False:
            replies.append(reply)
        return replies

    def _lost(self, exc: BaseException) -> EndpointError:
        """A failed round trip: the connection is closed (its state is unknown), and the Eve
        error naming the address to raise."""
        self.close()
        return transport_error(self.spec, self.timeout, exc)


def _error_bytes(reply: Any) -> bytes | None:
    return str(reply).encode() if isinstance(reply, ReplyError) else None
