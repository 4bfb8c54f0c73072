"""RESP2/RESP3 codec, pure Python.

One scan of the wire format, three readers for three callers:

* ``scan_frame`` finds where a frame ends, building nothing, and can resume
  where more bytes are needed. The proxy forwards bytes as they came and needs
  no more than that (``frame_end`` is its one-shot form).
* ``parse`` / ``Reader`` build typed values from what that same scan found
  (its tokens), so validation is written once. The coordinator needs them to
  tell a simple string from a bulk string, an error from a value, ``$-1``
  from ``_``.
* ``parse_command`` reads a client request (multibulk or inline) into its
  arguments, with Redis' own rules and error messages (``networking.c``:
  ``processMultibulkBuffer``, ``processInlineBuffer``; ``sds.c``:
  ``sdssplitargs``). ``scan_multibulk`` is its walk over a multibulk request,
  which the proxy's request framing (``eve.redis.framing``) shares.

Exception tree::

    ProtocolError    malformed input; the stream cannot be resynchronised and the
                     connection has to be closed (DESIGN.md section 5)

Not supported: RESP3 streamed strings and aggregates (``$?``, ``*?``, ``;``,
``.``). No Redis server sends them; they are rejected as invalid lengths.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from eve.core.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_ARGS",
    "DEFAULT_MAX_BULK",
    "DEFAULT_MAX_DEPTH",
    "E_UNAUTHENTICATED_BULK",
    "E_UNAUTHENTICATED_MULTIBULK",
    "MAX_INLINE",
    "NIL",
    "UNAUTHENTICATED_MAX_ARGS",
    "UNAUTHENTICATED_MAX_BULK",
    "Array",
    "Attribute",
    "BigNumber",
    "Boolean",
    "BulkString",
    "Double",
    "Error",
    "Integer",
    "Map",
    "Nil",
    "ProtocolError",
    "Push",
    "Reader",
    "Set",
    "SimpleString",
    "Verbatim",
    "encode",
    "encode_command",
    "frame_end",
    "parse",
    "parse_command",
    "scan_frame",
    "scan_multibulk",
    "to_python",
]

# Redis' proto-max-bulk-len default.
DEFAULT_MAX_BULK = 512 * 1024 * 1024
DEFAULT_MAX_DEPTH = 128
# Redis' multibulk count limit (``processMultibulkBuffer``: ``ll > INT_MAX``):
# a count up to it is accepted and waits for its arguments (issue 19).
DEFAULT_MAX_ARGS = 2**31 - 1
# And for a client that has not authenticated yet on a server that requires it
# ("unauthenticated multibulk length" / "unauthenticated bulk length").
UNAUTHENTICATED_MAX_ARGS = 10
UNAUTHENTICATED_MAX_BULK = 16384
# Redis' PROTO_INLINE_MAX_SIZE: the longest inline request, and the longest
# count line ("*123", "$45") before it is refused as "too big".
MAX_INLINE = 64 * 1024


# ---------------------------------------------------------------------------
# Typed values
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Text:
    """A string value; subclasses differ by type only (equality compares the class too)."""

    value: bytes


@dataclass(frozen=True, slots=True)
class _Number:
    """An integer value; subclasses differ by type only."""

    value: int


class SimpleString(_Text):
    """``+OK``"""

    __slots__ = ()


class BulkString(_Text):
    """``$3\\r\\nfoo``"""

    __slots__ = ()


class Integer(_Number):
    """``:42``"""

    __slots__ = ()


@dataclass(frozen=True, slots=True, eq=False)
class Double:
    """``,3.14`` (RESP3). ``inf``, ``-inf`` and ``nan``; NaN equals NaN here so
    that a parsed reply compares equal to the value it was encoded from."""

    value: float

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Double:
            return NotImplemented
        a, b = self.value, other.value  # type: ignore[attr-defined]
        return a == b or (a != a and b != b)

    def __hash__(self) -> int:
        return hash("nan") if self.value != self.value else hash(self.value)


@dataclass(frozen=True, slots=True)
class Nil:
    """``$-1`` (RESP2 null bulk), ``*-1`` (RESP2 null array) or ``_`` (RESP3).

    All nils compare equal; ``marker`` (``b"$"``, ``b"*"`` or ``b"_"``) only
    remembers the spelling so that ``encode`` gives back the same bytes.
    """

    marker: bytes = field(default=b"$", compare=False)


@dataclass(frozen=True, slots=True)
class Boolean:
    """``#t`` / ``#f`` (RESP3)"""

    value: bool


class BigNumber(_Number):
    """``(3492890328409238509324850943850943825024385`` (RESP3)"""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Error:
    """``-ERR message`` or the RESP3 blob error ``!len``.

    ``blob`` only remembers the spelling (it takes no part in equality); a
    message holding CR or LF is always encoded as a blob error.
    """

    value: bytes
    blob: bool = field(default=False, compare=False)

    @property
    def kind(self) -> bytes:
        """The error code: the first word, e.g. ``b"ERR"``, ``b"MOVED"``, ``b"WRONGTYPE"``."""
        return self.value.split(b" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Verbatim:
    """``=15\\r\\ntxt:Some string`` (RESP3); ``format`` is three bytes."""

    format: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class _Items:
    """An aggregate: its elements in wire order. Subclasses differ by type
    only (equality compares the class too)."""

    items: list


class Array(_Items):
    """``*N``"""

    __slots__ = ()


class Set(_Items):
    """``~N`` (RESP3)"""

    __slots__ = ()


class Push(_Items):
    """``>N`` (RESP3 out-of-band data: Pub/Sub messages, invalidations)"""

    __slots__ = ()


class Map(_Items):
    """``%N`` (RESP3): ``items`` is a list of (key, value) pairs, in wire order."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Attribute:
    """``|N`` (RESP3): N (key, value) pairs, then the value they annotate."""

    items: list
    value: object


NIL = Nil()
_NIL_ARRAY = Nil(b"*")
_NULL = Nil(b"_")
_NILS = {b"$": b"$-1\r\n", b"*": b"*-1\r\n", b"_": b"_\r\n"}

# ---------------------------------------------------------------------------
# Wire constants and messages
# ---------------------------------------------------------------------------

_BULK = 0x24  # $
_ARRAY = 0x2A  # *
_SIMPLE = 0x2B  # +
_ERROR = 0x2D  # -
_INTEGER = 0x3A  # :
_NULL_T = 0x5F  # _
_DOUBLE = 0x2C  # ,
_BOOLEAN = 0x23  # #
_BLOB_ERROR = 0x21  # !
_VERBATIM = 0x3D  # =
_BIG_NUMBER = 0x28  # (
_MAP = 0x25  # %
_SET = 0x7E  # ~
_PUSH = 0x3E  # >
_ATTRIBUTE = 0x7C  # |
_LINE_TYPES = frozenset((_INTEGER, _NULL_T, _DOUBLE, _BOOLEAN, _BIG_NUMBER))

# Aggregate type -> (elements per count, extra elements). An attribute is its
# pairs plus the value it annotates, and counts as one element of its parent.
_AGGREGATES = {
    _ARRAY: (1, 0),
    _SET: (1, 0),
    _PUSH: (1, 0),
    _MAP: (2, 0),
    _ATTRIBUTE: (2, 1),
}
_AGGREGATE_NAMES = {
    _ARRAY: "multibulk",
    _SET: "set",
    _PUSH: "push",
    _MAP: "map",
    _ATTRIBUTE: "attribute",
}
_LINE_TYPES = frozenset(
    (_SIMPLE, _ERROR, _INTEGER, _NULL_T, _DOUBLE, _BOOLEAN, _BIG_NUMBER)
)
_BLOB_TYPES = frozenset((_BULK, _BLOB_ERROR, _VERBATIM))
_TYPES = _LINE_TYPES | _BLOB_TYPES | frozenset(_AGGREGATES)

# A length longer than this many digits is beyond any max_bulk anyway; it also
# keeps int() away from huge digit strings.
_MAX_LENGTH_DIGITS = 18

_DOUBLE_RE = re.compile(
    rb"[+-]?(?:inf|nan|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
)

_E_BULK_LENGTH = "Protocol error: invalid bulk length"
_E_BULK_CRLF = "Protocol error: bulk data not followed by CRLF"
_E_MULTIBULK_LENGTH = "Protocol error: invalid multibulk length"
E_UNAUTHENTICATED_MULTIBULK = "Protocol error: unauthenticated multibulk length"
E_UNAUTHENTICATED_BULK = "Protocol error: unauthenticated bulk length"


def _show(byte: int) -> str:
    return chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"


def _too_deep(max_depth: int) -> ProtocolError:
    return ProtocolError(f"Protocol error: nesting deeper than {max_depth} levels")


def _bad_type(byte: int) -> ProtocolError:
    return ProtocolError(f"Protocol error: invalid type byte '{_show(byte)}'")


def _open_line(t: int, pending: int, max_bulk: int) -> None:
    """A line has no CRLF yet: fail now if it never can be valid."""
    if t not in _TYPES:
        raise _bad_type(t)
    if t == _SIMPLE or t == _ERROR:
        if pending > max_bulk:
            raise ProtocolError("Protocol error: too big simple string")
    elif pending > MAX_INLINE:
        if t == _BULK:
            raise ProtocolError("Protocol error: too big bulk count string")
        if t == _ARRAY:
            raise ProtocolError("Protocol error: too big mbulk count string")
        raise ProtocolError("Protocol error: too big line")


def _is_integer(s) -> bool:
    return s.isdigit() or ((s[:1] == b"-" or s[:1] == b"+") and s[1:].isdigit())


def _buffer(buf):
    # bytes and bytearray have .find; a memoryview has not, and is copied once.
    if isinstance(buf, memoryview):
        return buf.tobytes()
    return buf


# ---------------------------------------------------------------------------
# Frame boundaries
# ---------------------------------------------------------------------------


def scan_frame(buf, pos: int, remaining: int, stack: list, max_bulk: int, max_depth: int = DEFAULT_MAX_DEPTH,
               tokens: list | None = None, strict: bool = True):
    """Skip over frames without building values, validating as it goes.

    ``remaining`` is how many elements are still due at the current level and
    ``stack`` holds that count for each enclosing level (a fresh frame: 1 and
    ``[]``). Returns ``(end, pos, remaining, need)``: ``end`` is the frame's end
    or -1; when -1, scanning can resume at ``pos`` with ``remaining`` and
    ``stack`` (only complete elements have been consumed), and nothing can
    change before the buffer holds ``need`` bytes.

    With ``tokens``, every element consumed is appended to it, for ``_build``:
    ``(type, start, end)`` for a string or line (its payload is
    ``buf[start:end]``; ``start`` -1 for ``$-1``), ``(type, count)`` for an
    aggregate header (elements due, -1 for ``*-1``).

    With ``strict`` False (a proxy forwarding replies byte for byte), the text of a
    line (integer, double, boolean, null, big number) is not checked: its CRLF alone
    ends it, and a server's reply a client would get as is directly (a script's
    ``{big_number='123\\r\\n123'}`` arrives as ``(123  123``) is framed, not refused.
    """
    n = len(buf)
    find = buf.find
    keep = tokens is not None
    while True:
        if pos >= n:
            return -1, pos, remaining, n + 1
        t = buf[pos]
        eol = find(b"\r\n", pos + 1)
        if eol < 0:
            _open_line(t, n - pos, max_bulk)
            return -1, pos, remaining, n + 1
        if t == _BULK or t == _BLOB_ERROR or t == _VERBATIM:
            s = buf[pos + 1 : eol]
            if s.isdigit() and len(s) <= _MAX_LENGTH_DIGITS:
                length = int(s)
                if length > max_bulk:
                    raise ProtocolError(_E_BULK_LENGTH)
                end = eol + 2 + length
                if end + 2 > n:
                    return -1, pos, remaining, end + 2
                if buf[end] != 13 or buf[end + 1] != 10:
                    raise ProtocolError(_E_BULK_CRLF)
                if t == _VERBATIM and (length < 4 or buf[eol + 5] != 0x3A):
                    raise ProtocolError("Protocol error: invalid verbatim string")
                if keep:
                    tokens.append((t, eol + 2, end))  # type: ignore[union-attr]
                pos = end + 2
            elif s == b"-1" and t == _BULK:
                if keep:
                    tokens.append((t, -1, -1))  # type: ignore[union-attr]
                pos = eol + 2
            else:
                raise ProtocolError(_E_BULK_LENGTH)
        elif t in _AGGREGATES:
            s = buf[pos + 1 : eol]
            pos = eol + 2
            if s.isdigit() and len(s) <= _MAX_LENGTH_DIGITS:
                if len(stack) >= max_depth:
                    raise _too_deep(max_depth)
                per, extra = _AGGREGATES[t]
                count = int(s) * per + extra
                if keep:
                    tokens.append((t, count))  # type: ignore[union-attr]
                if count:
                    stack.append(remaining)
                    remaining = count
                    continue
            elif s == b"-1" and t == _ARRAY:
                if keep:
                    tokens.append((t, -1))  # type: ignore[union-attr]
            else:
                raise ProtocolError(f"Protocol error: invalid {_AGGREGATE_NAMES[t]} length")
        else:
            if t == _SIMPLE or t == _ERROR:
                pass
            elif not strict:
                if t not in _LINE_TYPES:
                    raise _bad_type(t)
            elif t == _INTEGER:
                if not _is_integer(buf[pos + 1 : eol]):
                    raise ProtocolError("Protocol error: invalid integer")
            elif t == _NULL_T:
                if eol != pos + 1:
                    raise ProtocolError("Protocol error: invalid null")
            elif t == _BOOLEAN:
                s = buf[pos + 1 : eol]
                if s != b"t" and s != b"f":
                    raise ProtocolError("Protocol error: invalid boolean")
            elif t == _DOUBLE:
                if _DOUBLE_RE.fullmatch(buf, pos + 1, eol) is None:
                    raise ProtocolError("Protocol error: invalid double")
            elif t == _BIG_NUMBER:
                if not _is_integer(buf[pos + 1 : eol]):
                    raise ProtocolError("Protocol error: invalid big number")
            else:
                raise _bad_type(t)
            if keep:
                tokens.append((t, pos + 1, eol))  # type: ignore[union-attr]
            pos = eol + 2
        # One element is complete; close every level it completes.
        remaining -= 1
        while not remaining:
            if not stack:
                return pos, pos, 0, 0
            remaining = stack.pop() - 1


def frame_end(
    buf,
    pos: int = 0,
    *,
    max_bulk: int = DEFAULT_MAX_BULK,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> int:
    """End offset of the complete frame starting at ``pos``, or -1 if more data
    is needed. Validates like ``parse`` but builds no values."""
    return scan_frame(_buffer(buf), pos, 1, [], max_bulk, max_depth)[0]


# ---------------------------------------------------------------------------
# Typed parsing
# ---------------------------------------------------------------------------


def _aggregate(t: int, items: list):
    if t == _ARRAY:
        return Array(items)
    if t == _MAP:
        return Map(list(zip(items[0::2], items[1::2])))
    if t == _SET:
        return Set(items)
    if t == _PUSH:
        return Push(items)
    return Attribute(list(zip(items[0:-1:2], items[1:-1:2])), items[-1])


def _atom(buf, t: int, start: int, end: int):
    """The value of one string or line token (``scan_frame`` validated its bytes)."""
    if t == _BULK:
        return NIL if start < 0 else BulkString(bytes(buf[start:end]))
    if t == _SIMPLE:
        return SimpleString(bytes(buf[start:end]))
    if t == _ERROR:
        return Error(bytes(buf[start:end]))
    if t == _INTEGER:
        return Integer(int(buf[start:end]))
    if t == _BLOB_ERROR:
        return Error(bytes(buf[start:end]), True)
    if t == _VERBATIM:
        return Verbatim(bytes(buf[start : start + 3]), bytes(buf[start + 4 : end]))
    if t == _NULL_T:
        return _NULL
    if t == _BOOLEAN:
        return Boolean(buf[start] == 0x74)  # t
    if t == _DOUBLE:
        return Double(float(buf[start:end]))
    try:
        return BigNumber(int(buf[start:end]))
    except ValueError as exc:  # beyond sys.get_int_max_str_digits()
        raise ProtocolError("Protocol error: invalid big number") from exc


def _build(buf, tokens: list):
    """The value of one complete frame from the tokens ``scan_frame`` left."""
    # Open aggregates: [type, elements due, elements so far].
    stack: list[list] = []
    for token in tokens:
        t = token[0]
        if t in _AGGREGATES:
            count = token[1]
            if count > 0:
                stack.append([t, count, []])
                continue
            value = _NIL_ARRAY if count < 0 else _aggregate(t, [])
        else:
            value = _atom(buf, t, token[1], token[2])
        # Hand the value to its parent, closing every aggregate it completes.
        while True:
            if not stack:
                return value
            top = stack[-1]
            items = top[2]
            items.append(value)
            if len(items) < top[1]:
                break
            stack.pop()
            value = _aggregate(top[0], items)
    raise AssertionError("tokens of an incomplete frame")  # pragma: no cover


def parse(
    buf,
    pos: int = 0,
    *,
    max_bulk: int = DEFAULT_MAX_BULK,
    max_depth: int = DEFAULT_MAX_DEPTH,
):
    """Parse one frame starting at ``pos``: ``(value, end)``, or None when more
    data is needed. Raises ProtocolError for malformed input."""
    buf = _buffer(buf)
    tokens: list = []
    end = scan_frame(buf, pos, 1, [], max_bulk, max_depth, tokens)[0]
    if end < 0:
        return None
    return _build(buf, tokens), end


class Reader:
    """Incremental reader for a socket stream: ``feed`` bytes as they arrive,
    ``get`` complete values.

    A frame is scanned once however many pieces it arrives in (the scan resumes
    where it stopped, and waits for the whole of a bulk string), and values are
    built from that scan's tokens only when the frame is complete. The buffer
    is compacted once the consumed part is at least half of it, so copying
    stays linear. After a ProtocolError the reader is broken and every ``get``
    raises it again.
    """

    __slots__ = (
        "_buf",
        "_start",
        "_scan_pos",
        "_remaining",
        "_stack",
        "_tokens",
        "_need",
        "_error",
        "_max_bulk",
        "_max_depth",
    )

    def __init__(self, *, max_bulk: int = DEFAULT_MAX_BULK, max_depth: int = DEFAULT_MAX_DEPTH):
        self._buf = bytearray()
        self._max_bulk = max_bulk
        self._max_depth = max_depth
        self._error: ProtocolError | None = None
        self._reset(0)

    def _reset(self, start: int) -> None:
        self._start = start  # where the current frame begins
        self._scan_pos = start  # where its scan resumes
        self._remaining = 1
        self._stack: list[int] = []
        self._tokens: list = []  # of the current frame's elements scanned so far
        self._need = start + 1  # buffer length before anything can change

    def feed(self, data) -> None:
        self._buf += data

    def get(self):
        """The next complete value, or None until more data is fed."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        if len(buf) < self._need:
            return None
        try:
            end, scan_pos, remaining, need = scan_frame(
                buf, self._scan_pos, self._remaining, self._stack, self._max_bulk, self._max_depth, self._tokens
            )
            if end < 0:
                self._scan_pos, self._remaining, self._need = scan_pos, remaining, need
                return None
            value = _build(buf, self._tokens)
        except ProtocolError as exc:
            self._error = exc
            raise
        if end >= len(buf):
            buf.clear()
            end = 0
        elif end >= 4096 and 2 * end >= len(buf):
            del buf[:end]
            end = 0
        self._reset(end)
        return value


# ---------------------------------------------------------------------------
# Client requests
# ---------------------------------------------------------------------------

_C_SPACE = frozenset(b" \t\n\r\x0b\x0c")  # C isspace()
_TOKEN_END = frozenset(b" \t\n\r\x00")  # what ends an unquoted token in sdssplitargs
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("b"): 0x08, ord("a"): 0x07}
_E_QUOTES = "Protocol error: unbalanced quotes in request"


def _split_args(line: bytes) -> list[bytes]:
    """Redis' sdssplitargs: blanks separate arguments; "..." takes \\xHH and
    \\n \\r \\t \\b \\a escapes; '...' takes only \\'; a closing quote must be
    followed by a blank or the end."""
    # sdssplitargs walks a C string: the line ends at its first NUL.
    nul = line.find(b"\x00")
    if nul >= 0:
        line = line[:nul]
    if not any(c in line for c in (b'"', b"'", b"\x0b", b"\x0c")):
        # bytes.split() splits on exactly the C isspace() set.
        return line.split()
    n = len(line)

    def at(i: int) -> int:
        return line[i] if i < n else 0

    args: list[bytes] = []
    i = 0
    while True:
        while i < n and line[i] in _C_SPACE:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            c = at(i)
            if in_double:
                if c == 0x5C and at(i + 1) == 0x78 and at(i + 2) in _HEX and at(i + 3) in _HEX:
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and at(i + 1):
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 0x22:
                    if at(i + 1) and at(i + 1) not in _C_SPACE:
                        raise ProtocolError(_E_QUOTES)
                    i += 1
                    break
                elif not c:
                    raise ProtocolError(_E_QUOTES)
                else:
                    current.append(c)
            elif in_single:
                if c == 0x5C and at(i + 1) == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if at(i + 1) and at(i + 1) not in _C_SPACE:
                        raise ProtocolError(_E_QUOTES)
                    i += 1
                    break
                elif not c:
                    raise ProtocolError(_E_QUOTES)
                else:
                    current.append(c)
            elif c in _TOKEN_END:
                if c:
                    i += 1
                break
            elif c == 0x22:
                in_double = True
            elif c == 0x27:
                in_single = True
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


def _parse_inline(buf, pos: int):
    n = len(buf)
    newline = buf.find(b"\n", pos)
    if newline < 0:
        if n - pos > MAX_INLINE:
            raise ProtocolError("Protocol error: too big inline request")
        return None
    # Redis only notices an overlong line while it has no newline yet, which
    # depends on how reads were chunked; refuse it whatever the chunking.
    if newline - pos > MAX_INLINE:
        raise ProtocolError("Protocol error: too big inline request")
    stop = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
    return _split_args(bytes(buf[pos:stop])), newline + 1


def scan_multibulk(buf, pos: int, max_bulk: int, max_args: int, spans: list,
                   unauthenticated: bool = False, state: list | None = None) -> int:
    """Walk the multibulk request at ``pos`` (``buf[pos]`` is ``*``) by Redis'
    rules: its end, or -1 while it is incomplete. The ``(start, end)`` of each
    complete argument is appended to ``spans``. A count of 0 or less is an
    empty request (``processMultibulkBuffer``: "if (ll <= 0) return C_OK").
    Raises ProtocolError for malformed or oversized requests; each count and
    length is checked when its line is read, before anything that grows with
    it. ``unauthenticated``: the client has not authenticated on a server that
    requires it, and Redis' tighter limits for such clients apply too.

    ``state``: where an incomplete walk stopped, ``[count, position of the first
    incomplete argument, arguments complete]`` (set once the count line is read),
    and given back non-empty, where the walk resumes (``pos`` is then ignored;
    ``spans`` gets the arguments walked from there), so a request arriving in
    many pieces is walked once, not once per piece (issue 19)."""
    find = buf.find
    n = len(buf)
    if state:
        count, pos, done = state
        return _walk_arguments(buf, pos, count, done, max_bulk, spans, unauthenticated, state)
    eol = find(b"\r\n", pos + 1)
    if eol < 0:
        if n - pos > MAX_INLINE:
            raise ProtocolError("Protocol error: too big mbulk count string")
        return -1
    s = buf[pos + 1 : eol]
    if s.isdigit() and len(s) <= _MAX_LENGTH_DIGITS:
        count = int(s)
        if count > max_args:
            raise ProtocolError(_E_MULTIBULK_LENGTH)
        if unauthenticated and count > UNAUTHENTICATED_MAX_ARGS:
            raise ProtocolError(E_UNAUTHENTICATED_MULTIBULK)
    elif s[:1] == b"-" and s[1:].isdigit():
        return eol + 2
    else:
        raise ProtocolError(_E_MULTIBULK_LENGTH)
    return _walk_arguments(buf, eol + 2, count, 0, max_bulk, spans, unauthenticated, state)


def _walk_arguments(buf, pos: int, count: int, done: int, max_bulk: int, spans: list, unauthenticated: bool,
                    state: list | None) -> int:
    """``scan_multibulk`` past the count line: arguments ``done`` .. ``count`` from ``pos``."""
    find = buf.find
    n = len(buf)
    while done < count:
        if pos >= n:
            break
        if buf[pos] != _BULK:
            raise ProtocolError(f"Protocol error: expected '$', got '{_show(buf[pos])}'")
        eol = find(b"\r\n", pos + 1)
        if eol < 0:
            if n - pos > MAX_INLINE:
                raise ProtocolError("Protocol error: too big bulk count string")
            break
        s = buf[pos + 1 : eol]
        if not s.isdigit() or len(s) > _MAX_LENGTH_DIGITS:
            raise ProtocolError(_E_BULK_LENGTH)
        length = int(s)
        if length > max_bulk:
            raise ProtocolError(_E_BULK_LENGTH)
        if unauthenticated and length > UNAUTHENTICATED_MAX_BULK:
            raise ProtocolError(E_UNAUTHENTICATED_BULK)
        start = eol + 2
        end = start + length
        if end + 2 > n:
            break
        if buf[end] != 13 or buf[end + 1] != 10:
            raise ProtocolError(_E_BULK_CRLF)
        spans.append((start, end))
        pos = end + 2
        done += 1
    else:
        return pos
    if state is not None:
        state[:] = [count, pos, done]
    return -1


def parse_command(
    buf,
    pos: int = 0,
    *,
    max_bulk: int = DEFAULT_MAX_BULK,
    max_args: int = DEFAULT_MAX_ARGS,
):
    """Parse a client request at ``pos``: ``(args, end)`` or None if incomplete.

    A request starting with ``*`` is a multibulk of bulk strings; anything else
    is an inline command ending at LF (CRLF accepted). An empty request (a
    blank inline line, ``*0``, or like Redis any negative count) returns
    ``([], end)`` so the caller can skip it.
    """
    buf = _buffer(buf)
    if pos >= len(buf):
        return None
    if buf[pos] != _ARRAY:
        return _parse_inline(buf, pos)
    spans: list = []
    end = scan_multibulk(buf, pos, max_bulk, max_args, spans)
    if end < 0:
        return None
    return [bytes(buf[a:b]) for a, b in spans], end


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def encode_command(*args) -> bytes:
    """A request as a RESP array of bulk strings. str is UTF-8 encoded; int and
    float are written with repr() like redis-py; bool is refused, as redis-py
    does, since True/False have no agreed spelling."""
    out = [b"*%d\r\n" % len(args)]
    put = out.append
    for arg in args:
        cls = arg.__class__
        if cls is bytes:
            data = arg
        elif cls is str:
            data = arg.encode()
        elif cls is bool:
            raise TypeError("encode_command: bool is not a valid argument; pass b'1'/b'0'")
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, str):
            data = str(arg).encode()
        elif isinstance(arg, (int, float)):
            data = repr(arg).encode()
        else:
            raise TypeError(f"encode_command: invalid argument of type {cls.__name__}")
        put(b"$%d\r\n" % len(data))
        put(data)
        put(b"\r\n")
    return b"".join(out)


def _format_double(x: float) -> bytes:
    """Canonical spelling: inf, -inf, nan, else the shortest repr that reads back
    the same float, without a trailing ".0" (Redis 7.2+ writes 3, not 3.0)."""
    if x != x:
        return b"nan"
    if x == math.inf:
        return b"inf"
    if x == -math.inf:
        return b"-inf"
    text = repr(float(x))
    if text.endswith(".0"):
        text = text[:-2]
    return text.encode()


def _line(prefix: bytes, value: bytes, what: str) -> bytes:
    if b"\r" in value or b"\n" in value:
        raise ValueError(f"encode: {what} cannot hold CR or LF: {value!r}")
    return prefix + value + b"\r\n"


def _encode_into(value, put) -> None:
    cls = value.__class__
    if cls is BulkString:
        put(b"$%d\r\n" % len(value.value))
        put(value.value)
        put(b"\r\n")
    elif cls is Array or cls is Set or cls is Push:
        prefix = b"*" if cls is Array else b"~" if cls is Set else b">"
        put(prefix + b"%d\r\n" % len(value.items))
        for item in value.items:
            _encode_into(item, put)
    elif cls is SimpleString:
        put(_line(b"+", value.value, "a simple string"))
    elif cls is Integer:
        put(b":%d\r\n" % value.value)
    elif cls is Nil:
        try:
            put(_NILS[value.marker])
        except KeyError:
            raise ValueError(f"encode: unknown nil marker {value.marker!r}") from None
    elif cls is Error:
        data = value.value
        if value.blob or b"\r" in data or b"\n" in data:
            put(b"!%d\r\n" % len(data))
            put(data)
            put(b"\r\n")
        else:
            put(b"-" + data + b"\r\n")
    elif cls is Map or cls is Attribute:
        put(b"%c%d\r\n" % (_MAP if cls is Map else _ATTRIBUTE, len(value.items)))
        for key, val in value.items:
            _encode_into(key, put)
            _encode_into(val, put)
        if cls is Attribute:
            _encode_into(value.value, put)
    elif cls is Double:
        put(b"," + _format_double(value.value) + b"\r\n")
    elif cls is Boolean:
        put(b"#t\r\n" if value.value else b"#f\r\n")
    elif cls is BigNumber:
        put(b"(%d\r\n" % value.value)
    elif cls is Verbatim:
        if len(value.format) != 3:
            raise ValueError(f"encode: a verbatim format is 3 bytes, got {value.format!r}")
        put(b"=%d\r\n" % (len(value.value) + 4))
        put(value.format + b":")
        put(value.value)
        put(b"\r\n")
    else:
        raise TypeError(f"encode: not a RESP value: {cls.__name__}")


def encode(value) -> bytes:
    """Serialize a typed value; ``encode(parse(x)[0]) == x`` for canonical input
    (``:``/``(`` without '+' or leading zeros, doubles as ``_format_double``
    writes them)."""
    out: list[bytes] = []
    _encode_into(value, out.append)
    return b"".join(out)


# ---------------------------------------------------------------------------
# Plain Python values
# ---------------------------------------------------------------------------


def _hashable(obj):
    if isinstance(obj, list):
        return tuple(_hashable(item) for item in obj)
    if isinstance(obj, dict):
        return tuple((key, _hashable(val)) for key, val in obj.items())
    return obj


def to_python(value):
    """Typed value -> plain Python. Strings (simple, bulk, verbatim) -> bytes,
    Integer/BigNumber -> int, Double -> float, Boolean -> bool, Nil -> None,
    Array/Set/Push -> list, Map -> dict (list/dict keys become tuples),
    Attribute -> the annotated value (attributes dropped), Error -> itself."""
    cls = value.__class__
    if cls is BulkString or cls is SimpleString or cls is Verbatim:
        return value.value
    if cls is Array or cls is Set or cls is Push:
        return [to_python(item) for item in value.items]
    if cls is Integer or cls is BigNumber or cls is Double or cls is Boolean:
        return value.value
    if cls is Nil:
        return None
    if cls is Map:
        return {_hashable(to_python(key)): to_python(val) for key, val in value.items}
    if cls is Attribute:
        return to_python(value.value)
    if cls is Error:
        return value
    raise TypeError(f"to_python: not a RESP value: {cls.__name__}")
