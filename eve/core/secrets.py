"""Credentials encrypted at rest: the key of a state file (issue 19, item 5).

Endpoint passwords in the coordinator's state file are sealed with a key kept apart
from it (a key file, ``eve serve --key-file``, or the ``EVE_STATE_KEY`` environment
variable): a copied backup of the file no longer carries every database's credentials.
The cipher is ``cryptography``'s Fernet (AES-128-CBC with an HMAC-SHA256 over it, a
timestamp and a random IV per value): authenticated, so a wrong key is told apart from
a damaged value. A sealed password is stored as ``SEALED_PREFIX`` + the Fernet token,
in place of the clear text, inside the config's JSON.

A key is 32 random bytes in URL-safe base64 (44 characters), as
``eve state new-key FILE`` writes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from eve.core.errors import ConfigError

__all__ = ["KEY_ENV", "SEALED_PREFIX", "StateKey", "is_sealed", "map_passwords", "write_new_key"]

KEY_ENV = "EVE_STATE_KEY"
SEALED_PREFIX = "eve-sealed:v1:"


class StateKey:
    """One Fernet key and where it came from (said in errors; the key itself never is)."""

    __slots__ = ("_fernet", "source")

    def __init__(self, key: bytes | str, source: str) -> None:
        self.source = source
        raw = key.strip() if isinstance(key, bytes) else key.strip().encode()
        try:
            self._fernet = Fernet(raw)
        except (ValueError, TypeError):
            raise ConfigError(f"{source} does not hold a state key: expected 32 bytes in URL-safe base64 "
                              "(44 characters), as 'eve state new-key FILE' writes") from None

    def __repr__(self) -> str:
        return f"StateKey({self.source})"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> StateKey:
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
        return cls(text, f"the key file {path}")

    @classmethod
    def from_options(cls, key_file: str | None, environ: dict[str, str] | os._Environ[str]) -> StateKey | None:
        """The key of ``--key-file``, else of ``EVE_STATE_KEY``, else None."""
        if key_file:
            return cls.from_file(key_file)
        text = environ.get(KEY_ENV, "")
        return cls(text, KEY_ENV) if text.strip() else None

    def seal(self, text: str) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, sealed: str, where: str) -> str:
        """The clear text of a sealed value; ConfigError naming ``where`` when this key did not seal it."""
        try:
            return self._fernet.decrypt(sealed[len(SEALED_PREFIX):].encode("ascii")).decode()
        except (InvalidToken, ValueError, UnicodeError):
            raise ConfigError(f"{self.source} does not open the credentials in {where}: a wrong key "
                              "(or the value was damaged)") from None


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


def map_passwords(config: Any, change: Callable[[str], str]) -> Any:
    """A copy of ``config`` (JSON values) with ``change`` applied to every non-empty ``password``
    string, at any depth."""
    if isinstance(config, dict):
        return {key: (change(value) if key == "password" and isinstance(value, str) and value
                      else map_passwords(value, change)) for key, value in config.items()}
    if isinstance(config, list):
        return [map_passwords(item, change) for item in config]
    return config


def write_new_key(path: str | os.PathLike[str]) -> None:
    """A new random key in a file readable by its owner alone; an existing file is never replaced."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists already: a key file is never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot create the key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(Fernet.generate_key() + b"\n")
