"""Scripts survive the cutover (issue 12, part 3): a live run through the API from
Redis 7.0 to Valkey 9.1 while writer threads run a script by sha through the interlay.

The writers load their script with ``SCRIPT LOAD`` through the interlay before the
run exists, and then only ever send ``EVALSHA`` (no fallback to ``EVAL``): every
``NOSCRIPT`` would reach them. The interlay remembers the body, loads it on the
target when the run's route first names it, and heals a ``NOSCRIPT`` the target
answers for a script it knows; ``GetMetrics`` and ``GetInterlay`` count the ones
that still reach a client.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

import pytest
import redis
from eve_process import Subscriber, wait_state
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import free_port

from eve.v1 import endpoints_pb2 as epb
from eve.v1 import interlays_pb2 as ipb
from eve.v1 import workflows_pb2 as wpb

SOURCE_ENGINE, TARGET_ENGINE = "redis-7.0", "valkey-9.1"
# One counter per writer, and a list that only the script's own order can keep right.
SCRIPT = "local n = redis.call('INCR', KEYS[1]); redis.call('RPUSH', KEYS[2], n); return n"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]


@dataclass
class ShaWriter:
    """EVALSHA in a loop on a connection of its own; counts what the interlay acknowledged."""

    number: int
    port: int
    stop: threading.Event
    loaded: threading.Event = field(default_factory=threading.Event)
    acknowledged: int = 0
    unknown: int = 0
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, socket_connect_timeout=5,
                             retry=Retry(NoBackoff(), 0))
        sha = client.script_load(SCRIPT)
        self.loaded.set()
        keys = (f"sha{self.number}:counter", f"sha{self.number}:list")
        while not self.stop.is_set():
            try:
                value = client.evalsha(sha, 2, *keys)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.unknown += 1  # lost with its connection: of unknown outcome
                self.errors.append(f"{type(exc).__name__}: {exc}")
            except redis.ResponseError as exc:
                self.errors.append(f"ResponseError: {exc}")
            else:
                self.acknowledged += 1
                assert value == self.acknowledged + self.unknown or self.unknown, (value, self.acknowledged)
            time.sleep(0.002)
        client.close()


class ShaWriters:
    def __init__(self, port: int, threads: int = 2) -> None:
        self.stop = threading.Event()
        self.writers = [ShaWriter(i, port, self.stop) for i in range(threads)]
        self.threads = [threading.Thread(target=w.run, daemon=True, name=f"sha-writer-{i}")
                        for i, w in enumerate(self.writers)]

    def __enter__(self) -> ShaWriters:
        for thread in self.threads:
            thread.start()
        for writer in self.writers:
            assert writer.loaded.wait(10), "a writer could not load its script through the interlay"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    @property
    def acknowledged(self) -> int:
        return sum(w.acknowledged for w in self.writers)

    def wait_more(self, more: int, timeout: float = 30) -> None:
        goal = self.acknowledged + more
        deadline = time.monotonic() + timeout
        while self.acknowledged < goal:
            assert time.monotonic() < deadline, f"writers stalled: {self.errors()[-3:]}"
            time.sleep(0.05)

    def errors(self) -> list[str]:
        return [e for w in self.writers for e in w.errors]


def wait_in_sync(stub, run: str, events: Subscriber, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(e.type == "live" and e.message.startswith("in sync") for e in list(events.events)):
        record = stub.GetRun(wpb.GetRunRequest(run=run))
        assert record.state in (wpb.APPROVED, wpb.COPYING, wpb.SYNCING), record.failure_reason
        assert time.monotonic() < deadline, "the run did not get in sync"
        time.sleep(0.1)


def interlay_noscript(eve) -> int:
    return eve.interlays().GetInterlay(ipb.GetInterlayRequest(id="app")).stats.noscript_replies


def wait_value(read, expected, what: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while (value := read()) != expected:
        assert time.monotonic() < deadline, f"{what}: {value!r}, expected {expected!r}"
        time.sleep(0.1)
    return value


def test_evalsha_through_the_cutover_never_gets_noscript(eve, server_factory):
    source, target = server_factory(SOURCE_ENGINE), server_factory(TARGET_ENGINE)
    for name, server in (("src", source), ("dst", target)):
        eve.endpoints().CreateEndpoint(epb.CreateEndpointRequest(
            endpoint=name, kind="redis", config=epb.EndpointConfig(target=epb.Connection(host="127.0.0.1",
                                                                                         port=server.port))))
    port = free_port()
    eve.interlays().CreateInterlay(ipb.CreateInterlayRequest(id="app", endpoint="src", port=port))
    eve.interlays().StartInterlay(ipb.StartInterlayRequest(id="app"))
    stub = eve.migrations()

    with ShaWriters(port) as writers:
        writers.wait_more(100)
        run = stub.CreateRun(wpb.CreateRunRequest(id="scripts")).id
        events = Subscriber(stub, run)
        events.start()
        stub.SubmitSetup(wpb.SubmitSetupRequest(run=run, setup=wpb.RunSetup(
            source="src", target="dst", strategy=wpb.ONLINE_PHASED, write_consistency=wpb.SOURCE_AUTHORITATIVE,
            interlay="app")))
        stub.Prepare(wpb.PrepareRequest(run=run))
        wait_state(stub, run, "READY")
        issues = stub.GetCompatibility(wpb.GetCompatibilityRequest(run=run)).issues
        warning = [issue for issue in issues if issue.code == "SCRIPTS_NOT_CARRIED"]
        assert len(warning) == 1 and not warning[0].blocking, issues
        for issue in issues:
            stub.AcknowledgeIssue(wpb.AcknowledgeIssueRequest(run=run, issue_id=issue.id, notes="loaded via interlay"))
        stub.Approve(wpb.ApproveRequest(run=run, notes="go"))
        wait_in_sync(stub, run, events)
        writers.wait_more(200)
        cut = stub.SetTraffic(wpb.SetTrafficRequest(run=run, read_percent_target=100, cutover_writes=True))
        assert cut.state == wpb.CUT_OVER and cut.writes_on_target
        writers.wait_more(300)

    assert writers.errors() == []
    assert stub.GetMetrics(wpb.GetMetricsRequest(run=run)).noscript_replies == 0
    assert interlay_noscript(eve) == 0
    # Every acknowledged EVALSHA's effect is on the target (the re-copy loop converges the
    # keys the script wrote on the source before the cutover).
    target_client = target.client()
    for writer in writers.writers:
        expected = writer.acknowledged
        wait_value(lambda w=writer: int(target_client.get(f"sha{w.number}:counter") or 0), expected,
                   f"writer {writer.number}'s counter on the target")
        assert target_client.lrange(f"sha{writer.number}:list", 0, -1) == \
            [str(n).encode() for n in range(1, expected + 1)]

    # The target loses its script cache around the interlay: the next EVALSHA is healed.
    target_client.script_flush()
    client = redis.Redis(host="127.0.0.1", port=port)
    sha = client.script_load(SCRIPT)
    assert client.evalsha(sha, 2, "healed:counter", "healed:list") == 1
    assert target_client.script_exists(sha) == [True]
    # A script nobody loaded: its NOSCRIPT reaches the client, and is counted.
    unseen = hashlib.sha1(b"return 'never loaded'").hexdigest()
    with pytest.raises(redis.exceptions.NoScriptError):
        client.evalsha(unseen, 0)
    wait_value(lambda: interlay_noscript(eve), 1, "NOSCRIPT replies of the interlay")
    wait_value(lambda: stub.GetMetrics(wpb.GetMetricsRequest(run=run)).noscript_replies, 1,
               "NOSCRIPT replies in GetMetrics")
    client.close()
