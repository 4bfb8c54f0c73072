"""The command table of a backend, from its own ``COMMAND`` (``COMMAND INFO``) reply.

DESIGN.md section 5: the keys of a command come from the key specifications
the backend itself reports, never from a hand-written table, so module
commands and commands newer than Eve are covered.

``keys(args)`` follows the server's ``getKeysUsingKeySpecs`` (``db.c``;
https://redis.io/docs/latest/develop/reference/key-specs/):

* begin_search ``index``: the first key is at ``pos``;
  ``keyword``: the first key follows the first occurrence of ``keyword``,
  searched from ``startfrom`` (a negative ``startfrom`` searches backwards from
  the end); a missing keyword means the spec finds no key.
* find_keys ``range``: keys from the first one to ``lastkey`` (relative to the
  first; negative counts from the end, and with ``limit`` only a 1/limit part
  of the remaining arguments is keys), every ``keystep``;
  ``keynum``: the argument ``keynumidx`` after the first holds the number of
  keys, which start ``firstkey`` after it, every ``keystep``.

A spec whose positions fall outside the arguments (a syntax error the command
itself will report) contributes no key, as the server's partial search does.
Commands without key specs (servers before 7.0) fall back to the legacy
first/last/step triple. That triple cannot say where the keys of a command
flagged ``movablekeys`` are (``EVAL``'s are counted by ``numkeys``): for the
movable-key commands of Redis 6.2, the specs Redis 7.0 reports for them are
used (``_LEGACY_MOVABLE``, issue 23), so a script's declared keys are still
recorded dirty on a 6.2 source. Specs of type ``unknown`` (``SORT ... STORE``,
``MIGRATE ... KEYS``) cannot be followed without the command's own code:
``incomplete_keys`` tells which commands have one.

Exception tree: none of its own; a malformed COMMAND reply raises ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eve.redis import resp

__all__ = ["CommandInfo", "CommandTable", "KeySpec"]


_MAX_NAMES = 10_000  # distinct spellings of command names remembered


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _pairs(value: Any) -> dict[str, Any]:
    """A RESP3 map (dict) or a RESP2 flat key/value list as a dict with str keys."""
    if isinstance(value, Mapping):
        return {_text(k): v for k, v in value.items()}
    if isinstance(value, list):
        return {_text(value[i]): value[i + 1] for i in range(0, len(value) - 1, 2)}
    return {}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _flags(value: Any) -> frozenset[str]:
    if isinstance(value, (list, set, frozenset, tuple)):
        return frozenset(_text(flag).lower() for flag in value)
    return frozenset()


_WRITE_SPEC_FLAGS = frozenset(("ow", "rw", "rm"))


@dataclass(frozen=True)
class KeySpec:
    """One key specification. ``begin`` is ``("index", pos)``,
    ``("keyword", keyword, startfrom)`` or ``("unknown",)``; ``find`` is
    ``("range", lastkey, keystep, limit)``, ``("keynum", keynumidx, firstkey,
    keystep)`` or ``("unknown",)``."""

    flags: frozenset[str]
    begin: tuple
    find: tuple

    @property
    def known(self) -> bool:
        return self.begin[0] != "unknown" and self.find[0] != "unknown"

    @classmethod
    def from_reply(cls, raw: Any) -> KeySpec:
        spec = _pairs(raw)
        begin_search = _pairs(spec.get("begin_search"))
        begin_type = _text(begin_search.get("type", "unknown"))
        begin_args = _pairs(begin_search.get("spec"))
        if begin_type == "index":
            begin: tuple = ("index", _int(begin_args.get("index")))
        elif begin_type == "keyword":
            keyword = begin_args.get("keyword", b"")
            keyword = keyword if isinstance(keyword, bytes) else _text(keyword).encode()
            begin = ("keyword", keyword.lower(), _int(begin_args.get("startfrom")))
        else:
            begin = ("unknown",)
        find_keys = _pairs(spec.get("find_keys"))
        find_type = _text(find_keys.get("type", "unknown"))
        find_args = _pairs(find_keys.get("spec"))
        if find_type == "range":
            find: tuple = ("range", _int(find_args.get("lastkey")), max(1, _int(find_args.get("keystep"), 1)),
                           _int(find_args.get("limit")))
        elif find_type == "keynum":
            find = ("keynum", _int(find_args.get("keynumidx")), _int(find_args.get("firstkey")),
                    max(1, _int(find_args.get("keystep"), 1)))
        else:
            find = ("unknown",)
        return cls(flags=_flags(spec.get("flags")), begin=begin, find=find)

    def positions(self, args: Sequence[bytes]) -> list[int]:
        """Argument indexes of the keys this spec finds (``args[0]`` is the command name)."""
        argc = len(args)
        kind = self.begin[0]
        if kind == "index":
            first = self.begin[1]
        elif kind == "keyword":
            keyword, startfrom = self.begin[1], self.begin[2]
            # db.c: forwards up to (not including) the last argument, or
            # backwards down to (not including) argument 1.
            if startfrom > 0:
                indexes: Iterable[int] = range(startfrom, argc - 1)
            else:
                indexes = range(argc + startfrom, 1, -1)
            first = 0
            for i in indexes:
                if 1 <= i < argc and args[i].lower() == keyword:
                    first = i + 1
                    break
            if not first:
                return []
        else:
            return []
        kind = self.find[0]
        if kind == "range":
            lastkey, step, limit = self.find[1], self.find[2], self.find[3]
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                last = first + ((argc - first) // limit + lastkey)
        elif kind == "keynum":
            keynumidx, firstkey, step = self.find[1], self.find[2], self.find[3]
            if first + keynumidx >= argc:
                return []
            raw = args[first + keynumidx]
            if not raw.isdigit() or len(raw) > 18:
                return []
            numkeys = int(raw)
            first += firstkey
            last = first + numkeys - 1
        else:
            return []
        if last >= argc or last < first or first >= argc or first < 1:
            return []
        return list(range(first, last + 1, step))


def _spec(flags: str, begin: tuple, find: tuple) -> KeySpec:
    return KeySpec(flags=frozenset(flags.lower().split()), begin=begin, find=find)


_NUMKEYS_AT_2 = (_spec("RW", ("index", 2), ("keynum", 0, 1, 1)),)             # EVAL script numkeys key...
_STORE_NUMKEYS = (_spec("OW", ("index", 1), ("range", 0, 1, 0)),             # ZUNIONSTORE dest numkeys key...
                  _spec("RO", ("index", 2), ("keynum", 0, 1, 1)))
_NUMKEYS_AT_1 = (_spec("RO", ("index", 1), ("keynum", 0, 1, 1)),)            # ZUNION numkeys key...
_POP_NUMKEYS_AT_1 = (_spec("RW", ("index", 1), ("keynum", 0, 1, 1)),)        # LMPOP numkeys key...
_STREAMS = (_spec("RO", ("keyword", b"streams", 1), ("range", -1, 1, 2)),)   # XREAD ... STREAMS key... id...
# Redis 7.0's key specs of the movable-key commands Redis 6.2 has (module docstring).
_LEGACY_MOVABLE: dict[str, tuple[KeySpec, ...]] = {
    "eval": _NUMKEYS_AT_2, "evalsha": _NUMKEYS_AT_2, "eval_ro": _NUMKEYS_AT_2, "evalsha_ro": _NUMKEYS_AT_2,
    "zunionstore": _STORE_NUMKEYS, "zinterstore": _STORE_NUMKEYS, "zdiffstore": _STORE_NUMKEYS,
    "zunion": _NUMKEYS_AT_1, "zinter": _NUMKEYS_AT_1, "zdiff": _NUMKEYS_AT_1,
    "lmpop": _POP_NUMKEYS_AT_1, "zmpop": _POP_NUMKEYS_AT_1,
    "xread": _STREAMS, "xreadgroup": _STREAMS,
}


@dataclass(frozen=True)
class CommandInfo:
    """One command (or subcommand, named ``container|sub``) as the server describes it."""

    name: str
    arity: int
    flags: frozenset[str]
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    acl_categories: frozenset[str] = frozenset()
    key_specs: tuple[KeySpec, ...] = ()
    subcommands: Mapping[str, CommandInfo] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, raw: Any) -> CommandInfo:
        if not isinstance(raw, list) or len(raw) < 6:
            raise ValueError(f"malformed COMMAND entry: {raw!r:.200}")
        name = _text(raw[0]).lower()
        specs = tuple(KeySpec.from_reply(spec) for spec in raw[8]) if len(raw) > 8 and \
            isinstance(raw[8], list) else ()
        if not specs and len(raw) <= 8 and "movablekeys" in _flags(raw[2]):
            specs = _LEGACY_MOVABLE.get(name, ())   # a server before 7.0 (module docstring)
        subs: dict[str, CommandInfo] = {}
        if len(raw) > 9 and isinstance(raw[9], list):
            for sub in raw[9]:
                info = cls.from_reply(sub)
                subs[info.name.split("|", 1)[-1]] = info
        return cls(
            name=name,
            arity=_int(raw[1]),
            flags=_flags(raw[2]),
            first_key=_int(raw[3]),
            last_key=_int(raw[4]),
            step=_int(raw[5]),
            acl_categories=_flags(raw[6]) if len(raw) > 6 else frozenset(),
            key_specs=specs,
            subcommands=subs,
        )

    @property
    def incomplete_keys(self) -> bool:
        """True when some keys can only be found by the command's own code."""
        return "movablekeys" in self.flags and (not self.key_specs or any(
            not spec.known or "incomplete" in spec.flags for spec in self.key_specs))

    def write_key_positions(self, args: Sequence[bytes]) -> list[int]:
        """Positions of the keys the command may change: those of key specs
        flagged ``OW``, ``RW`` or ``RM`` (all keys on servers without key specs)."""
        if self.key_specs:
            positions: list[int] = []
            for spec in self.key_specs:
                if spec.flags & _WRITE_SPEC_FLAGS:
                    positions.extend(spec.positions(args))
            return positions
        return self.key_positions(args)

    @property
    def may_write(self) -> bool:
        """The command, or one of its subcommands, is flagged ``write``."""
        return "write" in self.flags or any("write" in sub.flags for sub in self.subcommands.values())

    def key_positions(self, args: Sequence[bytes]) -> list[int]:
        if self.key_specs:
            positions: list[int] = []
            for spec in self.key_specs:
                positions.extend(spec.positions(args))
            return positions
        # Servers before 7.0: the legacy (first, last, step) triple.
        if self.first_key <= 0:
            return []
        argc = len(args)
        last = self.last_key if self.last_key >= 0 else argc + self.last_key
        if last >= argc or last < self.first_key:
            return []
        return list(range(self.first_key, last + 1, max(1, self.step)))


class CommandTable:
    """Lookups by the arguments of a request (subcommands included)."""

    def __init__(self, commands: Mapping[str, CommandInfo]) -> None:
        self.commands = dict(commands)
        # Command names as clients send them (b"SET", b"set") -> info: every forwarded
        # write is looked up while a live run tracks dirty keys.
        self._by_name: dict[bytes, CommandInfo | None] = {}
        # Writes whose one key is argument 1 (SET, INCR, HSET, LPUSH, ...): most writes.
        self._first_key_writes = frozenset(
            info.name for info in self.commands.values()
            if "write" in info.flags and len(info.key_specs) == 1
            and info.key_specs[0].flags & _WRITE_SPEC_FLAGS
            and info.key_specs[0].begin == ("index", 1) and info.key_specs[0].find[:3] == ("range", 0, 1))

    def __len__(self) -> int:
        return len(self.commands)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.commands

    @classmethod
    def from_reply(cls, reply: Any) -> CommandTable:
        """From the ``COMMAND`` (or ``COMMAND INFO``) reply, typed (``eve.redis.resp``) or plain."""
        value = resp.to_python(reply) if not isinstance(reply, list) else reply
        if isinstance(value, resp.Error):
            raise ValueError(f"COMMAND failed: {value.value.decode('utf-8', 'replace')}")
        if not isinstance(value, list):
            raise ValueError(f"COMMAND did not answer an array: {type(value).__name__}")
        commands: dict[str, CommandInfo] = {}
        for entry in value:
            if entry is None:  # COMMAND INFO of an unknown name
                continue
            info = CommandInfo.from_reply(entry)
            commands[info.name] = info
        return cls(commands)

    def lookup(self, args: Sequence[bytes]) -> CommandInfo | None:
        """The command (or its subcommand, when it has some and one is named) of a request."""
        if not args:
            return None
        name = args[0]
        try:
            info = self._by_name[name]
        except (KeyError, TypeError):
            info = self.commands.get(_text(name).lower())
            if isinstance(name, bytes) and len(self._by_name) < _MAX_NAMES:
                self._by_name[name] = info
        if info is None:
            return None
        if info.subcommands and len(args) > 1:
            return info.subcommands.get(_text(args[1]).lower(), info)
        return info

    def flags(self, args: Sequence[bytes]) -> frozenset[str]:
        info = self.lookup(args)
        return info.flags if info is not None else frozenset()

    def keys(self, args: Sequence[bytes]) -> list[bytes]:
        """The keys of a request, in the order of its key specs."""
        info = self.lookup(args)
        if info is None:
            return []
        return [bytes(args[i]) for i in info.key_positions(args)]

    def write_keys(self, args: Sequence[bytes]) -> list[bytes]:
        """The keys a request may change (key specs flagged OW/RW/RM), in order."""
        info = self.lookup(args)
        if info is None:
            return []
        return [bytes(args[i]) for i in info.write_key_positions(args)]

    def changed_keys(self, args: Sequence[bytes]) -> list[bytes]:
        """``write_keys`` of a request flagged ``write`` (one lookup); [] for anything else."""
        info = self.lookup(args)
        if info is None or "write" not in info.flags:
            return []
        if info.name in self._first_key_writes:
            return [bytes(args[1])] if len(args) > 1 else []
        return [bytes(args[i]) for i in info.write_key_positions(args)]

    def at_most_one_key(self, name: bytes | str) -> bool:
        """Every request of this name names at most one key (``SET``, ``GET``, ``HSET``,
        ``LPUSH``...): its keys cannot span slots, so nobody needs to look for them
        to count cross-slot commands. False when unknown or when subcommands decide."""
        info = self.commands.get(_text(name).lower())
        if info is None or info.subcommands or "movablekeys" in info.flags:
            return False
        if info.key_specs:
            return len(info.key_specs) == 1 and info.key_specs[0].find[:2] == ("range", 0)
        return info.first_key <= 0 or info.last_key == info.first_key

    def first_key_write(self, name: bytes | str) -> bool:
        """A write whose one changed key is argument 1 (``SET``, ``INCR``, ``HSET``...),
        with no subcommands: its keys need no key spec walk."""
        info = self.commands.get(_text(name).lower())
        return info is not None and not info.subcommands and info.name in self._first_key_writes

    def may_write(self, name: bytes | str) -> bool:
        """A command of this name (or one of its subcommands) is flagged ``write``."""
        info = self.commands.get(_text(name).lower())
        return info is not None and info.may_write

    def is_write(self, args: Sequence[bytes]) -> bool:
        return "write" in self.flags(args)

    def is_blocking(self, name: bytes | str) -> bool:
        info = self.commands.get(_text(name).lower())
        return info is not None and "blocking" in info.flags
