"""Unit tests for the RESP2/RESP3 codec (eve/redis/resp.py). No servers."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eve.redis.resp import (
    MAX_INLINE,
    NIL,
    Array,
    Attribute,
    BigNumber,
    Boolean,
    BulkString,
    Double,
    Error,
    Integer,
    Map,
    Nil,
    ProtocolError,
    Push,
    Reader,
    Set,
    SimpleString,
    Verbatim,
    encode,
    encode_command,
    frame_end,
    parse,
    parse_command,
    scan_frame,
    scan_multibulk,
    to_python,
)

pytestmark = pytest.mark.timeout(60)


# Canonical wire bytes and the value each one parses to.
CASES = [
    ("simple", b"+OK\r\n", SimpleString(b"OK")),
    ("simple-empty", b"+\r\n", SimpleString(b"")),
    ("error", b"-ERR unknown command\r\n", Error(b"ERR unknown command")),
    ("error-moved", b"-MOVED 3999 127.0.0.1:6381\r\n", Error(b"MOVED 3999 127.0.0.1:6381")),
    ("blob-error", b"!22\r\nSYNTAX invalid\r\nsyntax\r\n", Error(b"SYNTAX invalid\r\nsyntax", blob=True)),
    ("integer", b":1000\r\n", Integer(1000)),
    ("integer-negative", b":-42\r\n", Integer(-42)),
    ("integer-zero", b":0\r\n", Integer(0)),
    ("bulk", b"$5\r\nhello\r\n", BulkString(b"hello")),
    ("bulk-empty", b"$0\r\n\r\n", BulkString(b"")),
    ("bulk-binary", b"$4\r\n\r\n\x00\xff\r\n", BulkString(b"\r\n\x00\xff")),
    ("nil-bulk", b"$-1\r\n", NIL),
    ("nil-array", b"*-1\r\n", Nil(b"*")),
    ("null", b"_\r\n", Nil(b"_")),
    ("double", b",1.5\r\n", Double(1.5)),
    ("double-integral", b",3\r\n", Double(3.0)),
    ("double-negative", b",-0.25\r\n", Double(-0.25)),
    ("double-exponent", b",1e+300\r\n", Double(1e300)),
    ("double-inf", b",inf\r\n", Double(math.inf)),
    ("double-minus-inf", b",-inf\r\n", Double(-math.inf)),
    ("double-nan", b",nan\r\n", Double(math.nan)),
    ("true", b"#t\r\n", Boolean(True)),
    ("false", b"#f\r\n", Boolean(False)),
    (
        "big-number",
        b"(3492890328409238509324850943850943825024385\r\n",
        BigNumber(3492890328409238509324850943850943825024385),
    ),
    ("big-number-negative", b"(-12345678901234567890\r\n", BigNumber(-12345678901234567890)),
    ("verbatim", b"=15\r\ntxt:Some string\r\n", Verbatim(b"txt", b"Some string")),
    ("verbatim-empty", b"=4\r\nmkd:\r\n", Verbatim(b"mkd", b"")),
    ("array-empty", b"*0\r\n", Array([])),
    (
        "array",
        b"*3\r\n$3\r\nfoo\r\n:1\r\n$-1\r\n",
        Array([BulkString(b"foo"), Integer(1), NIL]),
    ),
    (
        "array-nested",
        b"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n+x\r\n",
        Array([Array([Integer(1), Integer(2)]), Array([SimpleString(b"x")])]),
    ),
    ("set", b"~2\r\n+a\r\n+b\r\n", Set([SimpleString(b"a"), SimpleString(b"b")])),
    (
        "push",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        Push([BulkString(b"message"), BulkString(b"ch"), BulkString(b"hi")]),
    ),
    ("map-empty", b"%0\r\n", Map([])),
    (
        "map",
        b"%2\r\n+first\r\n:1\r\n+second\r\n*1\r\n:2\r\n",
        Map([(SimpleString(b"first"), Integer(1)), (SimpleString(b"second"), Array([Integer(2)]))]),
    ),
    (
        "attribute",
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n*2\r\n:2039\r\n:9543\r\n",
        Attribute(
            [(SimpleString(b"key-popularity"), Map([(BulkString(b"a"), Double(0.1923))]))],
            Array([Integer(2039), Integer(9543)]),
        ),
    ),
    (
        "attribute-inside-array",
        b"*2\r\n|0\r\n:1\r\n:2\r\n",
        Array([Attribute([], Integer(1)), Integer(2)]),
    ),
    ("attribute-nested", b"|0\r\n|0\r\n+v\r\n", Attribute([], Attribute([], SimpleString(b"v")))),
]
CASE_IDS = [case[0] for case in CASES]


# --- every type parses and round-trips ---------------------------------------


@pytest.mark.parametrize(("name", "wire", "value"), CASES, ids=CASE_IDS)
def test_parse_every_type(name, wire, value):
    assert parse(wire) == (value, len(wire))
    assert parse(bytearray(wire)) == (value, len(wire))
    assert parse(memoryview(wire)) == (value, len(wire))


@pytest.mark.parametrize(("name", "wire", "value"), CASES, ids=CASE_IDS)
def test_round_trip_is_byte_exact(name, wire, value):
    assert encode(parse(wire)[0]) == wire
    assert encode(value) == wire


@pytest.mark.parametrize(("name", "wire", "value"), CASES, ids=CASE_IDS)
def test_frame_end_agrees_with_parse(name, wire, value):
    assert frame_end(wire) == len(wire)
    assert frame_end(bytearray(wire)) == len(wire)


def test_types_are_distinguished():
    assert SimpleString(b"OK") != BulkString(b"OK")
    assert Error(b"ERR x") != SimpleString(b"ERR x")
    assert Integer(1) != BigNumber(1)
    assert Array([]) != Set([]) != Push([])
    # Every nil is the same nil; the marker only keeps the spelling.
    assert Nil(b"_") == Nil(b"*") == NIL == Nil()
    assert len({Nil(b"_"), NIL}) == 1


def test_error_kind():
    assert Error(b"ERR unknown command 'foo'").kind == b"ERR"
    assert Error(b"MOVED 3999 127.0.0.1:6381").kind == b"MOVED"
    assert Error(b"NOAUTH").kind == b"NOAUTH"
    assert parse(b"-WRONGTYPE Operation against a key\r\n")[0].kind == b"WRONGTYPE"


def test_error_with_newline_is_encoded_as_blob():
    assert encode(Error(b"a\nb")) == b"!3\r\na\nb\r\n"
    assert encode(Error(b"short", blob=True)) == b"!5\r\nshort\r\n"


def test_double_nan_equality_and_hash():
    assert Double(math.nan) == Double(float("nan"))
    assert hash(Double(math.nan)) == hash(Double(float("nan")))
    assert Double(1.0) != Double(2.0)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [(b",-nan\r\n", "nan"), (b",1.\r\n", 1.0), (b",.5\r\n", 0.5), (b",1E5\r\n", 1e5), (b",+2\r\n", 2.0)],
)
def test_double_accepts_other_spellings(wire, expected):
    value = parse(wire)[0].value
    assert (math.isnan(value) if expected == "nan" else value == expected)
    assert frame_end(wire) == len(wire)


def test_parse_at_offset_and_concatenated_frames():
    frames = [wire for _, wire, _ in CASES]
    stream = b"".join(frames)
    pos = 0
    for (_, wire, value) in CASES:
        parsed, end = parse(stream, pos)
        assert parsed == value
        assert end == pos + len(wire)
        assert frame_end(stream, pos) == end
        pos = end
    assert pos == len(stream)
    assert parse(stream, pos) is None
    assert frame_end(stream, pos) == -1


def test_encode_rejects_what_cannot_be_written():
    with pytest.raises(ValueError, match="CR or LF"):
        encode(SimpleString(b"a\r\nb"))
    with pytest.raises(ValueError, match="3 bytes"):
        encode(Verbatim(b"text", b"x"))
    with pytest.raises(TypeError):
        encode(b"raw bytes")


# --- partial input ------------------------------------------------------------


@pytest.mark.parametrize(("name", "wire", "value"), CASES, ids=CASE_IDS)
def test_every_split_point_is_incomplete(name, wire, value):
    for cut in range(len(wire)):
        assert parse(wire[:cut]) is None, cut
        assert frame_end(wire[:cut]) == -1, cut


@pytest.mark.parametrize(("name", "wire", "value"), CASES, ids=CASE_IDS)
def test_reader_byte_by_byte(name, wire, value):
    reader = Reader()
    for i in range(len(wire) - 1):
        reader.feed(wire[i : i + 1])
        assert reader.get() is None
    reader.feed(wire[-1:])
    assert reader.get() == value
    assert reader.get() is None


def test_reader_stream_of_frames_in_odd_chunks():
    stream = b"".join(wire for _, wire, _ in CASES) * 3
    expected = [value for _, _, value in CASES] * 3
    for chunk in (1, 2, 3, 7, 64, len(stream)):
        reader = Reader()
        got = []
        for i in range(0, len(stream), chunk):
            reader.feed(stream[i : i + chunk])
            while (value := reader.get()) is not None:
                got.append(value)
        assert got == expected, chunk


def test_reader_compacts_its_buffer():
    reader = Reader()
    payload = encode(BulkString(b"x" * 1000))
    for _ in range(200):
        reader.feed(payload + payload[:10])
        assert reader.get() == BulkString(b"x" * 1000)
        reader.feed(payload[10:])
        assert reader.get() == BulkString(b"x" * 1000)
        assert reader.get() is None
    assert len(reader._buf) < 3 * len(payload)


def test_reader_large_frame_in_many_chunks():
    # Many small elements arriving in small pieces: the scan resumes instead of
    # restarting, so this stays quick.
    value = Array([BulkString(b"%d" % i) for i in range(20000)])
    wire = encode(value)
    reader = Reader()
    for i in range(0, len(wire), 100):
        reader.feed(wire[i : i + 100])
        if i + 100 < len(wire):
            assert reader.get() is None
    assert reader.get() == value


def test_reader_stays_broken_after_protocol_error():
    reader = Reader()
    reader.feed(b"+OK\r\n?bad\r\n")
    assert reader.get() == SimpleString(b"OK")
    with pytest.raises(ProtocolError):
        reader.get()
    reader.feed(b"+OK\r\n")
    with pytest.raises(ProtocolError):
        reader.get()


def test_reader_accepts_memoryview_and_bytearray():
    reader = Reader()
    reader.feed(memoryview(b"+O"))
    reader.feed(bytearray(b"K\r\n"))
    assert reader.get() == SimpleString(b"OK")


# --- hypothesis: random nested values ------------------------------------------

_line_bytes = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)
_scalars = st.one_of(
    st.builds(SimpleString, _line_bytes),
    st.builds(BulkString, st.binary(max_size=40)),
    st.builds(Integer, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.builds(Double, st.floats(allow_nan=True, allow_infinity=True)),
    st.sampled_from([Nil(b"$"), Nil(b"*"), Nil(b"_")]),
    st.builds(Boolean, st.booleans()),
    st.builds(BigNumber, st.integers(min_value=-(10**60), max_value=10**60)),
    st.builds(Error, st.binary(max_size=20)),
    st.builds(Verbatim, st.binary(min_size=3, max_size=3), st.binary(max_size=20)),
)


def _aggregates(children):
    pairs = st.lists(st.tuples(children, children), max_size=4)
    return st.one_of(
        st.builds(Array, st.lists(children, max_size=5)),
        st.builds(Set, st.lists(children, max_size=5)),
        st.builds(Push, st.lists(children, max_size=5)),
        st.builds(Map, pairs),
        st.builds(Attribute, pairs, children),
    )


_values = st.recursive(_scalars, _aggregates, max_leaves=30)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_hypothesis_round_trip(value):
    wire = encode(value)
    assert parse(wire) == (value, len(wire))
    assert frame_end(wire) == len(wire)
    assert encode(parse(wire)[0]) == wire


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_values, min_size=1, max_size=5), st.integers(min_value=1, max_value=17))
def test_hypothesis_concatenated_frames(values, chunk):
    wires = [encode(v) for v in values]
    stream = b"".join(wires)
    pos = 0
    for value, wire in zip(values, wires):
        assert frame_end(stream, pos) == pos + len(wire)
        assert parse(stream, pos) == (value, pos + len(wire))
        pos += len(wire)
    # A truncated stream: the last frame is incomplete.
    assert frame_end(stream[:-1], pos - len(wires[-1])) == -1
    reader = Reader()
    got = []
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i : i + chunk])
        while (value := reader.get()) is not None:
            got.append(value)
    assert got == values


# --- malformed input -------------------------------------------------------------

MALFORMED = [
    ("bad-type-byte", b"?foo\r\n", "invalid type byte '?'"),
    ("bad-type-byte-alone", b"x", "invalid type byte 'x'"),
    ("bad-type-byte-nested", b"*1\r\n@\r\n", "invalid type byte '@'"),
    ("bulk-not-numeric", b"$abc\r\nabc\r\n", "invalid bulk length"),
    ("bulk-empty-length", b"$\r\n", "invalid bulk length"),
    ("bulk-negative", b"$-2\r\n", "invalid bulk length"),
    ("bulk-spaces", b"$ 3\r\nabc\r\n", "invalid bulk length"),
    ("bulk-streamed", b"$?\r\n;3\r\nabc\r\n;0\r\n", "invalid bulk length"),
    ("bulk-missing-crlf", b"$3\r\nabcde\r\n", "not followed by CRLF"),
    ("bulk-too-big", b"$1000\r\n", "invalid bulk length"),
    ("multibulk-negative", b"*-5\r\n", "invalid multibulk length"),
    ("multibulk-not-numeric", b"*x\r\n", "invalid multibulk length"),
    ("map-nil", b"%-1\r\n", "invalid map length"),
    ("integer-not-numeric", b":12a\r\n", "invalid integer"),
    ("integer-empty", b":\r\n", "invalid integer"),
    ("double-bad", b",1.2.3\r\n", "invalid double"),
    ("double-word", b",infinity\r\n", "invalid double"),
    ("boolean-bad", b"#x\r\n", "invalid boolean"),
    ("null-with-data", b"_x\r\n", "invalid null"),
    ("big-number-bad", b"(12x\r\n", "invalid big number"),
    ("verbatim-no-colon", b"=5\r\ntxtab\r\n", "invalid verbatim string"),
    ("verbatim-short", b"=2\r\nab\r\n", "invalid verbatim string"),
    ("blob-error-nil", b"!-1\r\n", "invalid bulk length"),
    ("bulk-count-too-long", b"$" + b"1" * (MAX_INLINE + 1), "too big bulk count string"),
    ("mbulk-count-too-long", b"*" + b"1" * (MAX_INLINE + 1), "too big mbulk count string"),
]


@pytest.mark.parametrize(("name", "wire", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_raises(name, wire, message):
    with pytest.raises(ProtocolError, match="^Protocol error: ") as info:
        parse(wire, max_bulk=100)
    assert message in str(info.value)
    with pytest.raises(ProtocolError) as info:
        frame_end(wire, max_bulk=100)
    assert message in str(info.value)
    reader = Reader(max_bulk=100)
    reader.feed(wire)
    with pytest.raises(ProtocolError):
        reader.get()


def test_bulk_over_max_bulk_fails_before_data_arrives():
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parse(b"$11\r\n", max_bulk=10)
    assert parse(b"$10\r\n0123456789\r\n", max_bulk=10) == (BulkString(b"0123456789"), 17)


def test_nesting_deeper_than_max_depth():
    def nested(depth):
        return b"*1\r\n" * depth + b":1\r\n"

    assert frame_end(nested(128)) == len(nested(128))
    assert parse(nested(128))[1] == len(nested(128))
    for call in (parse, frame_end):
        with pytest.raises(ProtocolError, match="nesting deeper than 128"):
            call(nested(129))
        with pytest.raises(ProtocolError, match="nesting deeper than 3"):
            call(nested(4), max_depth=3)
        # Empty aggregates and attributes count as levels too.
        with pytest.raises(ProtocolError, match="nesting deeper than 2"):
            call(b"*1\r\n*1\r\n*0\r\n", max_depth=2)
        with pytest.raises(ProtocolError, match="nesting deeper than 1"):
            call(b"|0\r\n*0\r\n", max_depth=1)


def test_deep_nesting_is_not_recursive():
    wire = b"*1\r\n" * 5000 + b":1\r\n"
    assert frame_end(wire, max_depth=10000) == len(wire)
    value, end = parse(wire, max_depth=10000)
    assert end == len(wire)


# --- client requests -----------------------------------------------------------


def test_parse_command_multibulk():
    wire = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n"
    assert parse_command(wire) == ([b"SET", b"key", b"va\r\nl"], len(wire))
    assert parse_command(bytearray(wire)) == ([b"SET", b"key", b"va\r\nl"], len(wire))
    assert parse_command(wire + b"*1\r\n$4\r\nPING\r\n", len(wire)) == ([b"PING"], len(wire) + 14)


def test_scan_multibulk_spans_the_complete_arguments():
    """The walk parse_command and the proxy's framing share: the arguments it
    found complete, whether or not the whole request is in."""
    wire = encode_command("SET", "key", b"va\r\nl")
    for cut in range(len(wire) + 1):
        spans: list = []
        end = scan_multibulk(wire[:cut], 0, 512 * 1024 * 1024, 1024, spans)
        found = [wire[a:b] for a, b in spans]
        assert found == [b"SET", b"key", b"va\r\nl"][: len(found)], cut
        assert end == (len(wire) if cut == len(wire) else -1), cut
    spans = []
    assert scan_multibulk(b"*-1\r\n", 0, 10, 10, spans) == 5 and spans == []
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        scan_multibulk(wire, 0, 512, 2, [])  # more arguments than max_args


def test_scan_frame_resumes_and_keeps_tokens():
    wire = encode(Array([BulkString(b"a" * 10), Map([(SimpleString(b"k"), Integer(7))]), NIL]))
    stack: list = []
    tokens: list = []
    pos, remaining = 0, 1
    for cut in range(1, len(wire)):
        end, pos, remaining, need = scan_frame(wire[:cut], pos, remaining, stack, 1 << 20, 128, tokens)
        assert end == -1 and need > cut, cut
    end, *_ = scan_frame(wire, pos, remaining, stack, 1 << 20, 128, tokens)
    assert end == len(wire)
    assert [token[0] for token in tokens] == [ord(c) for c in "*$%+:$"]
    assert parse(wire)[0] == Array([BulkString(b"a" * 10), Map([(SimpleString(b"k"), Integer(7))]), NIL])


def test_parse_command_every_split_point():
    wire = encode_command("SET", "key", b"", b"\r\n", 12)
    for cut in range(len(wire)):
        assert parse_command(wire[:cut]) is None, cut
    assert parse_command(wire) == ([b"SET", b"key", b"", b"\r\n", b"12"], len(wire))


@pytest.mark.parametrize("wire", [b"*0\r\n", b"*-1\r\n", b"*-5\r\n"])
def test_parse_command_empty_multibulk(wire):
    # processMultibulkBuffer: "if (ll <= 0) return C_OK", the request is skipped.
    assert parse_command(wire) == ([], len(wire))


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"*2\r\n$3\r\nGET\r\n:1\r\n", "Protocol error: expected '$', got ':'"),
        (b"*1\r\n+PING\r\n", "Protocol error: expected '$', got '+'"),
        (b"*1\r\n*1\r\n$4\r\nPING\r\n", "Protocol error: expected '$', got '*'"),
        (b"*x\r\n", "Protocol error: invalid multibulk length"),
        (b"*3\r\n", "Protocol error: invalid multibulk length"),  # over max_args=2
        (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$abc\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$101\r\n", "Protocol error: invalid bulk length"),  # over max_bulk=100
        (b"*1\r\n$4\r\nPINGxx", "Protocol error: bulk data not followed by CRLF"),
        (b"*" + b"1" * (MAX_INLINE + 1), "Protocol error: too big mbulk count string"),
        (b"*1\r\n$" + b"1" * (MAX_INLINE + 1), "Protocol error: too big bulk count string"),
    ],
)
def test_parse_command_malformed(wire, message):
    with pytest.raises(ProtocolError) as info:
        parse_command(wire, max_bulk=100, max_args=2)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"PING\r\n", [b"PING"]),
        (b"PING\n", [b"PING"]),
        (b"  SET   key \t value  \r\n", [b"SET", b"key", b"value"]),
        (b'SET k "hello world"\r\n', [b"SET", b"k", b"hello world"]),
        (b"SET k 'hello world'\r\n", [b"SET", b"k", b"hello world"]),
        (b'SET k "\\x41\\x4a\\x4A"\r\n', [b"SET", b"k", b"AJJ"]),
        (b'SET k "a\\nb\\r\\t\\b\\a"\r\n', [b"SET", b"k", b"a\nb\r\t\b\a"]),
        (b'SET k "say \\"hi\\" \\\\ \\q"\r\n', [b"SET", b"k", b'say "hi" \\ q']),
        (b'SET k "\\x4"\r\n', [b"SET", b"k", b"x4"]),  # not two hex digits: plain escape
        (b"SET k 'it\\'s \\n raw'\r\n", [b"SET", b"k", b"it's \\n raw"]),
        (b'SET k ""\r\n', [b"SET", b"k", b""]),
        (b"SET k ''\r\n", [b"SET", b"k", b""]),
        (b'SET a"b c"\r\n', [b"SET", b"ab c"]),  # a quote opens mid-token, as in sdssplitargs
        (b"GET a\x00ignored\r\n", [b"GET", b"a"]),  # C string: the line ends at NUL
        (b"GET \x0bk\x0b\r\n", [b"GET", b"k\x0b"]),  # \v is skipped between tokens, kept inside one
        (b"GET\x0b k\r\n", [b"GET\x0b", b"k"]),
        (b'GET "k"\x0c\r\n', [b"GET", b"k"]),
        (b"\r\n", []),
        (b"\n", []),
        (b"   \r\n", []),
    ],
)
def test_parse_command_inline(line, args):
    assert parse_command(line) == (args, len(line))
    assert parse_command(line + b"PING\r\n") == (args, len(line))


@pytest.mark.parametrize(
    "line",
    [b'SET k "abc\r\n', b"SET k 'abc\r\n", b'SET k "a"b\r\n', b"SET k 'a'b\r\n", b'GET "a\x00"\r\n'],
)
def test_parse_command_inline_unbalanced_quotes(line):
    with pytest.raises(ProtocolError, match="^Protocol error: unbalanced quotes in request$"):
        parse_command(line)


def test_parse_command_inline_incomplete():
    assert parse_command(b"PING") is None
    assert parse_command(b"PING\r") is None
    assert parse_command(b"") is None
    assert parse_command(b"PING\r\n", 6) is None


def test_parse_command_inline_too_big():
    big = b"SET k " + b"v" * MAX_INLINE
    with pytest.raises(ProtocolError, match="^Protocol error: too big inline request$"):
        parse_command(big)
    with pytest.raises(ProtocolError, match="^Protocol error: too big inline request$"):
        parse_command(big + b"\r\n")
    ok = b"x" * (MAX_INLINE - 2) + b"\r\n"
    assert parse_command(ok) == ([b"x" * (MAX_INLINE - 2)], len(ok))


def test_encode_command():
    assert encode_command("SET", b"k", "v\u00e9") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\xc3\xa9\r\n"
    assert encode_command(b"INCRBY", 10, -3) == b"*3\r\n$6\r\nINCRBY\r\n$2\r\n10\r\n$2\r\n-3\r\n"
    assert encode_command("ZADD", 1.5, 0.1) == b"*3\r\n$4\r\nZADD\r\n$3\r\n1.5\r\n$3\r\n0.1\r\n"
    assert encode_command(bytearray(b"a"), memoryview(b"b")) == b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
    assert encode_command() == b"*0\r\n"
    with pytest.raises(TypeError):
        encode_command("SET", True)
    with pytest.raises(TypeError):
        encode_command("SET", None)


@given(st.lists(st.binary(max_size=30), max_size=8))
def test_encode_command_parses_back(args):
    wire = encode_command(*args)
    assert parse_command(wire) == (args, len(wire))
    assert parse(wire) == (Array([BulkString(a) for a in args]), len(wire))
    assert frame_end(wire) == len(wire)


# --- to_python -------------------------------------------------------------------


def test_to_python():
    value = parse(
        b"*9\r\n+OK\r\n$3\r\nfoo\r\n:7\r\n_\r\n,2.5\r\n#t\r\n(99\r\n=7\r\ntxt:abc\r\n-ERR x\r\n"
    )[0]
    assert to_python(value) == [b"OK", b"foo", 7, None, 2.5, True, 99, b"abc", Error(b"ERR x")]
    assert isinstance(to_python(value)[-1], Error)
    mapping = Map(
        [
            (BulkString(b"a"), Integer(1)),
            (Array([Integer(1), Integer(2)]), Set([Integer(3)])),
            (Map([(Integer(1), Integer(2))]), Push([])),
        ]
    )
    assert to_python(mapping) == {b"a": 1, (1, 2): [3], ((1, 2),): []}
    assert to_python(Attribute([(SimpleString(b"ttl"), Integer(3))], BulkString(b"v"))) == b"v"
    assert to_python(NIL) is None
