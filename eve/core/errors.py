"""Eve's error tree, split by who failed.

    EveError
    +-- ConfigError          bad input: a config, URL, setup or request field (INVALID_ARGUMENT)
    +-- NotFoundError        a named endpoint, interlay or run does not exist (NOT_FOUND)
    +-- AlreadyExistsError   the name is taken (ALREADY_EXISTS)
    +-- StateError           the call is not allowed in the current state (FAILED_PRECONDITION)
    +-- EndpointError        a Redis-compatible server failed us
    |   +-- SourceError      ... the source of a run
    |   +-- TargetError      ... the target (or a mirror target) of a run
    |   +-- UnavailableError ... could not be reached at all (UNAVAILABLE)
    |   +-- AuthError        ... refused our credentials (PERMISSION_DENIED)

gRPC status codes are assigned in one place: ``eve.api.server`` maps the classes.
Messages name the problem and never carry a secret.
"""

from __future__ import annotations

__all__ = [
    "EveError",
    "ConfigError",
    "NotFoundError",
    "AlreadyExistsError",
    "StateError",
    "EndpointError",
    "SourceError",
    "TargetError",
    "UnavailableError",
    "AuthError",
]


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


class EndpointError(EveError):
    """A server answered in a way we cannot work with."""


class SourceError(EndpointError):
    pass


class TargetError(EndpointError):
    pass


class UnavailableError(EndpointError):
    """The server could not be reached (connection refused, timeout, TLS failure)."""


class AuthError(EndpointError):
    """The server refused the configured credentials."""
