"""Commands that must not wait behind others (issue 12, part 2), on real servers,
through an interlay as directly: the script-timeout cases of the Redis test
suite's ``scripting`` and ``multi`` units, rewritten (not copied), and CLIENT
PAUSE/UNPAUSE.

Every test runs twice, against the server itself and through an interlay with
one shared connection (so the busy script and everyone else's commands share
it), and asserts the same replies. A busy script gets other clients ``-BUSY``
once it has run past ``lua-time-limit`` (``busy-reply-threshold``); SCRIPT
KILL, FUNCTION KILL and SHUTDOWN NOSAVE still work; a transaction that met
BUSY is aborted whole.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from proxies import LOOPBACK, wait_for

from eve.redis import resp
from eve.redis.resp import encode_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BUSY_LOOP = "while true do end"
FUNCTION_LIBRARY = "#!lua name=test\nredis.register_function('test', function(KEYS, ARGV) {body} end)"


class Conn:
    """One raw client connection: commands written as they are asked, replies read
    when asked, as the suite's deferring clients do."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.reader = resp.Reader()

    def send(self, *args: object) -> None:
        self.sock.sendall(encode_command(*args))

    def read(self) -> object:
        while True:
            value = self.reader.get()
            if value is not None:
                return resp.to_python(value) if not isinstance(value, resp.Error) else value
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.reader.feed(chunk)

    def call(self, *args: object) -> object:
        self.send(*args)
        return self.read()

    def close(self) -> None:
        self.sock.close()


def error(value: object) -> str:
    """The message of an error reply ('' for any other reply)."""
    return value.value.decode() if isinstance(value, resp.Error) else ""  # type: ignore[union-attr]


@pytest.fixture(params=["direct", "interlay"])
def connect(request, server_factory, interlay) -> Iterator[Callable[[], Conn]]:
    """Connections to a fresh Redis 7.0 with lua-time-limit 10 ms, or to an interlay
    in front of it with one shared connection."""
    server = server_factory("redis-7.0")
    server.client().config_set("lua-time-limit", 10)
    port = server.port if request.param == "direct" else interlay(server, pool=1).port
    opened: list[Conn] = []

    def open_conn() -> Conn:
        conn = Conn(port)
        opened.append(conn)
        return conn

    open_conn.server = server  # type: ignore[attr-defined]
    yield open_conn
    for conn in opened:
        conn.close()


def start_busy(conn: Conn, flavour: str, body: str = BUSY_LOOP, *keys: str) -> None:
    """Send a script that runs ``body`` (EVAL, or a function and FCALL), without reading its reply."""
    if flavour == "eval":
        conn.send("EVAL", body, len(keys), *keys)
    else:
        assert conn.call("FUNCTION", "LOAD", "REPLACE", FUNCTION_LIBRARY.format(body=body)) == b"test"
        conn.send("FCALL", "test", len(keys), *keys)


def wait_busy(conn: Conn) -> None:
    wait_for(lambda: error(conn.call("PING")).startswith("BUSY"), timeout=10, what="the script to be busy")


def wait_not_busy(conn: Conn) -> None:
    wait_for(lambda: conn.call("PING") == b"PONG", timeout=10, what="the server to answer again")


def kill(conn: Conn, flavour: str) -> object:
    return conn.call("SCRIPT" if flavour == "eval" else "FUNCTION", "KILL")


# --------------------------------------------------------------------------- scripting


@pytest.mark.parametrize("flavour", ["eval", "function"])
def test_a_timed_out_script_answers_busy_and_is_killed(connect, flavour) -> None:
    runner, other = connect(), connect()
    start_busy(runner, flavour)
    wait_busy(other)
    assert kill(other, flavour) == b"OK"
    wait_not_busy(other)
    assert "killed by user" in error(runner.read())
    assert runner.call("PING") == b"PONG"


@pytest.mark.parametrize("flavour", ["eval", "function"])
def test_a_killed_script_leaves_the_commands_pipelined_after_it_their_replies(connect, flavour) -> None:
    runner, other = connect(), connect()
    if flavour == "function":
        assert runner.call("FUNCTION", "LOAD", "REPLACE", FUNCTION_LIBRARY.format(
            body="while 1 do redis.call('ping') end")) == b"test"
        runner.sock.sendall(encode_command("FCALL", "test", 0) + encode_command("PING"))
    else:
        runner.sock.sendall(encode_command("EVAL", "while 1 do redis.call('ping') end", 0) + encode_command("PING"))
    wait_busy(other)
    assert kill(other, flavour) == b"OK"
    wait_not_busy(other)
    assert "killed by user" in error(runner.read())
    assert runner.read() == b"PONG"


def test_a_script_that_wrote_cannot_be_killed_but_shutdown_nosave_stops_the_server(connect) -> None:
    runner, other = connect(), connect()
    start_busy(runner, "eval", "redis.call('set', KEYS[1], 'y'); " + BUSY_LOOP, "x")
    wait_busy(other)
    assert error(other.call("SCRIPT", "KILL")).startswith("UNKILLABLE")
    assert error(other.call("PING")).startswith("BUSY")
    other.send("SHUTDOWN", "NOSAVE")
    try:
        reply = other.read()
    except (ConnectionError, OSError):
        reply = None   # directly: the server closed the connection on its way out
    # Through the interlay, which stays up: the error that the backend went away.
    assert reply is None or "connection closed by the server" in error(reply)
    wait_for(lambda: not connect.server.running, what="the server to exit")


def test_a_script_that_ends_on_its_own_past_the_limit_leaves_its_connection_usable(connect) -> None:
    runner = connect()
    assert runner.call("EVAL", "for i=1,100000 do redis.call('ping') end return 'ok'", 0) == b"ok"
    assert runner.call("PING") == b"PONG"


# --------------------------------------------------------------------------- multi


def test_multi_arriving_during_a_busy_script_runs_none_of_the_transaction(connect) -> None:
    runner, transaction, other = connect(), connect(), connect()
    assert other.call("SET", "xx", 1) == b"OK"
    start_busy(runner, "eval")
    wait_busy(other)
    assert transaction.call("MULTI") == b"OK"
    transaction.call("INCR", "xx")
    assert kill(other, "eval") == b"OK"
    wait_not_busy(other)
    transaction.call("INCR", "xx")
    assert error(transaction.call("EXEC")).startswith("EXECABORT")
    assert other.call("GET", "xx") == b"1"
    assert transaction.call("PING", "asdf") == b"asdf"


def test_exec_during_a_busy_script_aborts_the_transaction(connect) -> None:
    runner, transaction, other = connect(), connect(), connect()
    assert other.call("SET", "xx", 1) == b"OK"
    assert transaction.call("MULTI") == b"OK"
    assert transaction.call("INCR", "xx") == b"QUEUED"
    start_busy(runner, "eval")
    wait_busy(other)
    assert error(transaction.call("INCR", "xx")).startswith("BUSY")
    reply = error(transaction.call("EXEC"))
    assert reply.startswith("EXECABORT") and "BUSY" in reply
    assert kill(other, "eval") == b"OK"
    wait_not_busy(other)
    assert other.call("GET", "xx") == b"1"
    assert transaction.call("PING", "asdf") == b"asdf"


def test_a_transaction_body_during_a_busy_script_aborts_it_after_the_kill(connect) -> None:
    runner, transaction, other = connect(), connect(), connect()
    assert other.call("SET", "xx", 1) == b"OK"
    assert transaction.call("MULTI") == b"OK"
    assert transaction.call("INCR", "xx") == b"QUEUED"
    start_busy(runner, "eval")
    wait_busy(other)
    assert error(transaction.call("INCR", "xx")).startswith("BUSY")
    assert kill(other, "eval") == b"OK"
    wait_not_busy(other)
    assert error(transaction.call("EXEC")).startswith("EXECABORT")
    assert other.call("GET", "xx") == b"1"
    assert transaction.call("PING", "asdf") == b"asdf"


def test_only_exec_during_a_busy_script_runs_nothing_queued(connect) -> None:
    runner, transaction, other = connect(), connect(), connect()
    assert other.call("SET", "xx", 1) == b"OK"
    assert transaction.call("MULTI") == b"OK"
    assert transaction.call("INCR", "xx") == b"QUEUED"
    start_busy(runner, "eval")
    wait_busy(other)
    reply = error(transaction.call("EXEC"))
    assert reply.startswith("EXECABORT") and "BUSY" in reply
    assert kill(other, "eval") == b"OK"
    wait_not_busy(other)
    assert other.call("GET", "xx") == b"1"
    assert transaction.call("PING", "asdf") == b"asdf"


# --------------------------------------------------------------------------- client pause


def test_client_unpause_passes_a_write_held_by_client_pause(connect) -> None:
    writer, reader, operator = connect(), connect(), connect()
    assert operator.call("SET", "k", "before") == b"OK"
    assert operator.call("CLIENT", "PAUSE", 30_000, "WRITE") == b"OK"
    assert reader.call("GET", "k") == b"before"   # reads go on during a write pause
    writer.send("SET", "k", "after")
    # UNPAUSE does not queue behind the held write.
    assert operator.call("CLIENT", "UNPAUSE") == b"OK"
    assert writer.read() == b"OK"
    assert reader.call("GET", "k") == b"after"
