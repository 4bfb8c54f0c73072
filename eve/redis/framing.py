"""Finding where requests and replies end, without building values.

The proxy forwards the bytes it received; it parses no more than the command
boundaries, the command name, and (for a few commands that change a
connection's state) the arguments. Request rules and error messages are
Redis' own (``networking.c`` ``processMultibulkBuffer``), as in
``eve.redis.resp.parse_command``; replies are scanned by ``eve.redis.resp``'s frame
scanner.
"""

from __future__ import annotations

import hiredis

from eve.redis import resp
from eve.redis.resp import MAX_INLINE, ProtocolError

__all__ = ["PartialRequest", "RequestScanner", "partial_request", "scan_request", "scan_reply"]

_MAX_LENGTH_DIGITS = 18
_E_MULTIBULK = "Protocol error: invalid multibulk length"
_E_BULK = "Protocol error: invalid bulk length"
_E_CRLF = "Protocol error: bulk data not followed by CRLF"


def _show(byte: int) -> str:
    return chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}"


def scan_request(buf: bytes, pos: int, max_bulk: int, max_args: int):
    """``(end, name, argc)`` of the request starting at ``pos``, or None when
    more bytes are needed. ``name`` is the first argument as sent (any case);
    an empty request (blank inline line, ``*0``, ``*-1``) has argc 0.
    Raises ProtocolError for malformed or oversized requests."""
    if buf[pos] != 0x2A:  # inline command
        parsed = resp.parse_command(buf, pos, max_bulk=max_bulk, max_args=max_args)
        if parsed is None:
            return None
        args, end = parsed
        return end, (args[0] if args else b""), len(args)
    find = buf.find
    n = len(buf)
    eol = find(b"\r\n", pos + 1)
    if eol < 0:
        if n - pos > MAX_INLINE:
            raise ProtocolError("Protocol error: too big mbulk count string")
        return None
    s = buf[pos + 1 : eol]
    if s.isdigit() and len(s) <= _MAX_LENGTH_DIGITS:
        argc = int(s)
        if argc > max_args:
            raise ProtocolError(_E_MULTIBULK)
    elif s[:1] == b"-" and s[1:].isdigit():
        return eol + 2, b"", 0  # processMultibulkBuffer: a count <= 0 is an empty request
    else:
        raise ProtocolError(_E_MULTIBULK)
    p = eol + 2
    name = b""
    for i in range(argc):
        if p >= n:
            return None
        if buf[p] != 0x24:
            raise ProtocolError(f"Protocol error: expected '$', got '{_show(buf[p])}'")
        eol = find(b"\r\n", p + 1)
        if eol < 0:
            if n - p > MAX_INLINE:
                raise ProtocolError("Protocol error: too big bulk count string")
            return None
        s = buf[p + 1 : eol]
        if not s.isdigit() or len(s) > _MAX_LENGTH_DIGITS:
            raise ProtocolError(_E_BULK)
        length = int(s)
        if length > max_bulk:
            raise ProtocolError(_E_BULK)
        start = eol + 2
        p = start + length + 2
        if p > n:
            return None
        if buf[p - 2] != 13 or buf[p - 1] != 10:
            raise ProtocolError(_E_CRLF)
        if not i:
            name = buf[start : start + length]
    return p, name, argc


_NED = object()  # hiredis: not enough data


def _header_length(count: int) -> int:
    """len(b"$%d\r\n" % count)"""
    if count < 10:
        return 4
    if count < 100:
        return 5
    if count < 1000:
        return 6
    return len(b"%d" % count) + 3


class RequestScanner:
    """Splits a client's bytes into requests: hiredis parses, then a walk over
    the lengths it found checks that the bytes are exactly the canonical
    multibulk encoding (``*N``, then ``$len`` + data + CRLF per argument),
    which every server accepts alike. Anything else (inline commands,
    non-canonical or malformed input, a request longer than ``max_bulk``)
    is left to ``scan_request``, which applies Redis' rules and messages.

    ``scan(buf)`` returns ``(requests, end, error)``: ``requests`` is a list of
    ``(end, args_or_None, name, argc)``, ``end`` where the complete requests
    stop, ``error`` a ProtocolError message found after them (or None).
    """

    __slots__ = ("_reader", "max_bulk", "max_args")

    def __init__(self, max_bulk: int, max_args: int) -> None:
        self._reader: hiredis.Reader | None = None
        self.max_bulk = max_bulk
        self.max_args = max_args

    def scan(self, buf: bytes) -> tuple[list, int, str | None]:
        if buf[0] == 0x2A and len(buf) <= self.max_bulk:
            fast = self._fast(buf)
            if fast is not None:
                return fast
        return self._slow(buf, 0, [])

    def scan_forwardable(self, buf: bytes, kinds: dict, forwardable: int) -> int:
        """The hot path: how many requests ``buf`` holds when it is nothing but
        complete canonical requests whose names ``kinds`` maps to
        ``forwardable``; 0 otherwise (then ``scan`` has to look closer)."""
        if buf[0] != 0x2A or len(buf) > self.max_bulk:
            return 0
        reader = self._reader
        if reader is None:
            reader = self._reader = hiredis.Reader(notEnoughData=_NED)
        reader.feed(buf)
        gets = reader.gets
        get_kind = kinds.get
        count = 0
        p = 0
        try:
            while True:
                args = gets()
                if args is _NED:
                    break
                if args.__class__ is not list or not args or buf[p] != 0x2A or \
                        get_kind(args[0]) != forwardable:
                    self._reader = None
                    return 0
                argc = len(args)
                p += 4 if argc < 10 else _header_length(argc)
                for arg in args:
                    if arg.__class__ is not bytes or buf[p] != 0x24:
                        self._reader = None
                        return 0
                    length = len(arg)
                    if length < 10:
                        p += length + 6
                    elif length < 100:
                        p += length + 7
                    else:
                        p += _header_length(length) + length + 2
                    if buf[p - 2] != 13 or buf[p - 1] != 10:
                        self._reader = None
                        return 0
                count += 1
        except (IndexError, hiredis.ProtocolError):
            self._reader = None
            return 0
        if p != len(buf):
            self._reader = None
            return 0
        return count

    def _fast(self, buf: bytes):
        reader = self._reader
        if reader is None:
            reader = self._reader = hiredis.Reader(notEnoughData=_NED)
        reader.feed(buf)
        gets = reader.gets
        requests = []
        append = requests.append
        p = 0
        try:
            while True:
                try:
                    args = gets()
                except hiredis.ProtocolError:
                    self._reader = None
                    return None
                if args is _NED:
                    break
                if args.__class__ is not list or not args or buf[p] != 0x2A:
                    self._reader = None
                    return None
                argc = len(args)
                p += 4 if argc < 10 else _header_length(argc)
                for arg in args:
                    if arg.__class__ is not bytes or buf[p] != 0x24:
                        self._reader = None
                        return None
                    length = len(arg)
                    if length < 10:
                        p += length + 6
                    elif length < 100:
                        p += length + 7
                    else:
                        p += _header_length(length) + length + 2
                    if buf[p - 2] != 13 or buf[p - 1] != 10:
                        self._reader = None
                        return None
                append((p, args, args[0], argc))
        except IndexError:
            self._reader = None
            return None
        if p == len(buf):
            return requests, p, None
        # An incomplete request at the end: start afresh next time (the caller
        # keeps the bytes), and check now what is known of it.
        self._reader = None
        return self._slow(buf, p, requests)

    def _slow(self, buf: bytes, pos: int, requests: list):
        n = len(buf)
        max_bulk, max_args = self.max_bulk, self.max_args
        append = requests.append
        while pos < n:
            try:
                request = scan_request(buf, pos, max_bulk, max_args)
            except ProtocolError as exc:
                return requests, pos, str(exc)
            if request is None:
                break
            end, name, argc = request
            append((end, None, name, argc))
            pos = end
        return requests, pos, None


class PartialRequest:
    """An incomplete multibulk request: its name (when the first argument is
    complete), where its first incomplete argument starts, how many arguments
    are still incomplete, and that argument's length once its header is in."""

    __slots__ = ("name", "arg_pos", "args_left", "bulk_len", "data_start")

    def __init__(self, name: bytes | None, arg_pos: int, args_left: int, bulk_len: int, data_start: int) -> None:
        self.name = name
        self.arg_pos = arg_pos
        self.args_left = args_left
        self.bulk_len = bulk_len
        self.data_start = data_start


def partial_request(buf: bytes, pos: int) -> PartialRequest | None:
    """What is known of an incomplete multibulk request at ``pos`` (which
    ``scan_request`` already found well formed so far); None for inline."""
    if buf[pos] != 0x2A:
        return None
    find = buf.find
    n = len(buf)
    eol = find(b"\r\n", pos + 1)
    if eol < 0:
        return None
    argc = int(buf[pos + 1 : eol])
    p = eol + 2
    name = None
    for i in range(argc):
        if p >= n:
            return PartialRequest(name, p, argc - i, -1, -1)
        eol = find(b"\r\n", p + 1)
        if eol < 0:
            return PartialRequest(name, p, argc - i, -1, -1)
        length = int(buf[p + 1 : eol])
        start = eol + 2
        if start + length + 2 > n:
            return PartialRequest(name, p, argc - i, length, start)
        if not i:
            name = buf[start : start + length]
        p = start + length + 2
    return None


def scan_reply(buf: bytes, pos: int, remaining: int, stack: list, max_bulk: int):
    """``eve.redis.resp``'s resumable frame scan: ``(end, pos, remaining, need)``."""
    return resp._scan(buf, pos, remaining, stack, max_bulk, resp.DEFAULT_MAX_DEPTH)
