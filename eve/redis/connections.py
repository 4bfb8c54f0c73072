"""Blocking RESP connections opened from a ConnectionSpec.

``Connection`` is what every kind shares, written once: the socket (TLS when the
spec asks), the handshake (HELLO 3 or AUTH, CLIENT SETNAME, SELECT), close and
reopen. Two kinds build on it:

* ``RedisConnection`` (here), for the coordinator's direct endpoint calls and
  checks: replies keep their RESP type (simple string, bulk, error, RESP3 map,
  ...), which other clients fold away.
* ``eve.redis.wire.FastConnection``, for pipelines of pre-encoded commands parsed
  by hiredis (the bulk copy, the cluster client, keyspace subscriptions).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Callable

from eve.core.endpoints import ConnectionSpec
from eve.core.errors import AuthError, EndpointError, UnavailableError
from eve.redis import resp

__all__ = ["Connection", "RedisConnection", "DEFAULT_TIMEOUT", "open_socket", "handshake", "checked", "transport_error"]

DEFAULT_TIMEOUT = 5.0
_AUTH_ERRORS = (b"WRONGPASS", b"NOAUTH", b"NOPERM", b"ERR invalid password", b"ERR AUTH",
                b"ERR Client sent AUTH")


def open_socket(spec: ConnectionSpec, timeout: float) -> socket.socket:
    """A connected socket (TLS-wrapped when the spec asks), or UnavailableError naming the address."""
    try:
        sock = socket.create_connection((spec.host, spec.port), timeout=timeout)
    except OSError as exc:
        raise UnavailableError(f"cannot connect to {spec.address}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if spec.tls:
        context = ssl.create_default_context(cafile=spec.tls_ca_file)
        if spec.tls_insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            sock = context.wrap_socket(sock, server_hostname=spec.tls_server_name or spec.host)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise UnavailableError(f"TLS handshake with {spec.address} failed: {exc}") from exc
    return sock


def transport_error(spec: ConnectionSpec, timeout: float, exc: BaseException) -> EndpointError:
    """The Eve error for a failed round trip: a timeout or socket error means the server is
    unavailable; anything else (a malformed reply) is the server's fault."""
    if isinstance(exc, socket.timeout):
        return UnavailableError(f"{spec.address} did not answer within {timeout:g}s")
    if isinstance(exc, OSError):
        return UnavailableError(f"connection to {spec.address} failed: {exc.strerror or exc}")
    return EndpointError(f"{spec.address} sent a malformed reply: {exc}")


def checked(spec: ConnectionSpec, reply: Any, error: bytes | None, what: str) -> Any:
    """Raise for a server error reply (AuthError for credential refusals)."""
    if error is None:
        return reply
    message = error.decode("utf-8", "replace")
    if error.startswith(_AUTH_ERRORS):
        raise AuthError(f"{spec.address} refused {what.split()[0]} for user "
                        f"{spec.username or 'default'!r}: {message}")
    raise EndpointError(f"{what} failed on {spec.address}: {message}")


def handshake(spec: ConnectionSpec, call: Callable[..., Any], error_text: Callable[[Any], bytes | None], *,
              db: int, client_name: str, protocol: int) -> None:
    """HELLO 3 or AUTH, CLIENT SETNAME, SELECT: the same for every kind of connection."""
    user = spec.username or "default"
    if protocol == 3:
        args: list[Any] = ["HELLO", 3]
        if spec.password:
            args += ["AUTH", user, spec.password]
        reply = call(*args)
        checked(spec, reply, error_text(reply), "HELLO 3")
    elif spec.password:
        auth = ["AUTH", user, spec.password] if spec.username else ["AUTH", spec.password]
        reply = call(*auth)
        checked(spec, reply, error_text(reply), "AUTH")
    # Name the connection so operators can find Eve in CLIENT LIST; a server
    # that refuses CLIENT SETNAME (ACL) is not a reason to fail.
    call("CLIENT", "SETNAME", client_name)
    if db:
        reply = call("SELECT", db)
        checked(spec, reply, error_text(reply), f"SELECT {db}")


class Connection:
    """One connection's life: opened from a spec (socket, then the handshake), closed, reopened.

    Subclasses say how a reply is read (``_new_reader``, ``_roundtrip``), how an error
    reply looks (``_error_text``) and which protocol they speak (``_protocol``).

    ``on_open(conn)`` runs after every handshake, the first and each reopen, before the
    connection carries anything else: the place to check that the server behind the
    address is still the one the caller wrote to (``eve.redis.cluster`` compares its
    ``run_id``). What it raises fails the open, and the connection is closed.
    """

    default_timeout = DEFAULT_TIMEOUT

    def __init__(self, spec: ConnectionSpec, *, timeout: float | None = None, db: int = 0,
                 client_name: str = "eve", on_open: Callable[["Connection"], None] | None = None) -> None:
        self.spec = spec
        self.timeout = self.default_timeout if timeout is None else timeout
        self.db = db
        self.client_name = client_name
        self.on_open = on_open
        self._sock: socket.socket | None = None
        self._reader = self._new_reader()

    def __enter__(self) -> "Connection":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, db={self.db})"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        """(Re)open: a fresh socket and reader, then HELLO/AUTH, CLIENT SETNAME and SELECT."""
        self.close()
        self._reader = self._new_reader()
        self._sock = open_socket(self.spec, self.timeout)
        try:
            handshake(self.spec, self._roundtrip, self._error_text, db=self.db, client_name=self.client_name,
                      protocol=self._protocol())
            if self.on_open is not None:
                self.on_open(self)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def abort(self) -> None:
        """From another thread: end the connection now. A thread blocked reading it wakes
        with an error (shutdown wakes a blocked recv; close alone does not on Linux)."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed or never connected

    # -- what a kind of connection defines ----------------------------------------

    def _new_reader(self) -> Any:
        raise NotImplementedError

    def _protocol(self) -> int:
        return 2

    def _roundtrip(self, *args: Any) -> Any:
        """Send one command on the open socket and return its reply."""
        raise NotImplementedError

    @staticmethod
    def _error_text(reply: Any) -> bytes | None:
        raise NotImplementedError


class RedisConnection(Connection):
    """One connection: socket (TLS when asked), then HELLO/AUTH and SELECT.

    ``call`` returns the reply as a typed ``eve.redis.resp`` value; a server error is
    a ``resp.Error`` value, not an exception, since for a user's command it is the
    answer. Transport failures raise ``UnavailableError`` naming the address.
    """

    def __enter__(self) -> "RedisConnection":
        self.open()
        return self

    def _new_reader(self) -> resp.Reader:
        return resp.Reader()

    def _protocol(self) -> int:
        return self.spec.protocol_version

    @staticmethod
    def _error_text(reply: Any) -> bytes | None:
        return reply.value if isinstance(reply, resp.Error) else None

    def _roundtrip(self, *args: Any) -> Any:
        return self.call(*args)

    def _checked(self, reply: Any, what: str) -> Any:
        return checked(self.spec, reply, self._error_text(reply), what)

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
        except (OSError, resp.ProtocolError) as exc:
            self.close()
            raise transport_error(self.spec, self.timeout, exc) from exc

    def call_checked(self, *args: Any) -> Any:
        """Like ``call``, but a server error raises ``EndpointError``."""
        return self._checked(self.call(*args), str(args[0]) if args else "command")
