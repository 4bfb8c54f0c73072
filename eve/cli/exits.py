"""What every ``eve`` command's exit code means, and where its token comes from.

Exit codes say who failed: 0 success, 1 the job finished with failures (error
keys, differences), 2 bad input, an unreachable server or refused credentials,
3 a failure in the source, 4 in the target, 5 a call in the wrong state, 70 an
internal error, 130 interrupted (Ctrl-C), 141 the output's reader went away
(``| head``). ``exit_code_for`` maps Eve's errors; ``eve.cli.remote`` maps gRPC
status codes onto the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

from eve.core.errors import AuthError, ConfigError, EveError, SourceError, StateError, TargetError, UnavailableError

__all__ = ["EXIT_OK", "EXIT_FAILURES", "EXIT_USAGE", "EXIT_SOURCE", "EXIT_TARGET", "EXIT_STATE", "EXIT_INTERNAL",
           "EXIT_INTERRUPTED", "EXIT_BROKEN_PIPE", "exit_code_for", "read_token"]

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_SOURCE = 3
EXIT_TARGET = 4
EXIT_STATE = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, (ConfigError, UnavailableError, AuthError)):
        return EXIT_USAGE
    if isinstance(exc, SourceError):
        return EXIT_SOURCE
    if isinstance(exc, TargetError):
        return EXIT_TARGET
    if isinstance(exc, StateError):
        return EXIT_STATE
    return EXIT_INTERNAL if not isinstance(exc, EveError) else EXIT_FAILURES


def read_token(token_file: str | None) -> str | None:
    """The API token from ``--token-file``, else ``EVE_TOKEN``: ``eve serve`` and the API clients
    read the same sources, so the token never has to be on a command line."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {token_file}: {exc.strerror}", field="--token-file") from None
        if not token:
            raise ConfigError(f"{token_file} is empty", field="--token-file")
        return token
    return os.environ.get("EVE_TOKEN") or None
