"""Finding where requests and replies end, without building values.

The proxy forwards the bytes it received; it parses no more than the command
boundaries, the command name, and (for a few commands that change a
connection's state) the arguments. Request rules and error messages are
Redis' own (``networking.c`` ``processMultibulkBuffer``): they come from the
codec's multibulk walk (``eve.redis.resp.scan_multibulk``, which
``parse_command`` uses too); replies are scanned by the codec's own frame
scanner (``eve.redis.resp.scan_frame``), at any depth (``REPLY_MAX_DEPTH``).
"""

from __future__ import annotations

import functools
import re
import sys

import hiredis

from eve.redis import resp
from eve.redis.resp import ProtocolError

__all__ = ["REPLY_MAX_DEPTH", "PartialRequest", "RequestScanner", "partial_request", "scan_request", "scan_reply"]


def scan_request(buf: bytes, pos: int, max_bulk: int, max_args: int, unauthenticated: bool = False):
    """``(end, name, argc)`` of the request starting at ``pos``, or None when
    more bytes are needed. ``name`` is the first argument as sent (any case);
    an empty request (blank inline line, ``*0``, ``*-1``) has argc 0.
    Raises ProtocolError for malformed or oversized requests (``unauthenticated``:
    with Redis' limits for a client that has not authenticated yet)."""
    if buf[pos] != 0x2A:  # inline command
        parsed = resp.parse_command(buf, pos, max_bulk=max_bulk, max_args=max_args)
        if parsed is None:
            return None
        args, end = parsed
        return end, (args[0] if args else b""), len(args)
    spans: list = []
    end = resp.scan_multibulk(buf, pos, max_bulk, max_args, spans, unauthenticated)
    if end < 0:
        return None
    if not spans:
        return end, b"", 0
    start, stop = spans[0]
    return end, buf[start:stop], len(spans)


_NED = object()  # hiredis: not enough data

# An aggregate header (``*N``, and RESP3's ``%N`` ``~N`` ``>N`` ``|N``, which hiredis
# parses inside a request too) of five digits or more. hiredis sizes a list by N
# as soon as it reads the header, and frees it slot by slot when the reader is
# dropped with the request incomplete: 1.6 s for ``*1000000000`` on one core,
# 37 s for ``>1000000000`` nested in a request, during which every client of the
# process waits (issue 19). A buffer where
# such a count is not backed by the bytes that follow it (each element takes
# three bytes at least) goes to ``scan_request`` instead, whose checks take
# constant time per header. Data that happens to look like a header only costs
# the slower walk.
_LONG_COUNT = re.compile(rb"[*%~>|]([0-9]{5,})\r")
_LONG_COUNT_DIGITS = 18


def _unbacked_count(buf: bytes) -> bool:
    """Whether a long aggregate count in ``buf`` announces more elements than the
    bytes after it could hold."""
    n = len(buf)
    for match in _LONG_COUNT.finditer(buf):
        digits = match.group(1)
        if len(digits) > _LONG_COUNT_DIGITS or int(digits) * 3 > n - match.end():
            return True
    return False


class _NotCanonical(Exception):
    """A request hiredis parsed is not spelled the canonical way (or not of the kind asked for)."""


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

    A multibulk request still incomplete at the end of a buffer is remembered
    with how far its walk got (``_Pending``): the next buffer that starts with
    the same bytes (the caller keeps them and appends what arrives) resumes the
    walk there, so a request arriving in many pieces costs its bytes once, not
    once per piece (issue 19: a 900 KB request of empty arguments, then one
    byte per packet, took 180 ms of the process per byte).
    """

    __slots__ = ("_reader", "_pending", "max_bulk", "max_args")

    def __init__(self, max_bulk: int, max_args: int) -> None:
        self._reader: hiredis.Reader | None = None
        self._pending: _Pending | None = None
        self.max_bulk = max_bulk
        self.max_args = max_args

    def scan(self, buf: bytes, unauthenticated: bool = False) -> tuple[list, int, str | None]:
        pending = self._pending
        if pending is not None:
            self._pending = None
            if pending.unauthenticated == unauthenticated and pending.starts(buf):
                return self._resume(buf, pending)
        if unauthenticated:
            # Redis' tighter limits for such a client (its first commands: AUTH, HELLO).
            return self._slow(buf, 0, [], True)
        requests: list = []
        end = self.scan_canonical(buf, None, 0, requests)[0]
        if end == len(buf):
            return requests, end, None
        if end >= 0:
            # An incomplete request at the end: check now what is known of it.
            return self._slow(buf, end, requests)
        return self._slow(buf, 0, [])

    def scan_canonical(self, buf: bytes, kinds: dict | None, forwardable: int,
                       requests: list | None) -> tuple[int, int]:
        """``(end, count)`` of the complete canonical requests at the start of
        ``buf`` (``end`` is ``len(buf)`` when they are all of it), or ``(-1, 0)``
        when one is not canonical. Either ``requests``: each one is appended to
        it as ``(end, args, name, argc)``; or ``kinds``, for the proxy's hot
        path (a buffer of nothing but such requests is forwarded as it is): a
        request whose name does not map to ``forwardable`` counts as not canonical."""
        if buf[0] != 0x2A or len(buf) > self.max_bulk or self._pending is not None or _unbacked_count(buf):
            return -1, 0
        reader = self._reader
        if reader is None:
            reader = self._reader = hiredis.Reader(notEnoughData=_NED)
        reader.feed(buf)
        gets = reader.gets
        get_kind = kinds.get if kinds is not None else None
        append = requests.append if requests is not None else None
        count = 0
        p = 0
        try:
            while True:
                args = gets()
                if args is _NED:
                    break
                if args.__class__ is not list or not args or buf[p] != 0x2A:
                    raise _NotCanonical
                argc = len(args)
                p += 4 if argc < 10 else _header_length(argc)
                for arg in args:
                    if arg.__class__ is not bytes or buf[p] != 0x24:
                        raise _NotCanonical
                    length = len(arg)
                    if length < 10:
                        p += length + 6
                    elif length < 100:
                        p += length + 7
                    else:
                        p += _header_length(length) + length + 2
                    if buf[p - 2] != 13 or buf[p - 1] != 10:
                        raise _NotCanonical
                # One test per request for the two uses (the hot path counts).
                if append is not None:
                    append((p, args, args[0], argc))
                elif get_kind(args[0]) == forwardable:  # type: ignore[misc]
                    count += 1
                else:
                    raise _NotCanonical
        except (_NotCanonical, IndexError, hiredis.ProtocolError):
            self._reader = None
            return -1, 0
        if p != len(buf):
            # hiredis holds the start of an incomplete request: start afresh next
            # time (the caller keeps the bytes).
            self._reader = None
        return p, count if append is None else len(requests)  # type: ignore[arg-type]

    def _slow(self, buf: bytes, pos: int, requests: list, unauthenticated: bool = False):
        n = len(buf)
        max_bulk, max_args = self.max_bulk, self.max_args
        append = requests.append
        while pos < n:
            if buf[pos] != 0x2A:  # inline
                try:
                    request = scan_request(buf, pos, max_bulk, max_args, unauthenticated)
                except ProtocolError as exc:
                    return requests, pos, str(exc)
                if request is None:
                    break
                end, name, argc = request
                append((end, None, name, argc))
                pos = end
                continue
            spans: list = []
            state: list = []
            try:
                end = resp.scan_multibulk(buf, pos, max_bulk, max_args, spans, unauthenticated, state)
            except ProtocolError as exc:
                return requests, pos, str(exc)
            if end < 0:
                if state:
                    self._pending = _Pending(buf, pos, unauthenticated, state,
                                             (spans[0][0] - pos, spans[0][1] - pos) if spans else None)
                break
            append((end, None, buf[spans[0][0]:spans[0][1]] if spans else b"", len(spans)))
            pos = end
        return requests, pos, None

    def _resume(self, buf: bytes, pending: _Pending) -> tuple[list, int, str | None]:
        """Walk on from where the incomplete request at the start of ``buf`` stopped."""
        count, next_arg, done = pending.state
        state = [count, next_arg, done]
        spans: list = []
        try:
            end = resp.scan_multibulk(buf, 0, self.max_bulk, self.max_args, spans, pending.unauthenticated, state)
        except ProtocolError as exc:
            return [], 0, str(exc)
        name = pending.name if pending.name is not None else (spans[0] if spans else None)
        if end < 0:
            self._pending = _Pending(buf, 0, pending.unauthenticated, state, name)
            return [], 0, None
        assert name is not None  # count >= 1: its first argument is complete
        return self._slow(buf, end, [(end, None, buf[name[0]:name[1]], count)], pending.unauthenticated)

    def partial(self, buf: bytes, pos: int) -> PartialRequest | None:
        """``partial_request(buf, pos)``, from the walk the last ``scan(buf)`` made when it
        stopped at ``pos`` (without walking the request again)."""
        pending = self._pending
        if pending is None or pending.buf is not buf or pending.pos != pos:
            return partial_request(buf, pos)
        count, next_arg, done = pending.state
        name = buf[pos + pending.name[0] : pos + pending.name[1]] if pending.name is not None else None
        arg_pos = pos + next_arg
        header_end = buf.find(b"\r\n", arg_pos + 1) if arg_pos < len(buf) else -1
        if header_end < 0:
            return PartialRequest(name, arg_pos, count - done, -1, -1)
        return PartialRequest(name, arg_pos, count - done, int(buf[arg_pos + 1 : header_end]), header_end + 2)


class _Pending:
    """An incomplete multibulk request at ``buf[pos:]`` and its walk's ``state``
    (``resp.scan_multibulk``), with positions relative to ``pos``."""

    __slots__ = ("buf", "name", "pos", "state", "unauthenticated")

    def __init__(self, buf: bytes, pos: int, unauthenticated: bool, state: list,
                 name: tuple[int, int] | None) -> None:
        self.buf = buf
        self.pos = pos
        self.unauthenticated = unauthenticated
        self.state = (state[0], state[1] - pos, state[2])
        self.name = name   # its first argument's span, when complete

    def starts(self, buf: bytes) -> bool:
        """``buf`` begins with this request's bytes, and has more of them."""
        head = self.buf[self.pos:] if self.pos else self.buf
        return len(buf) > len(head) and buf.startswith(head)


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
    eol = buf.find(b"\r\n", pos + 1)
    if eol < 0:
        return None
    spans: list = []
    # Already checked against the client's limits: only the boundaries are wanted here.
    if resp.scan_multibulk(buf, pos, sys.maxsize, sys.maxsize, spans) >= 0:
        return None
    name = buf[spans[0][0] : spans[0][1]] if spans else None
    arg_pos = spans[-1][1] + 2 if spans else eol + 2
    args_left = int(buf[pos + 1 : eol]) - len(spans)
    header_end = buf.find(b"\r\n", arg_pos + 1) if arg_pos < len(buf) else -1
    if header_end < 0:
        return PartialRequest(name, arg_pos, args_left, -1, -1)
    return PartialRequest(name, arg_pos, args_left, int(buf[arg_pos + 1 : header_end]), header_end + 2)


# How deep a reply may nest: as deep as a server sends. Only boundaries are
# found (one count per open level, no recursion, no values), so depth costs a
# list entry per level; a script returning a self-referencing Lua table is
# answered with arrays nested until the server's Lua stack limit, far past the
# codec's default for values it builds (issue 12). Requests keep their limits.
REPLY_MAX_DEPTH = sys.maxsize

# ``scan_reply(buf, pos, remaining, stack, max_bulk)``: ``(end, pos, remaining, need)``
# of the codec's resumable frame scan, at any depth.
scan_reply = functools.partial(resp.scan_frame, max_depth=REPLY_MAX_DEPTH, strict=False)
