"""Blocking RESP connections opened from a ConnectionSpec, for the coordinator's
direct endpoint calls and checks.

Replies keep their RESP type (simple string, bulk, error, RESP3 map, ...), which
redis-py folds away; the bulk pipeline uses redis-py (with hiredis) instead.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from eve.endpoints import ConnectionSpec
from eve.errors import AuthError, EndpointError, UnavailableError
from proxy import resp

__all__ = ["RedisConnection", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 5.0
_AUTH_ERRORS = (b"WRONGPASS", b"NOAUTH", b"NOPERM", b"ERR invalid password", b"ERR AUTH",
                b"ERR Client sent AUTH")


class RedisConnection:
    """One connection: socket (TLS when asked), then HELLO/AUTH and SELECT.

    ``call`` returns the reply as a typed ``proxy.resp`` value; a server error is
    a ``resp.Error`` value, not an exception, since for a user's command it is the
    answer. Transport failures raise ``UnavailableError`` naming the address.
    """

    def __init__(self, spec: ConnectionSpec, *, timeout: float = DEFAULT_TIMEOUT, db: int = 0,
                 client_name: str = "eve") -> None:
        self.spec = spec
        self.timeout = timeout
        self.db = db
        self.client_name = client_name
        self._sock: socket.socket | None = None
        self._reader = resp.Reader()

    def __enter__(self) -> "RedisConnection":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisConnection({self.spec!r}, db={self.db})"

    # -- transport ---------------------------------------------------------------

    def open(self) -> None:
        spec = self.spec
        try:
            sock = socket.create_connection((spec.host, spec.port), timeout=self.timeout)
        except OSError as exc:
            raise UnavailableError(f"cannot connect to {spec.address}: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if spec.tls:
            try:
                sock = self._tls_context().wrap_socket(sock, server_hostname=spec.tls_server_name or spec.host)
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise UnavailableError(f"TLS handshake with {spec.address} failed: {exc}") from exc
        self._sock = sock
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.spec.tls_ca_file)
        if self.spec.tls_insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _handshake(self) -> None:
        spec = self.spec
        user = spec.username or "default"
        if spec.protocol_version == 3:
            args: list[Any] = ["HELLO", 3]
            if spec.password:
                args += ["AUTH", user, spec.password]
            self._checked(self.call(*args), "HELLO 3")
        elif spec.password:
            auth = ["AUTH", user, spec.password] if spec.username else ["AUTH", spec.password]
            self._checked(self.call(*auth), "AUTH")
        # Name the connection so operators can find Eve in CLIENT LIST; a server
        # that refuses CLIENT SETNAME (ACL) is not a reason to fail.
        self.call("CLIENT", "SETNAME", self.client_name)
        if self.db:
            self._checked(self.call("SELECT", self.db), f"SELECT {self.db}")

    def _checked(self, reply: Any, what: str) -> Any:
        if isinstance(reply, resp.Error):
            message = reply.value.decode("utf-8", "replace")
            if reply.value.startswith(_AUTH_ERRORS):
                raise AuthError(f"{self.spec.address} refused {what.split()[0]} for user "
                                f"{self.spec.username or 'default'!r}: {message}")
            raise EndpointError(f"{what} failed on {self.spec.address}: {message}")
        return reply

    def call(self, *args: Any) -> Any:
        """Send one command and return its typed reply."""
        if self._sock is None:
            raise EndpointError(f"connection to {self.spec.address} is closed")
        try:
            self._sock.sendall(resp.encode_command(*args))
            while True:
                reply = self._reader.get()
                if reply is not None:
                    return reply
                data = self._sock.recv(1 << 16)
                if not data:
                    raise UnavailableError(f"{self.spec.address} closed the connection")
                self._reader.feed(data)
        except socket.timeout as exc:
            self.close()
            raise UnavailableError(f"{self.spec.address} did not answer within {self.timeout:g}s") from exc
        except resp.ProtocolError as exc:
            self.close()
            raise EndpointError(f"{self.spec.address} sent a malformed reply: {exc}") from exc
        except OSError as exc:
            self.close()
            raise UnavailableError(f"connection to {self.spec.address} failed: {exc.strerror or exc}") from exc

    def call_checked(self, *args: Any) -> Any:
        """Like ``call``, but a server error raises ``EndpointError``."""
        return self._checked(self.call(*args), str(args[0]) if args else "command")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
