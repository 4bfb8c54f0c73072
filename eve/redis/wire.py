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

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import EndpointError, UnavailableError
from eve.redis.connections import handshake, open_socket, transport_error

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


class FastConnection:
    """A RESP2 connection for pipelines. Not thread-safe; one per worker."""

    def __init__(self, spec: ConnectionSpec, *, timeout: float = 30.0, db: int = 0,
                 client_name: str = "eve") -> None:
        self.spec = spec
        self.timeout = timeout
        self.db = db
        self.client_name = client_name
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()

    def __repr__(self) -> str:
        return f"FastConnection({self.spec!r}, db={self.db})"

    def __enter__(self) -> "FastConnection":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        self.close()
        self._reader = hiredis.Reader()
        self._sock = open_socket(self.spec, self.timeout)
        try:
            handshake(self.spec, self.execute, _error_bytes, db=self.db, client_name=self.client_name, protocol=2)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

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
        if self._sock is None:
            self.open()
        sock = self._sock
        assert sock is not None
        try:
            sock.sendall(packed)
            replies: list[Any] = []
            reader = self._reader
            while len(replies) < count:
                reply = reader.gets()
                if reply is False:
                    data = sock.recv(1 << 18)
                    if not data:
                        raise UnavailableError(f"{self.spec.address} closed the connection")
                    reader.feed(data)
                    continue
                replies.append(reply)
            return replies
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise transport_error(self.spec, self.timeout, exc) from exc
        except UnavailableError:
            self.close()
            raise


def _error_bytes(reply: Any) -> bytes | None:
    return str(reply).encode() if isinstance(reply, ReplyError) else None
