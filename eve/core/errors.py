"""Eve's error tree, split by who failed.

    EveError
    +-- ConfigError          bad input: a config, URL, setup or request field (INVALID_ARGUMENT)
    +-- NotFoundError        a named endpoint, interlay or run does not exist (NOT_FOUND)
    +-- AlreadyExistsError   the name is taken (ALREADY_EXISTS)
    +-- StateError           the call is not allowed in the current state (FAILED_PRECONDITION)
    +-- StorageError         the state file cannot be written; ``path`` names it (UNAVAILABLE)
    |   +-- StorageFullError ... its disk is full (RESOURCE_EXHAUSTED)
    +-- EndpointError        a Redis-compatible server failed us; ``side`` says which one
    |   +-- SourceError      ... the source of a run
    |   +-- TargetError      ... the target (or a mirror target) of a run
    |   +-- UnavailableError ... could not be reached at all (UNAVAILABLE)
    |   +-- AuthError        ... refused our credentials (PERMISSION_DENIED)
    |   +-- ServerRestarted  ... answers with another run_id than the one Eve wrote to: it
    |                            restarted and may have lost what it held (eve.redis.cluster)
    +-- ProtocolError        bytes that are not RESP (eve.redis.resp); the peer sent them
    +-- FrameError           a frame between Eve's processes that cannot be decoded (eve.core.frames)
    +-- LogicalCopyError     one key cannot be copied with ordinary commands (eve.redis.logical)
        +-- UnsupportedTypeError   ... its type (a module type) has no logical form

``side`` is a ``Side`` (source, target, internal) or None where the server is no side
of a run (a direct endpoint call). An ``UnavailableError``/``AuthError`` raised where
the side is known carries it, so callers read ``exc.side`` instead of re-wrapping
the error into ``SourceError``/``TargetError`` to say who failed; ``who_failed(exc)``
answers for any error, the subclasses included.

gRPC status codes are assigned in one place: ``eve.api.interceptors`` maps the classes.
Messages name the problem and never carry a secret.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "EveError",
    "ConfigError",
    "NotFoundError",
    "AlreadyExistsError",
    "StateError",
    "StorageError",
    "StorageFullError",
    "EndpointError",
    "SourceError",
    "TargetError",
    "UnavailableError",
    "AuthError",
    "ServerRestarted",
    "ProtocolError",
    "FrameError",
    "LogicalCopyError",
    "UnsupportedTypeError",
    "Side",
    "who_failed",
]


class Side(str, Enum):
    """Who failed: the value a worker's FAILED frame carries and an EndpointError's ``side``."""

    SOURCE = "source"      # the run's source (the authoritative side before cutover)
    TARGET = "target"      # the run's target or a mirror target
    INTERNAL = "internal"  # Eve itself: a bug, a lost worker, a frame that cannot be decoded


class EveError(Exception):
    """Base of every error Eve raises on purpose."""


class ConfigError(EveError):
    """Bad input. ``field`` names the offending field (dotted path) when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotFoundError(EveError):
    pass


class AlreadyExistsError(EveError):
    pass


class StateError(EveError):
    pass


class StorageError(EveError):
    """The coordinator's state file cannot be written (or read): the change asked for was not
    made, and nothing of it was written. ``path`` is the file."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class StorageFullError(StorageError):
    """The state file's disk (or quota) is full."""


class EndpointError(EveError):
    """A server answered in a way we cannot work with. ``side`` says which side of a run it is,
    when the raiser knows; ``SourceError`` and ``TargetError`` know by their class."""

    side_of_class: Side | None = None

    def __init__(self, *args: object, side: Side | str | None = None) -> None:
        super().__init__(*args)
        self.side: Side | None = Side(side) if side is not None else self.side_of_class

    def __reduce__(self):  # keeps ``side`` across processes (pickle rebuilds from args alone)
        return _rebuild_endpoint_error, (type(self), self.args, self.side)

    def on_side(self, side: Side | str) -> EndpointError:
        """This error, now saying which side failed (when it did not say yet); returns self."""
        if self.side is None:
            self.side = Side(side)
        return self


class SourceError(EndpointError):
    side_of_class = Side.SOURCE


class TargetError(EndpointError):
    side_of_class = Side.TARGET


class UnavailableError(EndpointError):
    """The server could not be reached (connection refused, timeout, TLS failure)."""


class AuthError(EndpointError):
    """The server refused the configured credentials."""


class ServerRestarted(EndpointError):
    """The server on ``address`` answers with another ``run_id`` than the one the caller
    wrote to: it restarted, and may have lost what it held (module docstring)."""

    def __init__(self, role: str, address: str, before: str, after: str, *, side: Side | str | None = None) -> None:
        super().__init__(f"{role} {address} restarted (run_id {before} before, {after} now): what was written "
                         "to it before may be lost", side=side)
        self.role = role
        self.address = address
        self.before = before
        self.after = after

    def __reduce__(self):  # pickle rebuilds from the fields, not from the message
        return _rebuild_restarted, (type(self), self.role, self.address, self.before, self.after, self.side)


def _rebuild_restarted(cls: type[ServerRestarted], role: str, address: str, before: str, after: str,
                       side: Side | None) -> ServerRestarted:
    return cls(role, address, before, after, side=side)


class ProtocolError(EveError):
    """Malformed RESP. The message uses Redis' wording where Redis has one."""


class FrameError(EveError, ValueError):
    """A frame between Eve's processes that cannot be decoded: a bug or a version mismatch."""


class LogicalCopyError(EveError):
    """The key cannot be copied logically. ``reply`` is the server's error text when one refused it."""

    def __init__(self, message: str, *, reply: str | None = None) -> None:
        super().__init__(message)
        self.reply = reply


# Key types (as TYPE names them) of well-known modules -> the module (as MODULE LIST names it),
# so that an error key says which module the target lacks (issue 23).
MODULE_OF_TYPE = {
    "ReJSON-RL": "ReJSON", "MBbloom--": "bf", "MBbloomCF": "bf", "TopK-TYPE": "bf", "CMSk-TYPE": "bf",
    "TDIS-TYPE": "bf", "TSDB-TYPE": "timeseries", "graphdata": "graph",
}


def name_module(type_name: str, reason: str) -> str:
    """``reason`` for a key of ``type_name``, saying which module the type is of when it is a
    well-known module's and the reason does not say it yet (error keys name the module)."""
    module = MODULE_OF_TYPE.get(type_name)
    if module is None or "of module" in reason:
        return reason
    return f"a {type_name!r} key (of module {module!r}): {reason}"


class UnsupportedTypeError(LogicalCopyError):
    """The key's type (a module type) has no logical form here."""

    def __init__(self, type_name: str, supported: tuple[str, ...] = ()) -> None:
        only = f": only {', '.join(supported)} can" if supported else ""
        module = MODULE_OF_TYPE.get(type_name)
        of = f"of module {module!r}" if module else "a module type"
        super().__init__(f"a {type_name!r} key ({of}) cannot be copied logically{only}")
        self.type = type_name


def _rebuild_endpoint_error(cls: type[EndpointError], args: tuple[object, ...],
                            side: Side | None) -> EndpointError:
    error = cls(*args)
    error.side = side
    return error


def who_failed(exc: BaseException) -> Side:
    """Which side an error says failed; anything that is not an endpoint's error is Eve's own."""
    if isinstance(exc, EndpointError) and exc.side is not None:
        return exc.side
    return Side.INTERNAL
